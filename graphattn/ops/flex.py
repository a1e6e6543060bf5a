"""Banded (sliding-window), causal and complete graphs through PyTorch's
``flex_attention`` with a block mask: on GPU it skips the blocks outside the band.

Chosen automatically for CUDA tensors; on CPU only when forced (the fused sparse
kernel is faster there), which is how the tests check it equals the sparse path.
No dropout, edge terms or returned weights (those calls take another backend).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from ..graph import PatternKind
from .dense import blocks, exact_where_nonfinite

FLEX_KINDS = (PatternKind.BAND, PatternKind.CAUSAL, PatternKind.COMPLETE)


def _available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _band(graph):
    pat = graph.pattern
    dims = blocks(graph, FLEX_KINDS)
    if dims is None:
        return None
    _, Lq, Lk = dims
    if pat.kind == PatternKind.BAND:
        return dims, pat.get("left"), pat.get("right")
    if pat.kind == PatternKind.CAUSAL:
        return dims, Lq, 0
    return dims, Lk, Lk  # complete


def decline(
    graph=None,
    need_weights=False,
    has_edge_terms=False,
    device=None,
    dropout=0.0,
    forced=False,
    has_edge_mask=False,
    **_,
) -> Optional[str]:
    if graph is None or _band(graph) is None:
        return "the graph is not a known band / causal pattern"
    if has_edge_mask:
        return "a per-edge message mask is set"
    if need_weights:
        return "attention weights were asked for"
    if has_edge_terms:
        return "the call has per-edge terms"
    if dropout > 0:
        return "attention dropout is on"
    if not _available():
        return "torch has no flex_attention"
    if torch.device(device).type != "cuda" and not forced:
        return "on CPU it runs only when forced (the sparse kernel is faster there)"
    return None


@functools.lru_cache(maxsize=32)
def _block_mask(Lq: int, Lk: int, left: int, right: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)

    return create_block_mask(mask_mod, None, None, Lq, Lk, device=device)


@functools.lru_cache(maxsize=1)
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def dot_product(
    query, key, value, graph, *, scale, edge_key, edge_value, edge_bias, dropout, training, need_weights=False
):
    from torch.nn.attention.flex_attention import flex_attention

    (B, Lq, Lk), left, right = _band(graph)
    H = query.size(1)
    mask = _block_mask(Lq, Lk, int(left), int(right), str(query.device))

    def to_dense(t, L):  # [B*L, H, X] -> [B, H, L, X]
        return t.reshape(B, L, H, t.size(-1)).transpose(1, 2)

    fn = _compiled() if query.is_cuda else flex_attention

    def attend(q, k, v):
        out = fn(to_dense(q, Lq), to_dense(k, Lk), to_dense(v, Lk), block_mask=mask, scale=scale)
        return out.transpose(1, 2).reshape(B * Lq, H, v.size(-1))

    # flex computes the masked pairs of a block as SDPA does: NaN and inf are the dense routes' case
    return exact_where_nonfinite(attend, query, key, value, graph, scale=scale, dropout=0.0), None
