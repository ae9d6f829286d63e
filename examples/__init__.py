"""Built-in examples: small, real models and data that run offline."""
