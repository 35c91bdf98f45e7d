"""msgbus store sqlite."""
