"""Benchmarks for the acestep distribution (``python -m bench``)."""
