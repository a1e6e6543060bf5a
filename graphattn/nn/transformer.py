"""Transformer encoder / decoder layers on :class:`MultiheadGraphAttention`.

Arguments, parameter names and forward signatures are those of
``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer`` (so ``from_torch``
copies weights), plus ``pattern`` / ``cross_pattern`` to make the attention sparse.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn

from .multihead import MultiheadGraphAttention, PatternLike

Activation = Union[str, Callable[[Tensor], Tensor]]


def _activation(act: Activation) -> Callable[[Tensor], Tensor]:
    if callable(act):
        return act
    if act == "relu":
        return F.relu
    if act == "gelu":
        return F.gelu
    raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got {act!r}")


class GraphTransformerEncoderLayer(nn.Module):
    r"""Self-attention + feed-forward, post-norm (default) or pre-norm (``norm_first``).

    .. math::
        x \leftarrow \mathrm{Norm}(x + \mathrm{SelfAttn}(x)),\quad
        x \leftarrow \mathrm{Norm}(x + W_2\,\sigma(W_1 x))

    ``pattern`` restricts which tokens attend to which (see :class:`MultiheadGraphAttention`).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
        pattern: PatternLike = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadGraphAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, pattern=pattern, **fk
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **fk)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **fk)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _activation(activation)

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(
            x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False, is_causal=is_causal
        )[0]
        return self.dropout1(x)

    def _ff_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(
        self,
        src: Tensor,
        src_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
        is_causal: bool = False,
    ) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer, pattern: PatternLike = None):
        """A copy of a ``torch.nn.TransformerEncoderLayer`` (arguments and weights)."""
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(f"expected torch.nn.TransformerEncoderLayer, got {type(layer).__name__}")
        sa = layer.self_attn
        p = next(layer.parameters())
        ours = cls(
            sa.embed_dim,
            sa.num_heads,
            layer.linear1.out_features,
            layer.dropout.p,
            layer.activation,
            layer.norm1.eps,
            sa.batch_first,
            layer.norm_first,
            layer.linear1.bias is not None,
            device=p.device,
            dtype=p.dtype,
            pattern=pattern,
        )
        ours.load_state_dict(layer.state_dict())
        return ours.train(layer.training)


class GraphTransformerDecoderLayer(nn.Module):
    r"""Self-attention, cross-attention over ``memory``, feed-forward; post- or pre-norm.

    ``pattern`` applies to the self-attention (e.g. causal, sliding window),
    ``cross_pattern`` to the cross-attention (default: every target token sees all of memory).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
        pattern: PatternLike = None,
        cross_pattern: PatternLike = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadGraphAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, pattern=pattern, **fk
        )
        self.multihead_attn = MultiheadGraphAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, pattern=cross_pattern, **fk
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **fk)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **fk)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **fk)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _activation(activation)

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(
            x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False, is_causal=is_causal
        )[0]
        return self.dropout1(x)

    def _mha_block(self, x, mem, attn_mask, key_padding_mask, is_causal):
        x = self.multihead_attn(
            x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False, is_causal=is_causal
        )[0]
        return self.dropout2(x)

    def _ff_block(self, x):
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        tgt_key_padding_mask: Optional[Tensor] = None,
        memory_key_padding_mask: Optional[Tensor] = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        x = tgt
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal)
            x = x + self._ff_block(self.norm3(x))
        else:
            x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = self.norm2(x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
            x = self.norm3(x + self._ff_block(x))
        return x

    @classmethod
    def from_torch(
        cls, layer: nn.TransformerDecoderLayer, pattern: PatternLike = None, cross_pattern: PatternLike = None
    ):
        """A copy of a ``torch.nn.TransformerDecoderLayer`` (arguments and weights)."""
        if not isinstance(layer, nn.TransformerDecoderLayer):
            raise TypeError(f"expected torch.nn.TransformerDecoderLayer, got {type(layer).__name__}")
        sa = layer.self_attn
        p = next(layer.parameters())
        ours = cls(
            sa.embed_dim,
            sa.num_heads,
            layer.linear1.out_features,
            layer.dropout.p,
            layer.activation,
            layer.norm1.eps,
            sa.batch_first,
            layer.norm_first,
            layer.linear1.bias is not None,
            device=p.device,
            dtype=p.dtype,
            pattern=pattern,
            cross_pattern=cross_pattern,
        )
        ours.load_state_dict(layer.state_dict())
        return ours.train(layer.training)
