"""Layers: thin ``torch.nn.Module`` shells that own parameters and call :mod:`graphattn.ops`."""
from .dot_product import DotProductConv
from .gat import GATConv, GATv2Conv

__all__ = ["GATConv", "GATv2Conv", "DotProductConv"]
