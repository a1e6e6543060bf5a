"""PyG's linear global attentions (``torch_geometric.nn.attention``) on graphattn's
linear-attention engine (:func:`graphattn.ops.linear.linear_attention`): each is a
kernelised attention with its own feature map, so only the map and the projections
live here. Constructor arguments, parameter names, ``forward(x, mask)`` and repr are
PyG's; ``from_pyg`` copies a PyG module, weights and random features included.

PyG 2.8 has four: ``PerformerAttention`` (here, and ``GPSConv(attn_type="performer")``),
``PolynormerAttention`` and ``QFormer`` (softmax attention: graphattn's encoder layers) here;
``SGFormerAttention`` is not, because it does not fit the engine: its similarity
``1 + q.k`` over L2-normalised queries and keys is no positive feature map (its
normaliser can approach zero but for an added ``N``), and its numerator adds ``N`` times
each query's own value, a self term no kernel over the keys gives.

One difference, on purpose: a padded position (``mask`` False) is no key at all. PyG
zeroes padded values but keeps padded keys in the normaliser, so there a graph's
output depends on how far the batch pads it; here it is what the graph alone gives.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.linear import linear_attention
from ._base import FromPyG, PyGSpec, check_hyperparameters, check_positive_int, has

# FAVOR+'s features are at least ``_FAVOR_EPS`` (PyG's), so its normaliser is positive
# and PyG adds nothing to it; the engine's eps then only keeps a query without keys at 0.
_FAVOR_EPS = 1e-3
_NO_EPS = 1e-30


def _check_heads(channels: int, heads: int, head_channels: Optional[int]) -> int:
    check_positive_int("channels", channels)
    check_hyperparameters(heads=heads)
    if channels % heads:
        raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
    if head_channels is None:
        return channels // heads
    return check_positive_int("head_channels", head_channels)


def _key_padding(mask: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    """PyG's ``mask`` (``[B, N]``, True = a real node) as the engine's key padding mask."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != x.shape[:2]:
        raise ValueError(
            f"mask must be a bool tensor of shape {list(x.shape[:2])} (True = a real node), got "
            f"{getattr(mask, 'dtype', type(mask).__name__)} of shape {list(getattr(mask, 'shape', []))}"
        )
    return ~mask


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be [batch, nodes, channels], got shape {list(getattr(x, 'shape', []))}")


