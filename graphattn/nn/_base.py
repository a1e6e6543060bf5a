"""Shared plumbing for the graph layers: graph resolution with a safe cache, init."""
from __future__ import annotations

import math
import weakref
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..graph import Graph

GraphLike = Union[Graph, Tensor]


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


class GraphCache:
    """Remembers the Graph built for the last ``edge_index`` tensor a layer saw.

    A hit requires the very same tensor object (weak reference), unchanged
    (its in-place version counter), with the same node counts; anything else
    rebuilds. So a training loop that passes the same ``edge_index`` every step
    sorts once, and editing the tensor in place is never served stale.
    """

    def __init__(self) -> None:
        self._ref: Optional[weakref.ref] = None
        self._key = None
        self._graph: Optional[Graph] = None

    def get(self, edge_index: Tensor, num_src: Optional[int], num_dst: Optional[int]) -> Graph:
        key = (edge_index._version, num_src, num_dst, edge_index.device)
        if self._ref is not None and self._ref() is edge_index and self._key == key and self._graph is not None:
            return self._graph
        graph = Graph.from_edge_index(edge_index, num_src=num_src, num_dst=num_dst)
        self._ref, self._key, self._graph = weakref.ref(edge_index), key, graph
        return graph


class GraphLayer(nn.Module):
    """Base of the graph attention layers: turns ``edge_index`` or a Graph into a Graph."""

    def __init__(self) -> None:
        super().__init__()
        self._graph_cache = GraphCache()

    @torch.compiler.disable
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
