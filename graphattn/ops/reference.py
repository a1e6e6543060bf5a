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
# Per-edge scores [E, H] in CSR order, in ``dtype``, of each fused kind from its kernel
# terms (ops/_fused.py's calling convention): the formulas in their plainest form (the
# reference backend, the differentiable weights after a fused backend, and the weights
# the Triton backend returns all use them).
def gat_scores(
    graph: Graph,
    dst_term: Optional[Tensor],
    src_term: Tensor,
    edge_score_term: Optional[Tensor],
    edge_bias: Optional[Tensor],
    att: Optional[Tensor],
    slope: float,
    scale: float,
    dtype: torch.dtype,
) -> Tensor:
    """``leaky(s_src[j] + s_dst[i] + s_edge[e])``."""
    s = src_term.to(dtype).index_select(0, graph.col)
    if dst_term is not None:
        s = s + dst_term.to(dtype).index_select(0, graph.row)
    if edge_score_term is not None:
        s = s + edge_score_term.to(dtype)
    return F.leaky_relu(s, slope)


def gatv2_scores(
    graph: Graph,
    dst_term: Tensor,
    src_term: Tensor,
    edge_score_term: Optional[Tensor],
    edge_bias: Optional[Tensor],
    att: Tensor,
    slope: float,
    scale: float,
    dtype: torch.dtype,
) -> Tensor:
    """``att . leaky(x_src[j] + x_dst[i] + edge_feat[e])``."""
    z = src_term.to(dtype).index_select(0, graph.col) + dst_term.to(dtype).index_select(0, graph.row)
    if edge_score_term is not None:
        z = z + edge_score_term.to(dtype)
    return (F.leaky_relu(z, slope) * att.to(dtype)).sum(-1)


def dot_scores(
    graph: Graph,
    dst_term: Tensor,
    src_term: Tensor,
    edge_score_term: Optional[Tensor],
    edge_bias: Optional[Tensor],
    att: Optional[Tensor],
    slope: float,
    scale: float,
    dtype: torch.dtype,
) -> Tensor:
    """``scale * q[i] . (k[j] + edge_key[e]) + edge_bias[e]``."""
    k = src_term.to(dtype).index_select(0, graph.col)
    if edge_score_term is not None:
        k = k + edge_score_term.to(dtype)
    s = (dst_term.to(dtype).index_select(0, graph.row) * k).sum(-1) * scale
    return s + edge_bias.to(dtype) if edge_bias is not None else s


# Each fused kind's formula, by the kind's name (a row of _fused.KINDS).
KIND_SCORES = {"GAT": gat_scores, "GATV2": gatv2_scores, "DOT": dot_scores}


def kind_scores(
    kind: int,
    graph: Graph,
    dst_term: Optional[Tensor],
    src_term: Tensor,
    edge_score_term: Optional[Tensor],
    edge_bias: Optional[Tensor],
    att: Optional[Tensor],
    slope: float,
    scale: float,
    dtype: torch.dtype,
) -> Tensor:
    """The scores ``[E, H]`` (CSR order) of fused kind ``kind`` from its kernel terms,
    by the reference's formula for it. A new kind adds its formula to ``KIND_SCORES``."""
    name = _fused.score_kind(kind).name
    if name not in KIND_SCORES:
        raise ValueError(f"no reference score formula for score kind {name}")
    return KIND_SCORES[name](graph, dst_term, src_term, edge_score_term, edge_bias, att, slope, scale, dtype)


def run(
    kind: int,
    graph: Graph,
    dst_term: Optional[Tensor],
    src_term: Tensor,
    value: Tensor,
    edge_score_term: Optional[Tensor],
    edge_bias: Optional[Tensor],
    edge_value: Optional[Tensor],
    att: Optional[Tensor],
    slope: float,
    scale: float,
    dropout: float,
    training: bool,
    need_weights: bool = True,
    edge_mask: Optional[Tensor] = None,
) -> Out:
    """A fused op on the reference: its kind's formula, then the softmax and the weighted
    sum, in the fused kernels' calling convention (ops/_fused.py)."""
    dt = compute_dtype(value.dtype)
    s = kind_scores(kind, graph, dst_term, src_term, edge_score_term, edge_bias, att, slope, scale, dt)
    out, alpha = _softmax_and_aggregate(s, value.to(dt), graph, dropout, training, _up(edge_value, dt), edge_mask)
    return out.to(value.dtype), alpha.to(value.dtype)


# The reference backend's function of every fused op, by op name (ops/__init__ registers them).
FUNCTIONS = _fused.backend_functions(run)


def edge_softmax(scores: Tensor, index: Tensor, num_segments: int, graph: Optional[Graph] = None) -> Tensor:
    return segment_softmax(scores, index, num_segments)
