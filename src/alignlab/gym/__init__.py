"""alignlab.gym: a small synthetic assistant world with a known gold reward.

``build_gym(out, seed, pretrain_seconds, length_bias)`` writes a gym folder (world, data, tokenizer,
tiny pretrained Llama); ``load_gym(path)`` opens one and scores responses with the gold reward.
Importing this package does not import torch (only ``alignlab.gym.base_model`` does).
"""

from alignlab.gym.build import build_gym
from alignlab.gym.gold import GoldResult, is_evasive, is_harmless, is_helpful
from alignlab.gym.loader import Gym, load_gym
from alignlab.gym.world import GymPromptError

__all__ = [
           "GoldResult",
           "Gym",
           "GymPromptError",
           "build_gym",
           "is_evasive",
           "is_harmless",
           "is_helpful",
           "load_gym",
]
