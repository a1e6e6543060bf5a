"""Public attention ops over graphs: validation, edge-order handling, dispatch.

Every op takes per-node tensors, a :class:`~graphattn.Graph` (or a PyG-style
``edge_index``) and per-edge tensors in the graph's **user order** (the order of
``graph.edge_index``), and returns per-destination outputs ``[num_dst, H, C]``
plus, on request, the normalised attention weights ``[E, H]`` in user order,
taken before dropout. Each attention op is one :class:`~._pipeline.OpRecord` (its
inputs described once in :mod:`._inputs`, how a backend is called, the reference's
score formula) and its public function a call of the one pipeline,
:func:`._pipeline.run`: check once, node order, describe, dispatch, run, finish.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from ..graph import Graph
from . import _inputs
from ._dispatch import select_backend
from ._inputs import check_call
from ._pipeline import OpRecord, describe_call, run, run_checked  # noqa: F401  (describe_call's keys)

GraphLike = Union[Graph, Tensor]

__all__ = ["edge_softmax", "gat_attention", "gatv2_attention", "dot_product_attention", "score_attention", "as_graph"]


def as_graph(graph: GraphLike, num_src: Optional[int] = None, num_dst: Optional[int] = None) -> Graph:
    """A valid :class:`Graph` for ``graph``: a Graph is checked (once) and against the
    node counts given; an ``edge_index`` is validated and sorted (once per call: build
    a Graph yourself to reuse it)."""
    return _inputs.resolve_graph(graph, num_src, num_dst)


# One record per op: what the pipeline (._pipeline.run) needs to check, describe,
# dispatch, call and finish it (how it is called and scored follows from its spec).
GAT = OpRecord(
    _inputs.GAT,
    lead="value",
    node_inputs=("score_src", "score_dst", "value"),
    edge_terms=("edge_score",),
    score_inputs=("score_src", "score_dst", "edge_score"),
)
GATV2 = OpRecord(
    _inputs.GATV2,
    lead="x_src",
    node_inputs=("x_src", "x_dst", "value"),
    edge_terms=("edge_feat",),
    score_inputs=("x_src", "x_dst", "att", "edge_feat"),
    defaults=(("value", "x_src"),),
)
DOT_PRODUCT = OpRecord(
    _inputs.DOT_PRODUCT,
    lead="query",
    node_inputs=("query", "key", "value"),
    edge_terms=("edge_key", "edge_value", "edge_bias"),
    score_inputs=("query", "key", "edge_key", "edge_bias"),
)
RECORDS = {r.name: r for r in (GAT, GATV2, DOT_PRODUCT)}


def edge_softmax(
    scores: Tensor,
    graph_or_index: GraphLike,
    *,
    num_nodes: Optional[int] = None,
    backend: Optional[str] = None,
) -> Tensor:
    r"""Softmax of edge scores over the in-edges of each destination node.

    .. math::
        \alpha_{ji} = \frac{\exp(s_{ji})}{\sum_{k \in \mathcal{N}(i)} \exp(s_{ki})}

    Args:
        scores: ``[E]`` or ``[E, H]`` (any trailing shape), in the graph's user order.
        graph_or_index: a :class:`Graph`, or the destination index of each edge
            (``[E]``, PyG's ``index`` convention).
        num_nodes: number of destination nodes when an index is given
            (default ``index.max() + 1``).

    Stable for huge logits; nodes whose in-edges are all ``-inf`` get weights 0.
    The backward pass saves only the output: :math:`\partial s = y \odot (g - \sum_i g \odot y)`.
    """
    if not isinstance(scores, Tensor) or not scores.is_floating_point() or scores.layout != torch.strided:
        raise TypeError(
            f"scores must be a dense floating-point tensor, got {getattr(scores, 'dtype', type(scores).__name__)}"
        )
    if scores.dim() == 0:
        raise ValueError("scores must have shape [num_edges, ...], got a 0-d tensor")
    if isinstance(graph_or_index, Graph):
        graph = graph_or_index.ensure_valid()
        if scores.device != graph.device:
            raise ValueError(f"scores is on {scores.device} but the graph is on {graph.device}; use graph.to(device)")
        if scores.size(0) != graph.num_edges:
            raise ValueError(f"scores has {scores.size(0)} rows but the graph has {graph.num_edges} edges")
        index, n = graph.edge_index[1], graph.num_dst
    elif isinstance(graph_or_index, Tensor):
        graph = None
        index = graph_or_index
        if index.is_floating_point() or index.dtype == torch.bool or index.is_complex():
            raise TypeError(f"index must be an integer tensor, got dtype {index.dtype}")
        if index.dim() != 1 or index.numel() != scores.size(0):
            raise ValueError(
                f"index must have shape [{scores.size(0)}] (one destination per score row), got {list(index.shape)}"
            )
        index = index.long()
        if num_nodes is None:
            n = int(index.max()) + 1 if index.numel() else 0
        else:
            n = int(num_nodes)
            if n < 0:
                raise ValueError(f"num_nodes must be >= 0, got {n}")
        if not torch.compiler.is_compiling() and index.numel():
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= n:
                raise ValueError(f"index has value {lo if lo < 0 else hi}, out of range for num_nodes={n}")
    else:
        raise TypeError(f"graph_or_index must be a Graph or an index tensor, got {type(graph_or_index).__name__}")
    impl = select_backend("edge_softmax", backend, device=scores.device, dtype=scores.dtype, graph=graph)
    return impl.fn(scores, index, n, graph=graph)


def gat_attention(
    score_src: Tensor,
    score_dst: Optional[Tensor],
    value: Tensor,
    graph: GraphLike,
    *,
    negative_slope: float = 0.2,
    edge_score: Optional[Tensor] = None,
    dropout: float = 0.0,
    training: bool = True,
    return_weights: bool = False,
    backend: Optional[str] = None,
    edge_mask: Optional[Tensor] = None,
):
    r"""Additive (GAT) attention over a graph.

    .. math::
        e_{ji} = \mathrm{LeakyReLU}(s^{src}_j + s^{dst}_i + s^{edge}_{ji}),\quad
        \alpha_{ji} = \mathrm{softmax}_i(e_{ji}),\quad
        o_i = \sum_{j \in \mathcal{N}(i)} \alpha_{ji} v_j

    Args:
        score_src: ``[N_src, H]`` per-source-node score terms (:math:`a_{src}^\top W x_j`).
        score_dst: ``[N_dst, H]`` per-destination terms, or ``None``.
        value: ``[N_src, H, C]`` values aggregated per destination.
        graph: a :class:`Graph` or ``edge_index``.
        edge_score: optional ``[E, H]`` per-edge term, in user order.
        dropout: attention dropout probability (applied when ``training``).
        return_weights: also return ``alpha`` ``[E, H]`` (user order, before dropout).
        edge_mask: optional ``[E]`` factor on each edge's message after the softmax
            (:math:`o_i = \sum_j m_{ji} \alpha_{ji} v_j`; PyG's explainer masks), user order,
            differentiable. Only the ``reference`` backend applies it.

    Returns:
        ``out`` ``[N_dst, H, C]``, or ``(out, alpha)``.
    """
    tensors = dict(value=value, score_src=score_src, score_dst=score_dst, edge_score=edge_score, edge_mask=edge_mask)
    return run(
        GAT,
        graph,
        tensors,
        dict(negative_slope=negative_slope, dropout=dropout),
        training=training,
        return_weights=return_weights,
        backend=backend,
    )


def gatv2_attention(
    x_src: Tensor,
    x_dst: Tensor,
    att: Tensor,
    graph: GraphLike,
    *,
    value: Optional[Tensor] = None,
    negative_slope: float = 0.2,
    edge_feat: Optional[Tensor] = None,
    dropout: float = 0.0,
    training: bool = True,
    return_weights: bool = False,
    backend: Optional[str] = None,
    edge_mask: Optional[Tensor] = None,
):
    r"""GATv2 attention over a graph.

    .. math::
        e_{ji} = a^\top \mathrm{LeakyReLU}(x^{src}_j + x^{dst}_i + f_{ji}),\quad
        \alpha_{ji} = \mathrm{softmax}_i(e_{ji}),\quad
        o_i = \sum_{j} \alpha_{ji} v_j \;(v = x^{src} \text{ by default})

    Args:
        x_src: ``[N_src, H, C]``; x_dst: ``[N_dst, H, C]``; att: ``[H, C]`` (or ``[1, H, C]``).
        edge_feat: optional ``[E, H, C]`` edge term added before the nonlinearity (user order).
        value: ``[N_src, H, C']`` values (default ``x_src``).
        edge_mask: optional ``[E]`` factor on each message after the softmax (see
            :func:`gat_attention`).
    """
    if isinstance(att, Tensor) and att.dim() == 3 and att.size(0) == 1:
        att = att.reshape(att.shape[1:])
    tensors = dict(x_src=x_src, x_dst=x_dst, att=att, value=value, edge_feat=edge_feat, edge_mask=edge_mask)
    return run(
        GATV2,
        graph,
        tensors,
        dict(negative_slope=negative_slope, dropout=dropout),
        training=training,
        return_weights=return_weights,
        backend=backend,
    )


def dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    graph: GraphLike,
    *,
    scale: Optional[float] = None,
    edge_key: Optional[Tensor] = None,
    edge_value: Optional[Tensor] = None,
    edge_bias: Optional[Tensor] = None,
    dropout: float = 0.0,
    training: bool = True,
    return_weights: bool = False,
    backend: Optional[str] = None,
    edge_mask: Optional[Tensor] = None,
):
    r"""Scaled dot-product attention over a graph (a transformer's attention with
    the complete graph replaced by any edge set).

    .. math::
        e_{ji} = \mathrm{scale}\cdot q_i^\top (k_j + f^{k}_{ji}) + b_{ji},\quad
        \alpha_{ji} = \mathrm{softmax}_i(e_{ji}),\quad
        o_i = \sum_j \alpha_{ji} (v_j + f^{v}_{ji})

    Args:
        query: ``[N_dst, H, D]``; key: ``[N_src, H, D]``; value: ``[N_src, H, C]``.
        scale: default ``1 / sqrt(D)``.
        edge_key, edge_value: optional per-edge vectors added to keys / values
            (PyG's ``TransformerConv`` edge features), user order.
        edge_bias: optional ``[E, H]`` additive score bias (user order); ``-inf`` masks an edge.
        edge_mask: optional ``[E]`` factor on each message after the softmax (see
            :func:`gat_attention`).
    """
    if scale is None and isinstance(query, Tensor) and query.dim() == 3:
        scale = 1.0 / math.sqrt(query.size(-1)) if query.size(-1) else 1.0
    tensors = dict(
        query=query,
        key=key,
        value=value,
        edge_key=edge_key,
        edge_value=edge_value,
        edge_bias=edge_bias,
        edge_mask=edge_mask,
    )
    return run(
        DOT_PRODUCT,
        graph,
        tensors,
        dict(scale=scale, dropout=dropout),
        training=training,
        return_weights=return_weights,
        backend=backend,
    )


def score_attention(
    scores: Tensor,
    value: Tensor,
    graph: GraphLike,
    *,
    dropout: float = 0.0,
    training: bool = True,
    return_weights: bool = False,
    backend: Optional[str] = None,
    edge_mask: Optional[Tensor] = None,
    num_dst: Optional[int] = None,
):
    r"""Attention over scores the caller computed: the softmax and the aggregation fused.

    .. math::
        \alpha_{ji} = \mathrm{softmax}_i(s_{ji}),\quad o_i = \sum_{j \in \mathcal{N}(i)} \alpha_{ji} v_j

    For attention variants without a kernel of their own (SuperGAT, AGNN, a learned
    per-edge bias, ...): compute ``scores`` ``[E, H]`` (user order) however you like,
    and this op does the rest without an ``E x H x C`` message tensor on the fused
    backends; gradients flow to ``scores`` and ``value``. It runs on the dot-product
    kernels (zero-width queries and keys, ``scores`` as the per-edge bias), so every
    ``dot_product`` backend that takes per-edge terms takes it, and
    ``ops.last_backend("dot_product")`` says which one ran.

    Args:
        scores: ``[E, H]`` per-edge logits in the graph's user order.
        value: ``[N_src, H, C]`` values.
        graph, dropout, training, return_weights, backend, edge_mask: as in
            :func:`dot_product_attention`.
        num_dst: destination nodes when ``graph`` is an ``edge_index`` (default: as many
            as ``value`` has rows, PyG's convention for a square graph).
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise ValueError(
            f"scores must be an [E, H] tensor of per-edge logits, got "
            f"{type(scores).__name__ if not isinstance(scores, Tensor) else tuple(scores.shape)}"
        )
    if not isinstance(value, Tensor) or value.dim() != 3:
        raise ValueError(
            f"value must be an [N_src, H, C] tensor, got "
            f"{type(value).__name__ if not isinstance(value, Tensor) else tuple(value.shape)}"
        )
    if isinstance(graph, Graph):
        g = as_graph(graph, value.size(0), num_dst)
    else:
        g = as_graph(graph, value.size(0), value.size(0) if num_dst is None else num_dst)
    if scores.size(0) != g.num_edges:
        raise ValueError(
            f"scores has {scores.size(0)} rows but the graph has {g.num_edges} edges (one row per edge, "
            f"in the graph's user order)"
        )
    _, dims, checked = check_call(
        _inputs.SCORE, g, dict(scores=scores, value=value, edge_mask=edge_mask), dict(dropout=dropout)
    )
    heads = scores.size(1)
    tensors = dict(
        query=value.new_zeros(g.num_dst, heads, 0),
        key=value.new_zeros(g.num_src, heads, 0),
        value=value,
        edge_key=None,
        edge_value=None,
        edge_bias=scores,
        edge_mask=edge_mask,
    )
    return run_checked(DOT_PRODUCT, g, dims, dict(checked, scale=1.0), tensors, training, return_weights, backend)


# The public function of each record, by op name (what tools that call every op use).
PUBLIC_OPS = {GAT.name: gat_attention, GATV2.name: gatv2_attention, DOT_PRODUCT.name: dot_product_attention}
