"""The reference backend: plain PyTorch gather / scatter, any device, any float dtype.

It is the oracle the other backends are tested against, written for clarity:
every intermediate (including the ``E x H x C`` messages) is materialised.
All functions take and return per-edge tensors in CSR order; half precision is
computed in fp32 and cast back.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..graph import Graph
from . import _fused
from ._dtypes import compute_dtype
from .softmax import segment_softmax

Out = Tuple[Tensor, Tensor]


def _up(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def _softmax_and_aggregate(
    scores: Tensor,
    messages_from: Tensor,
    graph: Graph,
    dropout: float,
    training: bool,
    edge_value: Optional[Tensor] = None,
    edge_mask: Optional[Tensor] = None,
) -> Out:
    """softmax per destination, dropout, an optional per-edge mask on the messages,
    then ``out_i = sum_j a_ij * v_j``."""
    alpha = segment_softmax(scores, graph.row, graph.num_dst)
    a = F.dropout(alpha, p=dropout, training=training) if dropout > 0 else alpha
    if edge_mask is not None:
        a = a * edge_mask.to(a.dtype).unsqueeze(-1)
    msg = messages_from.index_select(0, graph.col)
    if edge_value is not None:
        msg = msg + edge_value
    msg = msg * a.unsqueeze(-1)
    out = msg.new_zeros((graph.num_dst,) + tuple(msg.shape[1:])).index_add_(0, graph.row, msg)
    return out, alpha


# ------------------------------------------------------------------ scores
# Per-edge scores [E, H] in CSR order, in ``dtype``: the formulas in their plainest
# form (each op's reference and the differentiable weights after a fused backend).
def gat_scores(score_src: Tensor, score_dst: Optional[Tensor], graph: Graph, *, negative_slope: float,
               edge_score: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """``leaky(s_src[j] + s_dst[i] + s_edge[e])``."""
    s = score_src.to(dtype).index_select(0, graph.col)
    if score_dst is not None:
        s = s + score_dst.to(dtype).index_select(0, graph.row)
    if edge_score is not None:
        s = s + edge_score.to(dtype)
    return F.leaky_relu(s, negative_slope)


def gatv2_scores(x_src: Tensor, x_dst: Tensor, att: Tensor, graph: Graph, *, negative_slope: float,
                 edge_feat: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """``att . leaky(x_src[j] + x_dst[i] + edge_feat[e])``."""
    z = x_src.to(dtype).index_select(0, graph.col) + x_dst.to(dtype).index_select(0, graph.row)
    if edge_feat is not None:
        z = z + edge_feat.to(dtype)
    return (F.leaky_relu(z, negative_slope) * att.to(dtype)).sum(-1)


def dot_scores(query: Tensor, key: Tensor, graph: Graph, *, scale: float, edge_key: Optional[Tensor],
               edge_bias: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """``scale * q[i] . (k[j] + edge_key[e]) + edge_bias[e]``."""
    k = key.to(dtype).index_select(0, graph.col)
    if edge_key is not None:
        k = k + edge_key.to(dtype)
    s = (query.to(dtype).index_select(0, graph.row) * k).sum(-1) * scale
    return s + edge_bias.to(dtype) if edge_bias is not None else s


# A fused kind's score formula in the kernels' calling convention (ops/_fused.py):
# what a backend that returns weights from its saved statistics recomputes them with.
_KIND_SCORES = {
    _fused.GAT: lambda g, dst, src, edge, bias, att, slope, scale, dtype: gat_scores(
        src, dst, g, negative_slope=slope, edge_score=edge, dtype=dtype),
    _fused.GATV2: lambda g, dst, src, edge, bias, att, slope, scale, dtype: gatv2_scores(
        src, dst, att, g, negative_slope=slope, edge_feat=edge, dtype=dtype),
    _fused.DOT: lambda g, dst, src, edge, bias, att, slope, scale, dtype: dot_scores(
        dst, src, g, scale=scale, edge_key=edge, edge_bias=bias, dtype=dtype),
}


def kind_scores(kind: int, graph: Graph, dst_term: Optional[Tensor], src_term: Tensor,
                edge_score_term: Optional[Tensor], edge_bias: Optional[Tensor], att: Optional[Tensor], slope: float,
                scale: float, dtype: torch.dtype) -> Tensor:
    """The scores ``[E, H]`` (CSR order) of fused kind ``kind`` from its kernel terms,
    by the reference's formula for it. A new kind adds its formula to ``_KIND_SCORES``."""
    if kind not in _KIND_SCORES:
        raise ValueError(f"no reference score formula for score kind {_fused.score_kind(kind).name}")
    return _KIND_SCORES[kind](graph, dst_term, src_term, edge_score_term, edge_bias, att, slope, scale, dtype)


def gat(
    score_src: Tensor,
    score_dst: Optional[Tensor],
    value: Tensor,
    graph: Graph,
    *,
    negative_slope: float,
    edge_score: Optional[Tensor],
    dropout: float,
    training: bool,
    need_weights: bool = True,
    edge_mask: Optional[Tensor] = None,
) -> Out:
    dt = compute_dtype(value.dtype)
    s = gat_scores(score_src, score_dst, graph, negative_slope=negative_slope, edge_score=edge_score, dtype=dt)
    out, alpha = _softmax_and_aggregate(s, value.to(dt), graph, dropout, training, edge_mask=edge_mask)
    return out.to(value.dtype), alpha.to(value.dtype)


def gatv2(
    x_src: Tensor,
    x_dst: Tensor,
    att: Tensor,
    value: Tensor,
    graph: Graph,
    *,
    negative_slope: float,
    edge_feat: Optional[Tensor],
    dropout: float,
    training: bool,
    need_weights: bool = True,
    edge_mask: Optional[Tensor] = None,
) -> Out:
    dt = compute_dtype(value.dtype)
    s = gatv2_scores(x_src, x_dst, att, graph, negative_slope=negative_slope, edge_feat=edge_feat, dtype=dt)
    out, alpha = _softmax_and_aggregate(s, value.to(dt), graph, dropout, training, edge_mask=edge_mask)
    return out.to(value.dtype), alpha.to(value.dtype)


def dot_product(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    graph: Graph,
    *,
    scale: float,
    edge_key: Optional[Tensor],
    edge_value: Optional[Tensor],
    edge_bias: Optional[Tensor],
    dropout: float,
    training: bool,
    need_weights: bool = True,
    edge_mask: Optional[Tensor] = None,
) -> Out:
    dt = compute_dtype(value.dtype)
    s = dot_scores(query, key, graph, scale=scale, edge_key=edge_key, edge_bias=edge_bias, dtype=dt)
    out, alpha = _softmax_and_aggregate(s, value.to(dt), graph, dropout, training, _up(edge_value, dt), edge_mask)
    return out.to(value.dtype), alpha.to(value.dtype)


def edge_softmax(scores: Tensor, index: Tensor, num_segments: int, graph: Optional[Graph] = None) -> Tensor:
    return segment_softmax(scores, index, num_segments)
