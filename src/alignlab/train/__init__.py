"""alignlab.train."""
