"""Dense dispatch: graphs known to be complete, causal or complete-bipartite (one
sequence, or a batch of equal-length sequences) run through PyTorch's
``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU, a
fused kernel on CPU). The result equals the sparse path's; tests check it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..graph import Graph

DENSE_KINDS = ("complete", "causal", "cross")


def blocks(graph: Graph, kinds: Tuple[str, ...] = DENSE_KINDS) -> Optional[Tuple[int, int, int]]:
    """``(batch, Lq, Lk)`` when the graph is a batch of identical blocks of one of
    ``kinds``, else None."""
    pat = graph.pattern
    if pat is None or pat.kind not in kinds:
        return None
    if pat.batch is None:
        return 1, graph.num_dst, graph.num_src
    qs = set(pat.batch)
    ks = set(pat.get("key_lengths", pat.batch))
    if len(qs) != 1 or len(ks) != 1:
        return None
    B = len(pat.batch)
    Lq, Lk = next(iter(qs)), next(iter(ks))
    if pat.kind in ("causal", "band") and Lq != Lk:
        return None
    if not _counts_agree(graph, pat, B, Lq, Lk):
        return None
    return B, Lq, Lk


def _band_edges(L: int, left: int, right: int) -> int:
    """Edges of a band of ``left``/``right`` neighbours clipped to ``L`` tokens."""
    a, b = min(left, max(L - 1, 0)), min(right, max(L - 1, 0))
    return L * (a + b + 1) - a * (a + 1) // 2 - b * (b + 1) // 2 if L else 0


def _counts_agree(graph: Graph, pat, B: int, Lq: int, Lk: int) -> bool:
    """A recorded pattern is a claim; the node and edge counts must bear it out before
    a dense kernel replaces the edges (a mislabelled graph takes the sparse path)."""
    if pat.kind in ("complete", "cross"):
        per_block = Lq * Lk
    elif pat.kind == "causal":
        per_block = _band_edges(Lq, Lq, 0)
    elif pat.kind == "band":
        per_block = _band_edges(Lq, int(pat.get("left", 0)), int(pat.get("right", 0)))
    else:
        return False
    return graph.num_dst == B * Lq and graph.num_src == B * Lk and graph.num_edges == B * per_block


def decline(graph=None, need_weights=False, has_edge_terms=False, has_edge_mask=False, **_) -> Optional[str]:
    if graph is None:
        return "no graph"
    if has_edge_mask:
        return "a per-edge message mask is set"
    if need_weights:
        return "attention weights were asked for (SDPA does not return them)"
    if has_edge_terms:
        return "the call has per-edge terms (edge_key / edge_value / edge_bias)"
    if blocks(graph) is None:
        return "the graph is not known to be complete, causal or cross blocks of one size"
    return None


def dot_product(query, key, value, graph, *, scale, edge_key, edge_value, edge_bias, dropout, training,
                need_weights=False):
    if edge_key is not None or edge_value is not None or edge_bias is not None or need_weights:
        raise RuntimeError("the dense backend runs plain attention only (no edge terms, no returned weights)")
    B, Lq, Lk = blocks(graph)
    H, D, C = query.size(1), query.size(2), value.size(2)

    def to_dense(t: Tensor, L: int) -> Tensor:  # [B*L, H, X] -> [B, H, L, X]
        return t.reshape(B, L, H, t.size(-1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        to_dense(query, Lq), to_dense(key, Lk), to_dense(value, Lk),
        dropout_p=dropout if training else 0.0, is_causal=graph.pattern.kind == "causal", scale=scale,
    )
    return out.transpose(1, 2).reshape(B * Lq, H, C), None
