"""Sampling: best-of-N, rejection-sampling fine-tuning sets, preference pairs from samples, RSO."""
