"""Shared plumbing for the graph layers: graph resolution with a safe cache, init."""
from __future__ import annotations

import functools
import math
import weakref
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graph import Graph
from ..ops._inputs import check_scalar

GraphLike = Union[Graph, Tensor]

# Attention recorders (graphattn.explain.capture) active right now. While one is,
# every graphattn layer computes its weights and hands them over; models need no change.
_RECORDERS: list = []


def capturing() -> bool:
    return bool(_RECORDERS)


def record_attention(module: nn.Module, edge_index: Tensor, weights: Tensor, num_src: int, num_dst: int,
                     seq_shape: Optional[Tuple[int, int, int]] = None) -> None:
    """Give a layer's normalised weights (``[E, H]``, caller's edge order, before
    dropout) to every active recorder; ``seq_shape = (batch, Lq, Lk)`` for sequences."""
    for rec in list(_RECORDERS):
        rec._add(module, edge_index, weights, num_src, num_dst, seq_shape)


def glorot_(t: Optional[Tensor]) -> None:
    """Glorot-uniform init over the last two dims (PyG's ``glorot``)."""
    if t is not None:
        a = math.sqrt(6.0 / (t.size(-2) + t.size(-1)))
        with torch.no_grad():
            t.uniform_(-a, a)


def make_linear(in_features: int, out_features: int, bias: bool, glorot: bool = False) -> nn.Module:
    """``nn.Linear``, or ``nn.LazyLinear`` when ``in_features`` is ``-1`` / ``None``
    (PyG's lazy initialisation)."""
    if in_features is None or in_features <= 0:
        return nn.LazyLinear(out_features, bias=bias)
    lin = nn.Linear(in_features, out_features, bias=bias)
    if glorot:
        glorot_(lin.weight)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)
    return lin


def reset_linear(lin: nn.Module, glorot: bool) -> None:
    if isinstance(lin, nn.Linear) and not isinstance(lin, nn.LazyLinear):
        if glorot:
            glorot_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        else:
            lin.reset_parameters()


def split_pair(x) -> Tuple[Tensor, Optional[Tensor], bool]:
    """``x`` or ``(x_src, x_dst)`` -> ``(x_src, x_dst, is_pair)``."""
    if isinstance(x, Tensor):
        if x.dim() != 2:
            raise ValueError(f"x must have shape [num_nodes, channels], got {list(x.shape)}")
        return x, x, False
    if isinstance(x, (tuple, list)) and len(x) == 2:
        x_src, x_dst = x
        if not isinstance(x_src, Tensor) or x_src.dim() != 2:
            raise ValueError("x_src must be a tensor of shape [num_src, channels]")
        if x_dst is not None and (not isinstance(x_dst, Tensor) or x_dst.dim() != 2):
            raise ValueError("x_dst must be a tensor of shape [num_dst, channels] or None")
        return x_src, x_dst, True
    raise TypeError(f"x must be a tensor or a pair (x_src, x_dst), got {type(x).__name__}")


def compiler_disable(fn):
    """``torch.compiler.disable(fn)``, applied on the first call: the decorator imports
    ``torch._dynamo`` (seconds), which ``import graphattn`` should not pay for."""
    compiled_out = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal compiled_out
        if compiled_out is None:
            compiled_out = torch.compiler.disable(fn)
        return compiled_out(*args, **kwargs)

    return wrapper


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_hyperparameters(*, out_channels=None, heads=None, dropout=None, negative_slope=None,
                          edge_dim=None) -> None:
    """The constructor arguments every graph layer shares, each checked against its
    domain with an error that names it (the ops apply the same scalar rules per call)."""
    if out_channels is not None:
        check_positive_int("out_channels", out_channels)
    if heads is not None:
        check_positive_int("heads", heads)
    if dropout is not None:
        check_scalar("dropout", dropout, "probability")
    if negative_slope is not None:
        check_scalar("negative_slope", negative_slope, "finite")
    if edge_dim is not None:
        check_positive_int("edge_dim", edge_dim)


class GraphCache:
    """Remembers the Graph built for the last ``edge_index`` tensor a layer saw.

    A hit requires the very same tensor object (weak reference), unchanged
    (its in-place version counter), with the same node counts; anything else
    rebuilds. So a training loop that passes the same ``edge_index`` every step
    sorts once, and editing the tensor in place is never served stale.

    The entry is one tuple, read and replaced in single steps, so threads calling the
    same layer never pair one tensor with another's graph.
    """

    def __init__(self) -> None:
        self._entry: Optional[Tuple[weakref.ref, tuple, Graph]] = None

    def get(self, edge_index: Tensor, num_src: Optional[int], num_dst: Optional[int]) -> Graph:
        key = (edge_index._version, num_src, num_dst, edge_index.device)
        entry = self._entry  # one read: the ref, key and graph belong together
        if entry is not None and entry[0]() is edge_index and entry[1] == key:
            return entry[2]
        graph = Graph.from_edge_index(edge_index, num_src=num_src, num_dst=num_dst)
        self._entry = (weakref.ref(edge_index), key, graph)
        return graph

    @property
    def graph(self) -> Optional[Graph]:
        """The cached graph, if any."""
        entry = self._entry
        return None if entry is None else entry[2]


