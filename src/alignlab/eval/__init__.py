"""alignlab.eval."""
