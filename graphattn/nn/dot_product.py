"""Scaled dot-product graph attention: PyG's ``TransformerConv``, under its name and arguments."""

from __future__ import annotations

import math
from functools import partial
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import ops
from ._base import GraphLayer, GraphLike, PyGSpec, has, make_linear, reset_linear, split_pair


class TransformerConv(GraphLayer):
    r"""Transformer attention over a graph (Shi et al., 2021), PyG's ``TransformerConv``
    on graphattn's ops.

    .. math::
        \mathbf{x}'_i = \mathbf{W}_1 \mathbf{x}_i + \sum_{j \in \mathcal{N}(i)}
        \alpha_{i,j} \left(\mathbf{W}_2 \mathbf{x}_j + \mathbf{W}_6 \mathbf{e}_{ij}\right),\qquad
        \alpha_{i,j} = \operatorname{softmax}_i\!\left(
        \frac{(\mathbf{W}_3\mathbf{x}_i)^{\top}
        (\mathbf{W}_4\mathbf{x}_j + \mathbf{W}_6 \mathbf{e}_{ij})}{\sqrt{d}}\right)

    With ``beta=True`` the skip connection is gated:
    :math:`\mathbf{x}'_i = \beta_i \mathbf{W}_1 \mathbf{x}_i + (1-\beta_i)\,\mathbf{m}_i`,
    :math:`\beta_i = \sigma(\mathbf{w}_5^\top [\mathbf{W}_1\mathbf{x}_i, \mathbf{m}_i,
    \mathbf{W}_1\mathbf{x}_i - \mathbf{m}_i])`.

    Args:
        in_channels: input size, ``-1`` for lazy, or ``(in_src, in_dst)``.
        out_channels: size per head ``d``.
        heads, concat, dropout, edge_dim, bias: as in PyG.
        beta: gate the skip connection (needs ``root_weight``).
        root_weight: add the skip connection :math:`\mathbf{W}_1 \mathbf{x}_i`.
        prune_threshold: defence option (not in PyG): drop edges whose endpoints' input
            features have cosine similarity below this before attending (self-loops kept).

    No self-loops are added (as in PyG). Parameter names are PyG's; :meth:`from_pyg`
    copies a ``TransformerConv``. ``DotProductConv`` is the same class under the name
    that says what it computes.

    Forward: ``forward(x, edge_index, edge_attr=None, return_attention_weights=None, *,
    size=None)``, graph inputs as :class:`GATConv`'s.
    """

    pyg_spec = PyGSpec(
        "torch_geometric.nn.TransformerConv",
        {
            **{
                arg: arg
                for arg in (
                    "in_channels",
                    "out_channels",
                    "heads",
                    "concat",
                    "beta",
                    "dropout",
                    "edge_dim",
                    "root_weight",
                )
            },
            "bias": has("lin_key.bias"),
        },
    )

    def __init__(
        self,
        in_channels,
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        beta: bool = False,
        dropout: float = 0.0,
        edge_dim: Optional[int] = None,
        bias: bool = True,
        root_weight: bool = True,
        prune_threshold: Optional[float] = None,
    ) -> None:
        super().__init__(prune_threshold, out_channels=out_channels, heads=heads, dropout=dropout, edge_dim=edge_dim)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.beta = beta and root_weight
        self.root_weight = root_weight
        self.concat = concat
        self.dropout = dropout
        self.edge_dim = edge_dim
        HC = heads * out_channels
        in_src, in_dst = (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        self.lin_key = make_linear(in_src, HC, bias=bias)
        self.lin_query = make_linear(in_dst, HC, bias=bias)
        self.lin_value = make_linear(in_src, HC, bias=bias)
        self.lin_edge = make_linear(edge_dim, HC, bias=False) if edge_dim is not None else None
        skip_out = HC if concat else out_channels
        self.lin_skip = make_linear(in_dst, skip_out, bias=bias)
        self.lin_beta = make_linear(3 * skip_out, 1, bias=False) if self.beta else None

    def has_edge_features(self) -> bool:
        """Built with ``edge_dim``: edges add ``lin_edge(e)`` to keys and values."""
        return self.lin_edge is not None

    def reset_parameters(self) -> None:
        for lin in (self.lin_key, self.lin_query, self.lin_value, self.lin_edge, self.lin_skip, self.lin_beta):
            if lin is not None:
                reset_linear(lin, glorot=False)

    def forward(
        self,
        x,
        edge_index: GraphLike,
        edge_attr: Optional[Tensor] = None,
        return_attention_weights: Optional[bool] = None,
        *,
        size: Optional[Tuple[int, int]] = None,
    ):
        H, C = self.heads, self.out_channels
        x_src, x_dst, _ = split_pair(x)
        if x_dst is None:
            raise ValueError("TransformerConv needs destination features: pass (x_src, x_dst) with x_dst not None")
        query = self.lin_query(x_dst).view(-1, H, C)
        key = self.lin_key(x_src).view(-1, H, C)
        value = self.lin_value(x_src).view(-1, H, C)
        graph, edge_attr, adjacency = self.prepare_graph(
            x_src, x_dst, edge_index, edge_attr, size, add_self_loops=False
        )
        edge = None if edge_attr is None else self.lin_edge(edge_attr.to(key.dtype)).view(-1, H, C)
        op = partial(
            ops.dot_product_attention,
            query,
            key,
            value,
            graph,
            scale=1.0 / math.sqrt(C),
            edge_key=edge,
            edge_value=edge,
            dropout=self.dropout,
            training=self.training,
        )
        out, weights = self.attend(op, graph, adjacency, return_attention_weights, value=value, edge_value=edge)
        out = out.reshape(-1, H * C) if self.concat else out.mean(dim=1)
        if self.root_weight:
            x_r = self.lin_skip(x_dst)
            if self.lin_beta is not None:
                beta = self.lin_beta(torch.cat([out, x_r, out - x_r], dim=-1)).sigmoid()
                out = beta * x_r + (1 - beta) * out
            else:
                out = out + x_r
        return self.with_weights(out, weights)


DotProductConv = TransformerConv  # the descriptive name: one class, two names