class GraphLayer(nn.Module):
    """Base of the graph attention layers: turns ``edge_index`` or a Graph into a Graph."""

    def __init__(self, prune_threshold: Optional[float] = None, **hyperparameters) -> None:
        check_hyperparameters(**hyperparameters)
        super().__init__()
        self._graph_cache = GraphCache()
        if prune_threshold is not None and not -1.0 <= float(prune_threshold) <= 1.0:
            raise ValueError(f"prune_threshold is a cosine similarity in [-1, 1], got {prune_threshold}")
        self.prune_threshold = prune_threshold

    def prune_edges(self, x_src: Tensor, x_dst: Optional[Tensor], edge_index: GraphLike,
                    edge_attr: Optional[Tensor]) -> Tuple[GraphLike, Optional[Tensor]]:
        """Defence against structure attacks: before any attention, drop the edges whose
        endpoints' input features have cosine similarity below ``prune_threshold``
        (GNNGuard / Jaccard-style). Self-loops are never dropped. No-op when unset."""
        t = self.prune_threshold
        if t is None:
            return edge_index, edge_attr
        x_dst = x_src if x_dst is None else x_dst
        if x_src.size(-1) != x_dst.size(-1):
            raise ValueError("prune_threshold compares source and destination features, which need the same "
                             f"size; got {x_src.size(-1)} and {x_dst.size(-1)}")
        if isinstance(edge_index, Graph):
            num_src, num_dst, ei = edge_index.num_src, edge_index.num_dst, edge_index.edge_index
        else:
            # validated (and sorted only once per edge_index tensor) through the layer's graph cache
            num_src, num_dst = x_src.size(0), x_dst.size(0)
            ei = self._graph_from_index(edge_index, num_src, num_dst).edge_index
        src, dst = ei[0], ei[1]
        xs, xd = F.normalize(x_src.detach().float(), dim=-1), F.normalize(x_dst.detach().float(), dim=-1)
        sim = torch.empty(src.numel(), device=xs.device)
        step = max(1, 2 ** 24 // max(1, xs.size(-1)))  # bounded memory for wide features
        for a in range(0, src.numel(), step):
            sim[a:a + step] = (xs[src[a:a + step]] * xd[dst[a:a + step]]).sum(-1)
        keep = sim >= t
        if num_src == num_dst:
            keep |= src == dst
        pruned = Graph.from_edge_index(ei[:, keep], num_src=num_src, num_dst=num_dst)
        if edge_attr is not None:
            edge_attr = edge_attr[keep]
        return pruned, edge_attr

    @compiler_disable
    def _graph_from_index(self, edge_index: Tensor, num_src: Optional[int], num_dst: Optional[int]) -> Graph:
        return self._graph_cache.get(edge_index, num_src, num_dst)

    def resolve_graph(
        self, edge_index: GraphLike, num_src: int, num_dst: Optional[int], add_self_loops: bool
    ) -> Graph:
        if isinstance(edge_index, Graph):
            graph = edge_index
            if num_dst is None:
                num_dst = graph.num_dst
            graph.check_nodes(num_src, num_dst)
        elif isinstance(edge_index, Tensor):
            if edge_index.is_sparse or edge_index.layout != torch.strided:
                raise TypeError(
                    "sparse adjacency tensors are not accepted; pass edge_index ([2, E], row 0 = source) "
                    "or a graphattn.Graph"
                )
            graph = self._graph_from_index(edge_index, num_src, num_dst)
        else:
            raise TypeError(
                f"edge_index must be a [2, E] integer tensor or a graphattn.Graph, got {type(edge_index).__name__}"
            )
        return graph.with_self_loops() if add_self_loops else graph

    @staticmethod
    def edge_attr_rows(edge_attr: Tensor, graph: Graph, fill_value) -> Tensor:
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        return graph.edge_attr_for_edges(edge_attr, fill_value)

    def _no_edge_dim_error(self) -> ValueError:
        return ValueError(
            f"{type(self).__name__} was built without edge_dim, so it cannot use edge_attr; "
            "pass edge_dim=<edge feature size> to the constructor"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"


def copy_from(layer: nn.Module, other: nn.Module) -> nn.Module:
    """Load ``other``'s parameters into ``layer`` (same parameter names), matching
    its device and dtype."""
    sd = other.state_dict()
    missing, unexpected = layer.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"cannot copy weights: missing {missing}, unexpected {unexpected}")
    first = next(iter(sd.values()), None)
    if first is not None:
        layer.to(device=first.device, dtype=first.dtype)
    layer.train(other.training)
    return layer
