"""The GPS graph-transformer layer on graphattn's engine: global attention without padding."""

from __future__ import annotations

import copy
import inspect
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import patterns
from ..graph import Graph
from ._base import GraphCache, check_hyperparameters, check_positive_int, check_pyg_type, pyg_class
from .dot_product import TransformerConv
from .gat import GATConv, GATv2Conv
from .global_attention import PerformerAttention
from .multihead import MultiheadGraphAttention

GLOBAL_PATTERNS = ("complete", "sparse")
ATTN_TYPES = ("multihead", "performer")
# The last global pattern built, shared by every GPSConv (a model's layers see one batch in turn).
_PATTERNS = GraphCache()


class GPSConv(nn.Module):
    r"""The GPS layer ("Recipe for a General, Powerful, Scalable Graph Transformer",
    Rampášek et al., 2022) with PyG ``GPSConv``'s constructor, forward and parameter
    names: a local message-passing layer and global attention, each with a residual
    connection and a normalisation, summed and passed through a two-layer MLP:

    .. math::
        h^L &= \mathrm{Norm}_1\big(x + \mathrm{Dropout}(\mathrm{MPNN}(x, A))\big),\qquad
        h^G = \mathrm{Norm}_2\big(x + \mathrm{Dropout}(\mathrm{MHA}_{\mathcal{G}}(x))\big)\\
        \mathrm{out} &= \mathrm{Norm}_3\big(h + \mathrm{MLP}(h)\big),\quad h = h^L + h^G

    :math:`\mathrm{MHA}_{\mathcal{G}}` is :class:`MultiheadGraphAttention` over a
    pattern built from ``batch``: with ``global_pattern="complete"`` (default, PyG's
    semantics) every node attends to every node of its own graph
    (:func:`graphattn.patterns.complete_per_graph`), with no padding to the largest
    graph, so a batch with a few large graphs costs what its real pairs cost. With
    ``global_pattern="sparse"`` it attends over Exphormer's pattern
    (:func:`graphattn.patterns.sparse_global`: the local edges, ``expander_degree``
    random expander edges per node and ``virtual_nodes`` learned virtual nodes per
    graph), linear in the graph size, for graphs too large for complete attention.
    The pattern is built once per ``batch`` tensor and reused by every call with it.

    Args:
        channels, conv, heads, dropout, act, act_kwargs, norm, norm_kwargs,
        attn_type, attn_kwargs: as in PyG's ``GPSConv``. ``conv`` may be any module
            called as ``conv(x, edge_index, **kwargs)`` (or None); ``attn_type`` is
            ``"multihead"`` (:class:`MultiheadGraphAttention`) or ``"performer"``
            (:class:`~graphattn.nn.global_attention.PerformerAttention`, linear
            attention with random features), ``attn_kwargs`` their arguments
            (e.g. ``{"dropout": 0.5}``).
        global_pattern: ``"complete"`` or ``"sparse"``.
        expander_degree, virtual_nodes, seed: the sparse pattern's expander degree
            (even; 0 for none), virtual nodes per graph (0 for none) and seed.

    Forward: ``forward(x, edge_index, batch=None, **kwargs)``; ``batch`` is PyG's
    node-to-graph vector (sorted; None for one graph); ``kwargs`` (e.g. ``edge_attr``)
    go to ``conv``. :meth:`from_pyg` copies a PyG ``GPSConv``.
    """

    def __init__(
        self,
        channels: int,
        conv: Optional[nn.Module],
        heads: int = 1,
        dropout: float = 0.0,
        act: str = "relu",
        act_kwargs: Optional[Dict[str, Any]] = None,
        norm: Optional[str] = "batch_norm",
        norm_kwargs: Optional[Dict[str, Any]] = None,
        attn_type: str = "multihead",
        attn_kwargs: Optional[Dict[str, Any]] = None,
        *,
        global_pattern: str = "complete",
        expander_degree: int = 4,
        virtual_nodes: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from torch_geometric.nn.resolver import activation_resolver, normalization_resolver

        check_positive_int("channels", channels)
        check_hyperparameters(heads=heads, dropout=dropout)
        if global_pattern == "sparse" and (
            isinstance(virtual_nodes, bool) or not isinstance(virtual_nodes, int) or virtual_nodes < 0
        ):
            raise ValueError(f"virtual_nodes must be a non-negative integer, got {virtual_nodes!r}")
        if attn_type not in ATTN_TYPES:
            raise ValueError(
                f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r} (for large graphs use "
                f"'performer' or global_pattern='sparse')"
            )
        if global_pattern not in GLOBAL_PATTERNS:
            raise ValueError(f"global_pattern must be one of {GLOBAL_PATTERNS}, got {global_pattern!r}")
        if attn_type == "performer" and global_pattern != "complete":
            raise ValueError(
                "attn_type='performer' attends to every node of each graph (in linear time); "
                f"global_pattern={global_pattern!r} applies to attn_type='multihead' only"
            )
        self.channels, self.conv, self.heads, self.dropout = channels, conv, heads, dropout
        self.attn_type, self.global_pattern = attn_type, global_pattern
        self.expander_degree, self.seed = expander_degree, seed
        self.attn = (
            MultiheadGraphAttention(channels, heads, batch_first=True, **(attn_kwargs or {}))
            if attn_type == "multihead"
            else PerformerAttention(channels, heads, **(attn_kwargs or {}))
        )
        self.virtual = (
            nn.Parameter(torch.zeros(virtual_nodes, channels)) if global_pattern == "sparse" and virtual_nodes else None
        )
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels * 2),
            activation_resolver(act, **(act_kwargs or {})),
            nn.Dropout(dropout),
            nn.Linear(channels * 2, channels),
            nn.Dropout(dropout),
        )
        self.norm1, self.norm2, self.norm3 = (
            normalization_resolver(norm, channels, **(norm_kwargs or {})) for _ in range(3)
        )
        self.norm_with_batch = self.norm1 is not None and "batch" in inspect.signature(self.norm1.forward).parameters
        self._reset_own_parameters()  # ``conv`` arrives initialised (and may carry copied weights)

    def reset_parameters(self) -> None:
        if self.conv is not None:
            self.conv.reset_parameters()
        self._reset_own_parameters()

    def _reset_own_parameters(self) -> None:
        from torch_geometric.nn.inits import reset

        self.attn._reset_parameters()
        reset(self.mlp)
        for norm in (self.norm1, self.norm2, self.norm3):
            if norm is not None:
                norm.reset_parameters()
        if self.virtual is not None:
            nn.init.normal_(self.virtual, std=self.channels**-0.5)

    @classmethod
    def from_pyg(cls, gps: nn.Module) -> "GPSConv":
        """A GPSConv with the arguments and weights of a ``torch_geometric.nn.GPSConv``.
        Its local ``conv`` becomes graphattn's layer when it is PyG's ``GATConv``,
        ``GATv2Conv`` or ``TransformerConv`` (weights copied), and is kept as given
        otherwise; the MLP and norms are copies."""
        check_pyg_type(gps, "torch_geometric.nn.GPSConv")
        if gps.attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type={gps.attn_type!r} does not convert; {ATTN_TYPES} do")
        ours = {pyg_class(c.pyg_spec.pyg_class): c for c in (GATConv, GATv2Conv, TransformerConv)}
        conv = gps.conv
        if conv is not None and type(conv) in ours:
            conv = ours[type(conv)].from_pyg(conv)
        layer = cls(gps.channels, conv, heads=gps.heads, dropout=gps.dropout, norm=None, attn_type=gps.attn_type)
        layer.attn = (
            MultiheadGraphAttention.from_torch(gps.attn)
            if gps.attn_type == "multihead"
            else PerformerAttention.from_pyg(gps.attn)
        )
        layer.mlp = copy.deepcopy(gps.mlp)
        layer.norm1, layer.norm2, layer.norm3 = (copy.deepcopy(n) for n in (gps.norm1, gps.norm2, gps.norm3))
        layer.norm_with_batch = gps.norm_with_batch
        return layer.train(gps.training)

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor, edge_index, batch: Optional[Tensor] = None, **kwargs) -> Tensor:
        branches = []
        if self.conv is not None:  # local message passing
            h = F.dropout(self.conv(x, edge_index, **kwargs), p=self.dropout, training=self.training)
            branches.append(self._norm(self.norm1, h + x, batch))
        h = F.dropout(self._global_attention(x, edge_index, batch), p=self.dropout, training=self.training)
        branches.append(self._norm(self.norm2, h + x, batch))
        out = sum(branches)
        return self._norm(self.norm3, out + self.mlp(out), batch)

    def _norm(self, norm: Optional[nn.Module], h: Tensor, batch: Optional[Tensor]) -> Tensor:
        if norm is None:
            return h
        return norm(h, batch=batch) if self.norm_with_batch else norm(h)

    def _global_attention(self, x: Tensor, edge_index, batch: Optional[Tensor]) -> Tensor:
        if self.attn_type == "performer":
            return self._performer(x, batch)
        graph = self.global_graph(x.size(0), edge_index, batch, x.device)
        if self.global_pattern == "complete":
            return self.attn.attend_packed(x, x, x, graph)[0]
        num_graphs = len(graph.pattern.batch)
        nodes = x if self.virtual is None else torch.cat([x, self.virtual.to(x.dtype).repeat(num_graphs, 1)])
        return self.attn.attend_packed(nodes, nodes, nodes, graph)[0][: x.size(0)]

    def _performer(self, x: Tensor, batch: Optional[Tensor]) -> Tensor:
        """Linear attention over each graph: padded to the largest graph, the padding no key."""
        from torch_geometric.utils import to_dense_batch

        patterns.graph_sizes(batch, x.size(0))  # PyG's batch vector, checked as for the other patterns
        h, mask = to_dense_batch(x, batch)
        return self.attn(h, mask)[mask]

    @torch.compiler.disable
    def global_graph(self, num_nodes: int, edge_index, batch: Optional[Tensor], device) -> Graph:
        """The global attention pattern for this batch. Shared by every GPSConv with
        the same pattern settings: the layers of a model build it once per batch (a
        one-slot cache on weak references to the ``batch`` and local adjacency objects,
        re-built when either is edited in place, built once when threads share it)."""
        local = edge_index if self.global_pattern == "sparse" else None
        virtual = 0 if self.virtual is None else self.virtual.size(0)
        key = (num_nodes, str(device), self.global_pattern, self.expander_degree, virtual, self.seed)
        return _PATTERNS.lookup((batch, local), key, lambda: self._build_pattern(num_nodes, local, batch, device))

    def _build_pattern(self, num_nodes: int, local, batch: Optional[Tensor], device) -> Graph:
        if self.global_pattern == "complete":
            graph = patterns.complete_per_graph(batch, num_nodes)
        else:
            local_index = None if local is None else _as_edge_index(local, num_nodes)
            virtual = 0 if self.virtual is None else self.virtual.size(0)
            graph = patterns.sparse_global(
                batch, num_nodes, local_index, degree=self.expander_degree, virtual_per_graph=virtual, seed=self.seed
            )
        return graph.to(device)

    def __repr__(self) -> str:
        """PyG's repr for PyG's arguments; a non-default global pattern is added after them."""
        extra = "" if self.global_pattern == "complete" else f", global_pattern={self.global_pattern}"
        return (
            f"{self.__class__.__name__}({self.channels}, conv={self.conv}, heads={self.heads}, "
            f"attn_type={self.attn_type}{extra})"
        )


def _as_edge_index(adjacency, num_nodes: int) -> Tensor:
    """``edge_index`` of a local adjacency given as an edge_index, a sparse ``adj_t``
    or a :class:`Graph` (the sparse pattern includes the local edges)."""
    if isinstance(adjacency, Graph):
        return adjacency.ensure_valid().edge_index  # an in-place edit is checked, its derived edges rebuilt
    if isinstance(adjacency, Tensor) and not adjacency.is_sparse and adjacency.layout == torch.strided:
        return adjacency
    return Graph.from_sparse(adjacency)[0].edge_index
