"""The Enformer model: architecture, cross-replica batch norm, weights import and export."""
from .config import EnformerConfig
from .enformer import Enformer, one_hot

__all__ = ["Enformer", "EnformerConfig", "one_hot"]
