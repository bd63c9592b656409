"""Model merging: task arithmetic, TIES and DARE-TIES over fine-tuned models' deltas (``alignlab merge``)."""
