"""logstream."""