def orthogonal_matrix(num_rows: int, num_cols: int) -> Tensor:
    """``num_rows`` random orthonormal rows of length ``num_cols``, in blocks of
    ``num_cols`` (FAVOR+'s projection; PyG's draw, from the global generator)."""

    def block() -> Tensor:
        return torch.linalg.qr(torch.randn(num_cols, num_cols), mode="reduced")[0].t()

    blocks = [block() for _ in range(num_rows // num_cols)]
    if num_rows % num_cols:
        blocks.append(block()[: num_rows % num_cols])
    return torch.cat(blocks)


class PerformerProjection(nn.Module):
    """FAVOR+'s random feature map ``phi(x) = kernel(x P^T) + 0.001`` with ``P`` the
    ``[num_cols * ln(num_cols), num_cols]`` orthogonal buffer ``projection_matrix``."""

    def __init__(self, num_cols: int, kernel: Callable[[Tensor], Tensor] = nn.ReLU()) -> None:
        super().__init__()
        if kernel is None:
            raise ValueError("kernel must be a callable (e.g. torch.nn.ReLU()), got None")
        self.num_cols, self.num_rows = num_cols, int(num_cols * math.log(num_cols))
        if self.num_rows < 1:
            raise ValueError(
                f"head_channels must be at least 2 (FAVOR+ draws head_channels * ln(head_channels) "
                f"features), got {num_cols}"
            )
        self.register_buffer("projection_matrix", orthogonal_matrix(self.num_rows, self.num_cols))
        self.kernel = kernel

    def features(self, x: Tensor) -> Tensor:
        return self.kernel(x @ self.projection_matrix.t().to(x.dtype)) + _FAVOR_EPS

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """``(B, H, N, D)`` queries and keys, ``(B, H, N, C)`` values."""
        return linear_attention(q, k, v, key_padding_mask=key_padding_mask, feature_map=self.features, eps=_NO_EPS)


class PerformerAttention(FromPyG, nn.Module):
    r"""Performer's linear attention (FAVOR+, "Rethinking Attention with Performers",
    Choromanski et al., 2021) with PyG ``PerformerAttention``'s arguments and
    parameters: queries, keys and values projected to ``heads * head_channels``, the
    attention ``phi(Q) (phi(K)^T V)`` normalised by ``phi(Q) phi(K)^T 1`` (random
    orthogonal features ``phi``) and an output projection. ``forward(x, mask)`` takes
    PyG's dense batch ``[B, N, channels]`` and ``[B, N]`` bool mask. :meth:`from_pyg`
    copies PyG's, random projection included.
    """

    pyg_spec = PyGSpec(
        "torch_geometric.nn.attention.PerformerAttention",
        {
            "channels": "q.in_features",
            "heads": "heads",
            "head_channels": "head_channels",
            "kernel": "kernel",
            "qkv_bias": has("q.bias"),
            "attn_out_bias": has("attn_out.bias"),
            "dropout": "dropout.p",
        },
    )

    def __init__(
        self,
        channels: int,
        heads: int,
        head_channels: Optional[int] = 64,
        kernel: Callable[[Tensor], Tensor] = nn.ReLU(),
        qkv_bias: bool = False,
        attn_out_bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        head_channels = _check_heads(channels, heads, head_channels)
        check_hyperparameters(dropout=dropout)
        self.heads, self.head_channels, self.kernel = heads, head_channels, kernel
        self.fast_attn = PerformerProjection(head_channels, kernel)  # drawn first, as PyG does
        inner = heads * head_channels
        self.q, self.k, self.v = (nn.Linear(channels, inner, bias=qkv_bias) for _ in range(3))
        self.attn_out = nn.Linear(inner, channels, bias=attn_out_bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        _check_x(x)
        B, N = x.shape[:2]

        def heads(t: Tensor) -> Tensor:
            return t.reshape(B, N, self.heads, self.head_channels).transpose(1, 2)

        out = self.fast_attn(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), _key_padding(mask, x))
        return self.dropout(self.attn_out(out.transpose(1, 2).reshape(B, N, -1)))

    @torch.no_grad()
    def redraw_projection_matrix(self) -> None:
        """Draw new random features (the paper redraws them now and then in training)."""
        fresh = orthogonal_matrix(self.fast_attn.num_rows, self.fast_attn.num_cols)
        self.fast_attn.projection_matrix.copy_(fresh)

    def _reset_parameters(self) -> None:
        for lin in (self.q, self.k, self.v, self.attn_out):
            lin.reset_parameters()
        self.redraw_projection_matrix()

    reset_parameters = _reset_parameters

    def __repr__(self) -> str:  # PyG's, missing comma included
        return f"{type(self).__name__}(heads={self.heads}, head_channels={self.head_channels} kernel={self.kernel})"


class PolynormerAttention(FromPyG, nn.Module):
    r"""Polynormer's global attention ("Polynormer: Polynomial-Expressive Graph
    Transformer in Linear Time", Deng et al., 2024) with PyG
    ``PolynormerAttention``'s arguments, parameters and repr: linear attention with
    sigmoid features (shared by queries and keys when ``qk_shared``), then
    ``relu(lin_out(LayerNorm(attention) * (h_lins(x) + beta)))``. Heads are laid out
    as PyG lays them (channel-major: ``[..., head_channels, heads]``), so weights
    interchange.
    """

    pyg_spec = PyGSpec(
        "torch_geometric.nn.attention.PolynormerAttention",
        {
            "channels": "h_lins.in_features",
            "heads": "heads",
            "head_channels": "head_channels",
            "beta": "beta",
            "qkv_bias": has("k.bias"),
            "qk_shared": "qk_shared",
            "dropout": "dropout.p",
        },
    )

    def __init__(
        self,
        channels: int,
        heads: int,
        head_channels: int = 64,
        beta: float = 0.9,
        qkv_bias: bool = False,
        qk_shared: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        check_hyperparameters(heads=heads, dropout=dropout)
        self.head_channels, self.heads = check_positive_int("head_channels", head_channels), heads
        self.beta, self.qk_shared = beta, qk_shared
        inner = heads * head_channels
        self.h_lins = nn.Linear(channels, inner)
        if not qk_shared:
            self.q = nn.Linear(channels, inner, bias=qkv_bias)
        self.k = nn.Linear(channels, inner, bias=qkv_bias)
        self.v = nn.Linear(channels, inner, bias=qkv_bias)
        self.lns = nn.LayerNorm(inner)
        self.lin_out = nn.Linear(inner, inner)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        _check_x(x)
        B, N = x.shape[:2]

        def heads(t: Tensor) -> Tensor:  # [B, N, D * H] channel-major -> [B, H, N, D]
            return t.view(B, N, -1, self.heads).permute(0, 3, 1, 2)

        k = heads(self.k(x))
        q = k if self.qk_shared else heads(self.q(x))
        out = linear_attention(
            q, k, heads(self.v(x)), key_padding_mask=_key_padding(mask, x), feature_map=torch.sigmoid, eps=1e-6
        )
        out = out.permute(0, 2, 3, 1).reshape(B, N, -1)
        return self.dropout(F.relu(self.lin_out(self.lns(out) * (self.h_lins(x) + self.beta))))

    def reset_parameters(self) -> None:
        for module in (self.h_lins, getattr(self, "q", None), self.k, self.v, self.lns, self.lin_out):
            if module is not None:
                module.reset_parameters()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(heads={self.heads}, head_channels={self.head_channels})"


class _Encoder(nn.Module):
    """``torch.nn.TransformerEncoder``'s ``layers`` on graphattn's encoder layer (same keys)."""

    def __init__(self, layers) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class QFormer(FromPyG, nn.Module):
    """PyG's simplified Q-Former (BLIP-2): LayerNorm, ``num_layers`` transformer encoder
    layers (softmax attention through :class:`MultiheadGraphAttention`, complete over each
    sequence) and a projection, with PyG ``QFormer``'s arguments, parameters and repr."""

    pyg_spec = PyGSpec(
        "torch_geometric.nn.attention.QFormer",
        {
            "input_dim": "encoder_layer.self_attn.embed_dim",
            "hidden_dim": "encoder_layer.linear1.out_features",
            "output_dim": "project.out_features",
            "num_heads": "num_heads",
            "num_layers": "num_layers",
            "dropout": "encoder_layer.dropout.p",
            "activation": "encoder_layer.activation",
        },
    )

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_heads: int,
        num_layers: int,
        dropout: float = 0.0,
        activation: Callable[[Tensor], Tensor] = nn.ReLU(),
    ) -> None:
        super().__init__()
        from .transformer import GraphTransformerEncoderLayer

        for name, value in (
            ("input_dim", input_dim),
            ("hidden_dim", hidden_dim),
            ("output_dim", output_dim),
            ("num_layers", num_layers),
        ):
            check_positive_int(name, value)
        self.num_layers, self.num_heads = num_layers, num_heads
        self.layer_norm = nn.LayerNorm(input_dim)
        self.encoder_layer = GraphTransformerEncoderLayer(
            input_dim, num_heads, hidden_dim, dropout, activation, batch_first=True
        )
        self.encoder = _Encoder(copy.deepcopy(self.encoder_layer) for _ in range(num_layers))
        self.project = nn.Linear(input_dim, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[batch, length, input_dim]``."""
        return self.project(self.encoder(self.layer_norm(x)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_heads={self.num_heads}, num_layers={self.num_layers})"
