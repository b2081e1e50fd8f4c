"""Small reference models for examples and tests (not part of the numerical API)."""
from quartet_te.models.tiny_llama import TinyLlama, TinyLlamaConfig

__all__ = ["TinyLlama", "TinyLlamaConfig"]
