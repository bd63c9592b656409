"""alignlab.gym."""
