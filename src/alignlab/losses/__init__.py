"""alignlab.losses: pure loss functions (tensors in, (losses, metrics) out), registered by name."""

from alignlab.losses.registry import LOSSES, LossSpec, get_loss, losses_for, register_loss

__all__ = ["LOSSES", "LossSpec", "get_loss", "losses_for", "register_loss"]
