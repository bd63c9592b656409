"""alignlab.data."""
