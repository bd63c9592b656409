"""Weak-to-strong generalisation (Burns et al. 2023): tasks, training, the ``w2s`` stage, report."""
