"""Benchmarks: repom beside raw SQLAlchemy and advanced-alchemy, ratios from one run."""
