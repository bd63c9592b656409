"""alignlab.generation."""
