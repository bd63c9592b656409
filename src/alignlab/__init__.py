"""alignlab: align Hugging Face causal LMs with human and AI feedback.

Importing the package is cheap: torch, transformers and the optional backends load lazily in the
modules that need them.
"""

__version__ = "0.1.0"
