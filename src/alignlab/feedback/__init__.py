"""alignlab.feedback."""
