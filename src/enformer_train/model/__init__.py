"""The Enformer model: architecture, cross-replica batch norm, weights import and export."""
from .config import EnformerConfig
from .enformer import Enformer, build_model, one_hot

__all__ = ["Enformer", "EnformerConfig", "build_model", "one_hot"]
