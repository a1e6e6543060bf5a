"""Small reference models built from graphattn layers (the GAT paper's architecture)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import global_add_pool, global_mean_pool

from ..nn import DotProductConv, GATConv, GATv2Conv, GPSConv, TransformerConv

__all__ = [
    "NodeClassifier",
    "DeepNodeClassifier",
    "LinkPredictor",
    "GraphPredictor",
    "MODELS",
    "DECODERS",
    "GRAPH_MODELS",
    "POOLS",
    "NODE_METRICS",
    "EarlyStopping",
    "node_metric",
    "evaluate_node_classifier",
    "node_classifier_step",
    "fit_node_classifier",
]

MODELS = ("gat", "gatv2", "dot")
DECODERS = ("dot", "mlp")
GRAPH_MODELS = ("gat", "gatv2", "transformer", "gps")
POOLS = ("mean", "add")


def make_conv(
    kind: str,
    in_channels: int,
    out_channels: int,
    heads: int,
    concat: bool,
    dropout: float,
    prune_threshold: Optional[float] = None,
) -> nn.Module:
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


class DeepNodeClassifier(nn.Module):
    """A deeper attention network for large graphs (OGB's GAT baselines): ``layers``
    attention layers, each with a linear skip of its input, batch norm, ReLU and
    dropout between; dropout on the input features and on attention; the last layer
    averages its heads into class logits."""

    def __init__(
        self,
        kind: str,
        in_channels: int,
        num_classes: int,
        hidden: int = 250,
        heads: int = 3,
        layers: int = 3,
        dropout: float = 0.75,
        input_dropout: float = 0.1,
        attn_dropout: float = 0.05,
        norm: bool = True,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.dropout, self.input_dropout = dropout, input_dropout
        dims = [in_channels] + [hidden * heads] * (layers - 1)
        self.convs = nn.ModuleList()
        self.skips = nn.ModuleList()
        for i, d in enumerate(dims):
            last = i == layers - 1
            self.convs.append(make_conv(kind, d, num_classes if last else hidden, heads, not last, attn_dropout))
            self.skips.append(nn.Linear(d, num_classes if last else hidden * heads, bias=False))
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden * heads) if norm else nn.Identity() for _ in range(layers - 1))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in (*self.convs, *self.skips, *self.norms):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, x: Tensor, edge_index) -> Tensor:
        h = F.dropout(x, p=self.input_dropout, training=self.training)
        for i, (conv, skip) in enumerate(zip(self.convs, self.skips)):
            out = conv(h, edge_index) + skip(h)
            if i < len(self.norms):
                out = F.dropout(F.relu(self.norms[i](out)), p=self.dropout, training=self.training)
            h = out
        return h


class EarlyStopping:
    """The GAT paper's early-stopping rule, the one every example uses.

    Patience resets whenever validation accuracy *or* validation loss is at least
    as good as the best seen; the epoch kept (``best``) is the last one where
    *both* were. ``step`` returns True at such an epoch, so the caller can take a
    snapshot of the model there. Its plain state travels in checkpoints
    (``state_dict`` / ``load_state_dict``), so a resumed run stops where an
    uninterrupted one would.
    """

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.best_acc, self.best_loss = -float("inf"), float("inf")
        self.bad_epochs = 0
        self.best: Optional[dict] = None

    def step(self, epoch: int, val_acc: float, val_loss: float, **record) -> bool:
        """Record one validation result (``record``: anything to keep with it,
        e.g. the test accuracy); True when this epoch becomes ``best``."""
        acc_ok, loss_ok = val_acc >= self.best_acc, val_loss <= self.best_loss
        if acc_ok or loss_ok:
            self.best_acc, self.best_loss = max(self.best_acc, val_acc), min(self.best_loss, val_loss)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if acc_ok and loss_ok:
            self.best = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, **record}
        return acc_ok and loss_ok

    @property
    def stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {
            "patience": self.patience,
            "best_acc": self.best_acc,
            "best_loss": self.best_loss,
            "bad_epochs": self.bad_epochs,
            "best": self.best,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("patience", "best_acc", "best_loss", "bad_epochs", "best"):
            setattr(self, key, state[key])


NODE_METRICS = ("accuracy", "rocauc")


def node_metric(out: Tensor, y: Tensor, metric: str = "accuracy") -> float:
    """``"accuracy"`` of the argmax, or ``"rocauc"`` of class 1 against class 0 (two classes:
    the logit difference ranks nodes, ties counted one half; :func:`metrics.roc_auc`)."""
    if metric == "accuracy":
        return float((out.argmax(dim=-1) == y).float().mean())
    if metric == "rocauc":
        if out.size(-1) != 2:
            raise ValueError(f"rocauc needs two classes, got {out.size(-1)}")
        from .metrics import roc_auc

        score = out[:, 1] - out[:, 0]
        return roc_auc(score[y == 1], score[y == 0])
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(NODE_METRICS)}")


@torch.no_grad()
def evaluate_node_classifier(model: nn.Module, data, graph, metric: str = "accuracy") -> dict:
    """Accuracy, cross-entropy and ``metric`` (as ``<split>_score``) of ``model`` on the
    train, val and test masks (eval mode)."""
    model.eval()
    out = model(data.x, graph)
    result = {}
    for split in ("train", "val", "test"):
        mask = getattr(data, f"{split}_mask")
        result[f"{split}_acc"] = node_metric(out[mask], data.y[mask], "accuracy")
        result[f"{split}_score"] = (
            result[f"{split}_acc"] if metric == "accuracy" else node_metric(out[mask], data.y[mask], metric)
        )
        result[f"{split}_loss"] = float(F.cross_entropy(out[mask], data.y[mask]))
    return result


def node_classifier_step(model: nn.Module, data, graph, opt: torch.optim.Optimizer) -> float:
    """One full-batch training step on ``data.train_mask``; returns the loss."""
    model.train()
    opt.zero_grad()
    loss = F.cross_entropy(model(data.x, graph)[data.train_mask], data.y[data.train_mask])
    loss.backward()
    opt.step()
    return loss.item()


def fit_node_classifier(
    model: nn.Module,
    data,
    epochs: int = 300,
    patience: int = 100,
    lr: float = 0.005,
    weight_decay: float = 5e-4,
    graph=None,
    progress: bool = False,
) -> dict:
    """Full-batch training on ``data.train_mask`` with :class:`EarlyStopping`; the
    model ends with the weights of the epoch that rule keeps. Returns that epoch's
    ``{"epoch", "val_acc", "val_loss", "test_acc"}``."""
    from tqdm import tqdm

    graph = data.edge_index if graph is None else graph
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    stopper, best_state = EarlyStopping(patience), None
    for epoch in tqdm(range(epochs), disable=not progress, leave=False, desc="train"):
        node_classifier_step(model, data, graph, opt)
        ev = evaluate_node_classifier(model, data, graph)
        if stopper.step(epoch, ev["val_acc"], ev["val_loss"], test_acc=ev["test_acc"]):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if stopper.stop:
            break
    model.load_state_dict(best_state)
    model.eval()
    return stopper.best


class LinkPredictor(nn.Module):
    """Graph autoencoder for link prediction: ``layers`` attention layers (heads
    concatenated, ReLU and dropout between) encode nodes, a decoder scores pairs.

    ``in_channels=None`` gives every node a learnable embedding instead of input
    features (for featureless graphs such as ogbl-ddi; ``num_nodes`` is then needed).
    ``residual=True`` adds a linear map of each node's own input to every layer, so
    a node keeps its identity beside its attended neighbourhood (GraphSAGE's root
    weight). Decoders: ``"dot"`` scores ``<z_i, z_j>``; ``"mlp"`` feeds ``z_i * z_j``
    through a 3-layer MLP of width ``decoder_hidden`` (default: the encoder's width;
    OGB's link-prediction baselines). Scores are logits.
    """

    def __init__(
        self,
        kind: str,
        in_channels: Optional[int],
        hidden: int = 64,
        heads: int = 1,
        layers: int = 2,
        dropout: float = 0.5,
        attn_dropout: float = 0.0,
        decoder: str = "dot",
        residual: bool = True,
        num_nodes: Optional[int] = None,
        decoder_hidden: Optional[int] = None,
    ) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        width = hidden * heads
        if in_channels is None:
            if num_nodes is None:
                raise ValueError("a featureless LinkPredictor (in_channels=None) needs num_nodes")
            self.embedding = nn.Embedding(num_nodes, width)
            in_channels = width
        else:
            self.embedding = None
        self.dropout = dropout
        dims = [in_channels] + [width] * (layers - 1)
        self.convs = nn.ModuleList(make_conv(kind, d, hidden, heads, True, attn_dropout) for d in dims)
        self.skips = nn.ModuleList(nn.Linear(d, width, bias=False) for d in dims) if residual else None
        self.decoder = decoder
        if decoder == "mlp":
            dh = decoder_hidden or width
            self.mlp = nn.Sequential(
                nn.Linear(width, dh),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(dh, dh),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(dh, 1),
            )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.embedding is not None:
            nn.init.xavier_uniform_(self.embedding.weight)
        for conv in self.convs:
            conv.reset_parameters()
        for skip in self.skips or ():
            skip.reset_parameters()
        if self.decoder == "mlp":
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    m.reset_parameters()

    def encode(self, x: Optional[Tensor], edge_index) -> Tensor:
        h = self.embedding.weight if self.embedding is not None else x
        for i, conv in enumerate(self.convs):
            out = conv(h, edge_index)
            h = out + self.skips[i](h) if self.skips is not None else out
            if i < len(self.convs) - 1:
                h = F.dropout(F.relu(h), p=self.dropout, training=self.training)
        return h

    def forward(self, x: Optional[Tensor], edge_index, *pairs: Tensor):
        """Encode, then score each ``[2, B]`` tensor of ``pairs``: a tuple of logits
        (going through ``forward`` lets ``DistributedDataParallel`` see the step)."""
        z = self.encode(x, edge_index)
        return tuple(self.decode(z, p) for p in pairs)

    def decode(self, z: Tensor, pairs: Tensor) -> Tensor:
        """Logits for ``pairs`` (``[2, B]``: source row, destination row)."""
        a, b = z[pairs[0]], z[pairs[1]]
        if self.decoder == "dot":
            return (a * b).sum(-1)
        return self.mlp(a * b).view(-1)


class GraphPredictor(nn.Module):
    """Graph-level prediction on molecules (OGB's ``ogbg-mol*``): ``num_tasks`` logits
    (or regression outputs) per graph.

    Integer atom and bond features are embedded with OGB's ``AtomEncoder`` and
    ``BondEncoder`` (one bond encoder per layer, as in OGB's baselines; the bond
    embedding enters each layer's attention as ``edge_attr``). ``pe_dim > 0`` adds a
    linear map of a positional encoding (``pe``, e.g. PyG's ``AddRandomWalkPE``) to the
    atom embedding.

    ``kind`` ``"gat"``, ``"gatv2"``, ``"transformer"``: ``layers`` graphattn attention
    layers with ``heads`` heads of ``hidden // heads`` channels concatenated, each
    followed by batch norm, ReLU, dropout and a residual connection. ``"gps"``:
    ``layers`` ``GPSConv`` layers (a graphattn ``GATConv`` as the local layer beside
    global multi-head attention within each graph; residuals and batch norm inside;
    ``attn_dropout`` applies to both attentions).
    Then ``pool`` (``"mean"`` or ``"add"``) over each graph's atoms and a two-layer MLP.
    """

    def __init__(
        self,
        kind: str,
        hidden: int = 64,
        layers: int = 4,
        heads: int = 4,
        num_tasks: int = 1,
        dropout: float = 0.2,
        attn_dropout: float = 0.0,
        pool: str = "mean",
        edge_features: bool = True,
        pe_dim: int = 0,
    ) -> None:
        super().__init__()
        try:
            from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
        except ImportError as e:
            raise ImportError("GraphPredictor embeds atoms with ogb's AtomEncoder: pip install 'graphattn[ogb]'") from e
        if kind not in GRAPH_MODELS:
            raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(GRAPH_MODELS)}")
        if pool not in POOLS:
            raise ValueError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLS)}")
        if layers < 1 or num_tasks < 1 or heads < 1:
            raise ValueError(f"layers, heads and num_tasks must be >= 1, got {layers}, {heads}, {num_tasks}")
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads}): heads are concatenated")
        self.kind, self.dropout, self.pool = kind, dropout, pool
        self.atom_encoder = AtomEncoder(hidden)
        self.pe_encoder = nn.Linear(pe_dim, hidden) if pe_dim > 0 else None
        self.bond_encoders = nn.ModuleList(BondEncoder(hidden) for _ in range(layers)) if edge_features else None
        edge_dim = hidden if edge_features else None
        self.convs = nn.ModuleList(
            self._make_layer(kind, hidden, heads, dropout, attn_dropout, edge_dim) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(layers)) if kind != "gps" else None
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_tasks)
        )

    @staticmethod
    def _make_layer(
        kind: str, hidden: int, heads: int, dropout: float, attn_dropout: float, edge_dim: Optional[int]
    ) -> nn.Module:
        per_head = hidden // heads
        if kind == "transformer":
            return TransformerConv(hidden, per_head, heads=heads, dropout=attn_dropout, edge_dim=edge_dim)
        local = (GATv2Conv if kind == "gatv2" else GATConv)(
            hidden, per_head, heads=heads, dropout=attn_dropout, edge_dim=edge_dim
        )
        if kind != "gps":
            return local
        return GPSConv(
            channels=hidden,
            conv=local,
            heads=heads,
            dropout=dropout,
            attn_type="multihead",
            norm="batch_norm",
            attn_kwargs={"dropout": attn_dropout},
        )

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        pe: Optional[Tensor] = None,
    ) -> Tensor:
        """``x`` ``[N, 9]`` and ``edge_attr`` ``[E, 3]`` integer features (OGB's), ``batch``
        the graph of each atom (PyG's ``Batch.batch``; None: one graph). Returns
        ``[num_graphs, num_tasks]``."""
        h = self.atom_encoder(x)
        if self.pe_encoder is not None:
            if pe is None:
                raise ValueError("this GraphPredictor was built with pe_dim > 0: pass pe (e.g. from AddRandomWalkPE)")
            h = h + self.pe_encoder(pe)
        for i, conv in enumerate(self.convs):
            kwargs = {} if self.bond_encoders is None else {"edge_attr": self.bond_encoders[i](edge_attr)}
            if self.kind == "gps":
                h = conv(h, edge_index, batch, **kwargs)
                continue
            out = F.relu(self.norms[i](conv(h, edge_index, **kwargs)))
            h = h + F.dropout(out, p=self.dropout, training=self.training)
        pooled = (global_mean_pool if self.pool == "mean" else global_add_pool)(h, batch)
        return self.head(pooled)
