"""msgbus server."""
