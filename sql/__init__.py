"""The store's SQL: views, tables and table macros, one named block each, in the `.sql` files here."""
