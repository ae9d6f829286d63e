"""Helpers every layer uses: atomic writes, the hook helper, progress, image records, imports.

A leaf package: it imports nothing of polysem but `polysem.errors`.
"""
