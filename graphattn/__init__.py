"""graphattn: attention layers over sparse edge lists.

Every attention is a graph: scores on edges, a softmax per destination, a
weighted sum of source values. See :class:`Graph`, :mod:`graphattn.ops` and
:mod:`graphattn.nn`.

``import graphattn`` loads the core (graphs, patterns, ops) only. The layers
(:mod:`graphattn.nn`, PyG ``MessagePassing`` subclasses) and the tools built on them
(:mod:`graphattn.explain`, :mod:`graphattn.robustness`) import PyG, which imports
``torch._dynamo`` and takes seconds; they load on first access.
"""

import importlib

from . import ops, ordering, patterns
from .graph import Graph, Pattern, PatternKind
from .ordering import NodeOrder
from .ops import dot_product_attention, edge_softmax, gat_attention, gatv2_attention

__version__ = "0.1.0"

_LAZY = ("nn", "explain", "robustness")

__all__ = [
    "Graph",
    "NodeOrder",
    "Pattern",
    "PatternKind",
    "explain",
    "nn",
    "ops",
    "ordering",
    "patterns",
    "robustness",
    "edge_softmax",
    "gat_attention",
    "gatv2_attention",
    "dot_product_attention",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'graphattn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
