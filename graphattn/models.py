"""Small reference models built from graphattn layers (the GAT paper's architecture)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import DotProductConv, GATConv, GATv2Conv

__all__ = ["NodeClassifier", "MODELS"]

MODELS = ("gat", "gatv2", "dot")


def make_conv(kind: str, in_channels: int, out_channels: int, heads: int, concat: bool, dropout: float) -> nn.Module:
    if kind == "gat":
        return GATConv(in_channels, out_channels, heads=heads, concat=concat, dropout=dropout)
    if kind == "gatv2":
        return GATv2Conv(in_channels, out_channels, heads=heads, concat=concat, dropout=dropout)
    if kind == "dot":
        return DotProductConv(in_channels, out_channels, heads=heads, concat=concat, dropout=dropout)
    raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(MODELS)}")


class NodeClassifier(nn.Module):
    """Two attention layers with ELU between and dropout on inputs and attention
    (Veličković et al., 2018): ``heads x hidden`` concatenated, then ``out_heads``
    averaged output heads."""

    def __init__(
        self,
        kind: str,
        in_channels: int,
        num_classes: int,
        hidden: int = 8,
        heads: int = 8,
        out_heads: int = 1,
        dropout: float = 0.6,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.dropout = dropout
        self.conv1 = make_conv(kind, in_channels, hidden, heads, True, dropout)
        self.conv2 = make_conv(kind, hidden * heads, num_classes, out_heads, False, dropout)

    def forward(self, x: Tensor, edge_index, edge_attr: Optional[Tensor] = None) -> Tensor:
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for conv in (self.conv1, self.conv2):
            conv.reset_parameters()
