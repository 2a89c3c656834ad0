"""Shared I/O for every stage: atomic files, object storage, tracking, metrics."""
