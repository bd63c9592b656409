"""alignlab.losses: pure loss functions (tensors in, (losses, metrics) out), registered by name."""

from alignlab.losses.inputs import BinaryInputs, ListInputs, PairInputs, SeqStats
from alignlab.losses.registry import LOSSES, LossParams, LossSpec, get_loss, losses_for, objective

__all__ = ["LOSSES", "BinaryInputs", "ListInputs", "LossParams", "LossSpec", "PairInputs", "SeqStats",
           "get_loss", "losses_for", "objective"]
