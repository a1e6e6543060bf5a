"""Small reference models built from graphattn layers (the GAT paper's architecture)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import DotProductConv, GATConv, GATv2Conv

__all__ = ["NodeClassifier", "MODELS", "fit_node_classifier"]

MODELS = ("gat", "gatv2", "dot")


def make_conv(kind: str, in_channels: int, out_channels: int, heads: int, concat: bool, dropout: float,
              prune_threshold: Optional[float] = None) -> nn.Module:
    kw = dict(heads=heads, concat=concat, dropout=dropout, prune_threshold=prune_threshold)
    if kind == "gat":
        return GATConv(in_channels, out_channels, **kw)
    if kind == "gatv2":
        return GATv2Conv(in_channels, out_channels, **kw)
    if kind == "dot":
        return DotProductConv(in_channels, out_channels, **kw)
    raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(MODELS)}")


class NodeClassifier(nn.Module):
    """Two attention layers with ELU between and dropout on inputs and attention
    (Veličković et al., 2018): ``heads x hidden`` concatenated, then ``out_heads``
    averaged output heads. ``prune_threshold`` turns on the layers' similarity-pruning
    defence (see :class:`graphattn.nn.GATConv`)."""

    def __init__(
        self,
        kind: str,
        in_channels: int,
        num_classes: int,
        hidden: int = 8,
        heads: int = 8,
        out_heads: int = 1,
        dropout: float = 0.6,
        prune_threshold: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.dropout = dropout
        self.conv1 = make_conv(kind, in_channels, hidden, heads, True, dropout, prune_threshold)
        self.conv2 = make_conv(kind, hidden * heads, num_classes, out_heads, False, dropout, prune_threshold)

    def forward(self, x: Tensor, edge_index, edge_attr: Optional[Tensor] = None) -> Tensor:
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for conv in (self.conv1, self.conv2):
            conv.reset_parameters()


def fit_node_classifier(model: nn.Module, data, epochs: int = 300, patience: int = 100, lr: float = 0.005,
                        weight_decay: float = 5e-4, graph=None, progress: bool = False) -> dict:
    """Full-batch training on ``data.train_mask`` with early stopping on validation
    accuracy (ties broken by loss); the model ends with its best-validation weights.
    Returns ``{"epoch", "val_acc", "test_acc"}`` of that model."""
    from tqdm import tqdm

    graph = data.edge_index if graph is None else graph
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, bad = None, None, 0
    for epoch in tqdm(range(epochs), disable=not progress, leave=False, desc="train"):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(data.x, graph)[data.train_mask], data.y[data.train_mask]).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            out = model(data.x, graph)
        val_loss = float(F.cross_entropy(out[data.val_mask], data.y[data.val_mask]))
        pred = out.argmax(-1)
        val_acc = float((pred[data.val_mask] == data.y[data.val_mask]).float().mean())
        if best is None or (val_acc, -val_loss) > (best["val_acc"], -best["val_loss"]):
            test_acc = float((pred[data.test_mask] == data.y[data.test_mask]).float().mean())
            best = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "test_acc": test_acc}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bad = 0
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return best
