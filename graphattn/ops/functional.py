"""Public attention ops over graphs: validation, edge-order handling, dispatch.

Every op takes per-node tensors, a :class:`~graphattn.Graph` (or a PyG-style
``edge_index``) and per-edge tensors in the graph's **user order** (the order of
``graph.edge_index``), and returns per-destination outputs ``[num_dst, H, C]``
plus, on request, the normalised attention weights ``[E, H]`` in user order,
taken before dropout.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..graph import Graph
from ._dispatch import select_backend

GraphLike = Union[Graph, Tensor]

__all__ = ["edge_softmax", "gat_attention", "gatv2_attention", "dot_product_attention", "as_graph"]


def as_graph(graph: GraphLike, num_src: Optional[int] = None, num_dst: Optional[int] = None) -> Graph:
    """A :class:`Graph` for ``graph``: a Graph is checked against the node counts
    and returned as is; an ``edge_index`` is validated and sorted (once per call:
    build a Graph yourself to reuse it)."""
    if isinstance(graph, Graph):
        if num_src is not None and num_dst is not None:
            graph.check_nodes(num_src, num_dst)
        return graph
    if isinstance(graph, Tensor):
        return Graph.from_edge_index(graph, num_src=num_src, num_dst=num_dst)
    raise TypeError(f"expected a graphattn.Graph or an edge_index tensor, got {type(graph).__name__}")


def _check_float(name: str, t: Tensor, dtype: Optional[torch.dtype] = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the other inputs are {dtype}; cast them to one dtype")


def _check_shape(name: str, t: Tensor, expected: Sequence[Optional[int]], meaning: str) -> None:
    ok = t.dim() == len(expected) and all(e is None or s == e for s, e in zip(t.shape, expected))
    if not ok:
        want = ", ".join("*" if e is None else str(e) for e in expected)
        raise ValueError(f"{name} must have shape [{want}] ({meaning}), got {list(t.shape)}")


def _check_device(graph: Graph, t: Tensor) -> None:
    if t.device != graph.device:
        raise ValueError(f"inputs are on {t.device} but the graph is on {graph.device}; use graph.to(device)")


def _finish(graph: Graph, out: Tensor, alpha: Tensor, return_weights: bool):
    if return_weights:
        return out, graph.to_user_order(alpha)
    return out


def _edge(graph: Graph, t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else graph.to_csr_order(t)


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
    _check_float("scores", scores)
    if isinstance(graph_or_index, Graph):
        graph = graph_or_index
        _check_device(graph, scores)
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

    Returns:
        ``out`` ``[N_dst, H, C]``, or ``(out, alpha)``.
    """
    _check_float("value", value)
    dt = value.dtype
    if value.dim() != 3:
        raise ValueError(f"value must have shape [num_src, heads, channels], got {list(value.shape)}")
    ns, H, _ = value.shape
    nd = score_dst.size(0) if score_dst is not None else None
    g = as_graph(graph, ns, nd)
    nd = g.num_dst
    _check_float("score_src", score_src, dt)
    _check_shape("score_src", score_src, (ns, H), "num_src, heads")
    if score_dst is not None:
        _check_float("score_dst", score_dst, dt)
        _check_shape("score_dst", score_dst, (nd, H), "num_dst, heads")
    if edge_score is not None:
        _check_float("edge_score", edge_score, dt)
        _check_shape("edge_score", edge_score, (g.num_edges, H), "num_edges, heads")
    _check_device(g, value)
    impl = select_backend("gat", backend, device=value.device, dtype=dt, graph=g, dropout=dropout if training else 0.0)
    out, alpha = impl.fn(
        score_src, score_dst, value, g,
        negative_slope=negative_slope, edge_score=_edge(g, edge_score), dropout=dropout, training=training,
        need_weights=return_weights,
    )
    return _finish(g, out, alpha, return_weights)


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
    """
    _check_float("x_src", x_src)
    dt = x_src.dtype
    if x_src.dim() != 3:
        raise ValueError(f"x_src must have shape [num_src, heads, channels], got {list(x_src.shape)}")
    ns, H, C = x_src.shape
    _check_float("x_dst", x_dst, dt)
    if x_dst.dim() != 3:
        raise ValueError(f"x_dst must have shape [num_dst, heads, channels], got {list(x_dst.shape)}")
    g = as_graph(graph, ns, x_dst.size(0))
    _check_shape("x_dst", x_dst, (g.num_dst, H, C), "num_dst, heads, channels")
    _check_float("att", att, dt)
    att = att.reshape(att.shape[-2:]) if att.dim() == 3 and att.size(0) == 1 else att
    _check_shape("att", att, (H, C), "heads, channels")
    value = x_src if value is None else value
    _check_float("value", value, dt)
    _check_shape("value", value, (ns, H, None), "num_src, heads, channels")
    if edge_feat is not None:
        _check_float("edge_feat", edge_feat, dt)
        _check_shape("edge_feat", edge_feat, (g.num_edges, H, C), "num_edges, heads, channels")
    _check_device(g, x_src)
    impl = select_backend("gatv2", backend, device=x_src.device, dtype=dt, graph=g, dropout=dropout if training else 0.0)
    out, alpha = impl.fn(
        x_src, x_dst, att, value, g,
        negative_slope=negative_slope, edge_feat=_edge(g, edge_feat), dropout=dropout, training=training,
        need_weights=return_weights,
    )
    return _finish(g, out, alpha, return_weights)


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
    """
    _check_float("query", query)
    dt = query.dtype
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape [num_nodes, heads, channels], got {list(t.shape)}")
    nd, H, D = query.shape
    ns = key.size(0)
    _check_float("key", key, dt)
    _check_float("value", value, dt)
    _check_shape("key", key, (ns, H, D), "num_src, heads, head_dim")
    _check_shape("value", value, (ns, H, None), "num_src, heads, channels")
    g = as_graph(graph, ns, nd)
    E, C = g.num_edges, value.size(-1)
    if edge_key is not None:
        _check_float("edge_key", edge_key, dt)
        _check_shape("edge_key", edge_key, (E, H, D), "num_edges, heads, head_dim")
    if edge_value is not None:
        _check_float("edge_value", edge_value, dt)
        _check_shape("edge_value", edge_value, (E, H, C), "num_edges, heads, channels")
    if edge_bias is not None:
        _check_float("edge_bias", edge_bias, dt)
        _check_shape("edge_bias", edge_bias, (E, H), "num_edges, heads")
    _check_device(g, query)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    has_edge_terms = edge_key is not None or edge_value is not None or edge_bias is not None
    impl = select_backend("dot_product", backend, device=query.device, dtype=dt, graph=g,
                          dropout=dropout if training else 0.0, need_weights=return_weights,
                          has_edge_terms=has_edge_terms)
    out, alpha = impl.fn(
        query, key, value, g,
        scale=scale, edge_key=_edge(g, edge_key), edge_value=_edge(g, edge_value),
        edge_bias=_edge(g, edge_bias), dropout=dropout, training=training,
        need_weights=return_weights,
    )
    return _finish(g, out, alpha, return_weights)
