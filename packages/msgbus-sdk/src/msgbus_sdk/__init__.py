"""msgbus sdk."""
