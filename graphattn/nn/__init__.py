"""Layers: thin ``torch.nn.Module`` shells that own parameters and call :mod:`graphattn.ops`."""

from .agnn import AGNNConv
from .dot_product import DotProductConv, TransformerConv
from ._base import register_attention_hook
from .gat import GATConv, GATv2Conv
from .global_attention import PerformerAttention, PolynormerAttention, QFormer
from .gps import GPSConv
from .linear import LinearAttention
from .multihead import MultiheadGraphAttention
from .transformer import GraphTransformerDecoderLayer, GraphTransformerEncoderLayer

__all__ = [
    "AGNNConv",
    "GATConv",
    "GATv2Conv",
    "GPSConv",
    "PerformerAttention",
    "PolynormerAttention",
    "QFormer",
    "TransformerConv",
    "DotProductConv",
    "MultiheadGraphAttention",
    "LinearAttention",
    "GraphTransformerEncoderLayer",
    "GraphTransformerDecoderLayer",
    "register_attention_hook",
]
