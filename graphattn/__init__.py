"""graphattn: attention layers over sparse edge lists.

Every attention is a graph: scores on edges, a softmax per destination, a
weighted sum of source values. See :class:`Graph`, :mod:`graphattn.ops` and
:mod:`graphattn.nn`.
"""
from . import explain, nn, ops, patterns, robustness
from .graph import Graph, Pattern
from .ops import dot_product_attention, edge_softmax, gat_attention, gatv2_attention

__version__ = "0.1.0"

__all__ = [
    "Graph",
    "Pattern",
    "explain",
    "nn",
    "ops",
    "patterns",
    "robustness",
    "edge_softmax",
    "gat_attention",
    "gatv2_attention",
    "dot_product_attention",
    "__version__",
]
