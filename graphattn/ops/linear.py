"""Kernelised linear attention (Katharopoulos et al., 2020): the other route to long inputs.

.. math::
    o_i = \\frac{\\phi(q_i)^\\top \\sum_{j \\in N(i)} \\phi(k_j) v_j^\\top}
               {\\phi(q_i)^\\top \\sum_{j \\in N(i)} \\phi(k_j)}

with a positive feature map :math:`\\phi` (``elu(x) + 1`` by default) and
:math:`N(i)` all keys (non-causal) or the keys up to ``i`` (causal). Cost is
linear in the sequence length; the price is that the softmax kernel
:math:`\\exp(q^\\top k)` is replaced by :math:`\\phi(q)^\\top\\phi(k)`, so it is not exact
softmax attention and has no graph of edges: it lives beside the graph ops.

Causal attention runs in chunks: a masked quadratic product inside each chunk
and a running ``sum phi(k) v^T`` state across chunks, so memory is
``O(L/chunk * D * C)`` per head instead of the ``O(L * D * C)`` of a cumulative sum.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

FeatureMap = Union[str, Callable[[Tensor], Tensor]]


def get_feature_map(name: FeatureMap) -> Callable[[Tensor], Tensor]:
    if callable(name):
        return name
    if name == "elu":
        return lambda x: F.elu(x) + 1.0
    if name == "relu":
        return F.relu
    raise ValueError(f"feature_map must be 'elu', 'relu' or a callable, got {name!r}")


def check_chunk(chunk) -> int:
    """The causal form's block length: a positive integer (the layer checks it when built)."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer (the causal form's block length), got {chunk!r}")
    return chunk


def _check_options(causal, return_weights, eps, chunk) -> None:
    for name, flag in (("causal", causal), ("return_weights", return_weights)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {type(flag).__name__}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(
            f"eps must be a positive finite number (it keeps a query with no visible key at 0), got {eps!r}"
        )
    check_chunk(chunk)


def _check(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor], causal: bool) -> None:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor, got {t.dtype if isinstance(t, Tensor) else type(t).__name__}"
            )
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{name} is {t.dtype} on {t.device} but query is {q.dtype} on {q.device}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("query, key and value must be (batch, heads, length, dim)")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.size(-1) != k.size(-1):
        raise ValueError(f"shapes do not match: query {tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}")
    if causal and q.size(2) != k.size(2):
        raise ValueError(f"causal linear attention needs as many queries as keys, got {q.size(2)} and {k.size(2)}")
    if key_padding_mask is not None and not isinstance(key_padding_mask, Tensor):
        raise TypeError(f"key_padding_mask must be a bool tensor, got {type(key_padding_mask).__name__}")
    if key_padding_mask is not None and key_padding_mask.shape != (k.size(0), k.size(2)):
        raise ValueError(f"key_padding_mask must be ({k.size(0)}, {k.size(2)}), got {tuple(key_padding_mask.shape)}")
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool, got {key_padding_mask.dtype}")


def linear_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Optional[Tensor] = None,
    feature_map: FeatureMap = "elu",
    eps: float = 1e-6,
    chunk: int = 64,
    return_weights: bool = False,
):
    """Linear attention over ``(B, H, L, D)`` queries/keys and ``(B, H, S, C)`` values.

    ``key_padding_mask`` (``(B, S)`` bool, True = padding) removes keys. With
    ``return_weights`` the implied ``(B, H, L, S)`` weights
    ``phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j')`` come back too (quadratic: for
    inspection only). A query with no visible key gets zeros.
    """
    _check_options(causal, return_weights, eps, chunk)
    _check(query, key, value, key_padding_mask, causal)
    phi = get_feature_map(feature_map)
    fq, fk = phi(query), phi(key)
    if key_padding_mask is not None:
        fk = fk.masked_fill(key_padding_mask[:, None, :, None], 0.0)
    if not causal:
        kv = torch.einsum("bhsd,bhsc->bhdc", fk, value)
        z = fk.sum(dim=2)
        num = torch.einsum("bhld,bhdc->bhlc", fq, kv)
        den = torch.einsum("bhld,bhd->bhl", fq, z)
    else:
        num, den = _causal_chunked(fq, fk, value, chunk)
    out = num / (den.unsqueeze(-1) + eps)
    if not return_weights:
        return out
    scores = torch.einsum("bhld,bhsd->bhls", fq, fk)
    if causal:
        L = scores.size(-1)
        scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool, device=scores.device).triu(1), 0.0)
    weights = scores / (scores.sum(-1, keepdim=True) + eps)
    return out, weights


def _causal_chunked(fq: Tensor, fk: Tensor, v: Tensor, chunk: int):
    B, H, L, D = fq.shape
    C = v.size(-1)
    n = (L + chunk - 1) // chunk
    pad = n * chunk - L
    if pad:
        fq, fk, v = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v))
    qc = fq.reshape(B, H, n, chunk, D)
    kc = fk.reshape(B, H, n, chunk, D)
    vc = v.reshape(B, H, n, chunk, C)
    tril = torch.ones(chunk, chunk, dtype=torch.bool, device=fq.device).tril()
    inner = (qc @ kc.transpose(-1, -2)).masked_fill(~tril, 0.0)  # [B,H,n,c,c]
    num = inner @ vc
    den = inner.sum(-1)
    # state from all earlier chunks (exclusive prefix sum over chunks)
    kv = kc.transpose(-1, -2) @ vc  # [B,H,n,D,C]
    kv_prev = torch.cumsum(kv, dim=2) - kv
    ks = kc.sum(dim=3)  # [B,H,n,D]
    ks_prev = torch.cumsum(ks, dim=2) - ks
    num = num + qc @ kv_prev
    den = den + (qc * ks_prev.unsqueeze(3)).sum(-1)
    num = num.reshape(B, H, n * chunk, C)[:, :, :L]
    den = den.reshape(B, H, n * chunk)[:, :, :L]
    return num, den
