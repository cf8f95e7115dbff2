"""The lake (Delta tables of landed events) and DuckDB views over it."""

from flywheel.warehouse.lake import Lake
from flywheel.warehouse.query import connect, query

__all__ = ["Lake", "connect", "query"]
