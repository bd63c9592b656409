"""alignlab.losses."""
