"""msgbus store duckdb."""
