"""enformer-train: train Enformer in PyTorch, on one CPU or many GPUs."""
from .model import Enformer, EnformerConfig, build_model
from .model.weights import load_model, save_model

__all__ = ["Enformer", "EnformerConfig", "build_model", "load_model", "save_model"]
__version__ = "0.1.0"
