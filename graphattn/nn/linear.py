"""Linear attention with ``torch.nn.MultiheadAttention``'s interface (a drop-in for
:class:`MultiheadGraphAttention` wherever a model calls ``self_attn(q, k, v, ...)``)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops
from ..ops.linear import FeatureMap, check_chunk, get_feature_map
from ._base import capturing, record_attention
from .multihead import TorchAttentionBase


class LinearAttention(TorchAttentionBase):
    r"""Multi-head kernelised linear attention (Katharopoulos et al., 2020).

    .. math::
        \mathrm{head}_h(i) = \frac{\phi(q_i)^\top \sum_{j} \phi(k_j) v_j^\top}{\phi(q_i)^\top \sum_j \phi(k_j)}

    over all keys, or keys ``j <= i`` with ``is_causal=True``; ``O(L)`` time and memory
    instead of softmax attention's ``O(L^2)`` (complete graph) or ``O(L w)`` (band).
    ``torch.nn.MultiheadAttention``'s parameter names and forward signature, so weights
    copy across (``from_torch``) and layers can swap one for the other as ``self_attn``;
    its constructor takes the arguments it implements (``embed_dim``, ``num_heads``,
    ``bias``, ``kdim``, ``vdim``, ``batch_first``, ``device``, ``dtype``) plus
    ``feature_map`` (``"elu"``: ``elu(x) + 1``, ``"relu"``, or a callable) and ``chunk``
    (the causal form's block length). There is no attention dropout (no weights to drop),
    no ``add_bias_kv`` / ``add_zero_attn`` and no ``pattern``.

    Not supported at call time (clear errors): ``attn_mask`` (only ``is_causal``) and
    float key padding masks. ``need_weights=True`` returns the implied weights (quadratic,
    for inspection).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool = True,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        feature_map: FeatureMap = "elu",
        chunk: int = 64,
    ) -> None:
        super().__init__(embed_dim, num_heads, bias, kdim, vdim, batch_first, device, dtype)
        get_feature_map(feature_map)  # validate now, not at the first forward
        self.feature_map = feature_map
        self.chunk = check_chunk(chunk)
        self._reset_parameters()

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, pattern=None, feature_map: FeatureMap = "elu"):
        """A LinearAttention with the projections of ``mha`` (its attention dropout has no
        counterpart and is dropped; ``add_bias_kv`` / ``add_zero_attn`` have none either and
        are an error)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"expected torch.nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("LinearAttention has no counterpart of add_bias_kv or add_zero_attn")
        if pattern is not None:
            raise ValueError(
                "LinearAttention has no pattern: it attends to all keys (or all earlier ones with is_causal=True)"
            )
        p = next(mha.parameters())
        layer = cls(
            mha.embed_dim,
            mha.num_heads,
            bias=mha.in_proj_bias is not None,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device=p.device,
            dtype=p.dtype,
            feature_map=feature_map,
        )
        return layer._copy_from_torch(mha)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        if attn_mask is not None:
            raise ValueError(
                "LinearAttention takes no attn_mask (it has no per-pair scores to mask); "
                "use is_causal=True for causal attention"
            )
        unbatched, query, key, value, key_padding_mask = self._batch_first(query, key, value, key_padding_mask)
        N, Lq, _ = query.shape
        H, D = self.num_heads, self.head_dim
        q, k, v = self._projections(query, key, value)

        def heads(t: Tensor) -> Tensor:
            return t.reshape(N, t.size(1), H, D).transpose(1, 2)

        want = need_weights or capturing()
        res = ops.linear_attention(
            heads(q),
            heads(k),
            heads(v),
            causal=is_causal,
            key_padding_mask=key_padding_mask,
            feature_map=self.feature_map,
            chunk=self.chunk,
            return_weights=want,
        )
        out, weights = res if want else (res, None)
        if weights is not None and capturing():
            self._record(weights, is_causal)
        if not need_weights:
            weights = None
        out = self.out_proj(out.transpose(1, 2).reshape(N, Lq, self.embed_dim))
        return self._caller_layout(out, weights, unbatched, average_attn_weights)

    def _record(self, weights: Tensor, is_causal: bool) -> None:
        """The implied dense weights as an edge list (every allowed query/key pair)."""
        N, H, L, S = weights.shape
        allowed = torch.ones(L, S, dtype=torch.bool, device=weights.device)
        if is_causal:
            allowed = allowed.tril()
        i, j = allowed.nonzero(as_tuple=True)
        b = torch.arange(N, device=weights.device).repeat_interleave(i.numel())
        ii, jj = i.repeat(N), j.repeat(N)
        edge_index = torch.stack([b * S + jj, b * L + ii])
        record_attention(self, edge_index, weights[b, :, ii, jj], N * S, N * L, (N, L, S))
