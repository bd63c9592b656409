"""alignlab.models."""
