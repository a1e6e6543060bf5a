"""Look at attention: capture the weights of every graphattn layer in a model, summarise
them, plot them, export them.

>>> with explain.capture(model) as cap:
...     model(x, edge_index)
>>> att = cap["conv1"]                 # or cap.records[0]
>>> att.weights.shape                  # [E, H]: normalised, before dropout, caller's edge order
>>> explain.entropy(att)               # per destination and head, with the uniform baseline
>>> explain.rollout(cap.records)       # attention flow through the stacked layers
>>> att.to_networkx(); att.to_csv("conv1.csv")

Capture needs no change to the model: while the context is open, every graphattn
layer (GATConv, GATv2Conv, DotProductConv, AGNNConv, MultiheadGraphAttention,
LinearAttention) run in the same thread computes its weights even when not asked to
(so the dense fast path for sequences is skipped) and hands them over detached.

Scope: attention hooks, and so captures, are per thread. A capture (or a hook from
:func:`register_attention_hook`) sees the layer calls made by the thread that opened
it, and only those; layers run meanwhile in other threads neither record anything nor
compute weights they were not asked for. Two threads may capture at once, each its own
calls; a model run in a worker thread is captured by opening the capture in that
thread. ``capture(model)`` keeps, of this thread's calls, those of ``model``'s modules.
(PyG's per-module ``register_message_forward_hook`` is PyG's, and per module.)
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .nn._base import register_attention_hook

__all__ = [
    "AttentionRecord",
    "capture",
    "register_attention_hook",
    "entropy",
    "head_agreement",
    "rollout",
    "top_k",
    "plot_sequence_heatmap",
    "plot_neighbourhood",
    "plot_entropy_histograms",
]


@dataclass
class AttentionRecord:
    """The weights of one layer call.

    ``edge_index`` ``[2, E]`` (row 0 = source/key, row 1 = destination/query) and
    ``weights`` ``[E, H]`` in the order the layer would return them (added self-loops
    included); for sequences, nodes are ``batch * L + position`` and ``seq_shape`` is
    ``(batch, Lq, Lk)``.
    """

    name: str
    layer: str
    edge_index: Tensor
    weights: Tensor
    num_src: int
    num_dst: int
    seq_shape: Optional[Tuple[int, int, int]] = None

    @property
    def num_heads(self) -> int:
        return self.weights.size(1)

    def head_weights(self, head: Optional[int] = None) -> Tensor:
        """``[E]``: one head's weights, or the mean over heads (``head=None``)."""
        if head is None:
            return self.weights.mean(dim=1)
        if not 0 <= head < self.num_heads:
            raise IndexError(f"head {head} out of range for {self.num_heads} heads")
        return self.weights[:, head]

    def to_sparse(self, head: Optional[int] = None) -> Tensor:
        """``(num_dst, num_src)`` sparse COO matrix, ``A[i, j]`` = weight of ``j -> i``."""
        return torch.sparse_coo_tensor(
            self.edge_index.flip(0), self.head_weights(head), (self.num_dst, self.num_src), check_invariants=True
        ).coalesce()

    def to_dense(self, head: Optional[int] = None) -> Tensor:
        """Sequences: ``(batch, Lq, Lk)`` maps (per head, or head-averaged). Graphs:
        the ``(num_dst, num_src)`` matrix."""
        dense = self.to_sparse(head).to_dense()
        if self.seq_shape is None:
            return dense
        N, Lq, Lk = self.seq_shape
        blocks = dense.view(N, Lq, N, Lk)
        idx = torch.arange(N, device=dense.device)
        return blocks[idx, :, idx, :]

    def to_networkx(self):
        """A ``networkx.DiGraph`` with ``attention`` (head mean) and ``attention_h<k>`` on each edge."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(range(max(self.num_src, self.num_dst)))
        mean = self.head_weights().tolist()
        per_head = self.weights.tolist()
        for e, (j, i) in enumerate(self.edge_index.t().tolist()):
            attrs = {"attention": mean[e]}
            attrs.update({f"attention_h{h}": w for h, w in enumerate(per_head[e])})
            g.add_edge(j, i, **attrs)
        return g

    def to_csv(self, path: Union[str, os.PathLike]) -> Path:
        """Edge list with columns ``source, target, head_0 .. head_{H-1}, mean`` (readable
        by pandas, Gephi, Cytoscape)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        mean = self.head_weights().tolist()
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["source", "target"] + [f"head_{h}" for h in range(self.num_heads)] + ["mean"])
            for (j, i), ws, m in zip(self.edge_index.t().tolist(), self.weights.tolist(), mean):
                w.writerow([j, i] + [f"{x:.6g}" for x in ws] + [f"{m:.6g}"])
        return path


class capture:
    """Context manager recording the attention of every graphattn layer inside ``model``
    (or of every graphattn layer, with ``model=None``) called in this thread.

    ``cap.records`` lists the calls in order; ``cap[name]`` is the last call of the
    submodule ``name`` (``model.named_modules()`` names). Weights are detached copies.
    """

    def __init__(self, model: Optional[nn.Module] = None):
        self.model = model
        self.records: List[AttentionRecord] = []
        self._names: Dict[int, str] = {}

    def __enter__(self) -> "capture":
        if self.model is not None:
            self._names = {id(m): (n or type(m).__name__) for n, m in self.model.named_modules()}
        self._handle = register_attention_hook(self._add)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _add(self, module, edge_index, weights, num_src, num_dst, seq_shape) -> None:
        if self.model is not None and id(module) not in self._names:
            return
        name = self._names.get(id(module), type(module).__name__)
        self.records.append(
            AttentionRecord(
                name,
                type(module).__name__,
                edge_index.detach(),
                weights.detach().float(),
                int(num_src),
                int(num_dst),
                seq_shape,
            )
        )

    def __getitem__(self, key: Union[int, str]) -> AttentionRecord:
        if isinstance(key, int):
            return self.records[key]
        for rec in reversed(self.records):
            if rec.name == key:
                return rec
        raise KeyError(f"no attention recorded for {key!r}; recorded: {sorted({r.name for r in self.records})}")

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)


# ------------------------------------------------------------------ summaries
def _dst_sum(rec: AttentionRecord, values: Tensor) -> Tensor:
    out = values.new_zeros((rec.num_dst,) + values.shape[1:])
    return out.index_add_(0, rec.edge_index[1], values)


def entropy(rec: AttentionRecord) -> Dict[str, Tensor]:
    """Per destination node and head: ``entropy`` :math:`-\\sum_j a_{ij}\\log a_{ij}`,
    ``uniform`` :math:`\\log d_i` (the entropy of uniform attention over the ``d_i``
    in-neighbours), and ``normalized`` = entropy / uniform (1 = uniform; nodes with
    one neighbour get 1; nodes with none get NaN). Shapes ``[num_dst, H]`` (uniform ``[num_dst]``)."""
    w = rec.weights
    plogp = torch.where(w > 0, w * torch.log(w.clamp_min(1e-30)), torch.zeros_like(w))
    ent = -_dst_sum(rec, plogp)
    deg = _dst_sum(rec, torch.ones_like(w[:, 0]))
    uniform = torch.log(deg.clamp_min(1))
    normalized = torch.where(
        uniform.unsqueeze(1) > 0, ent / uniform.clamp_min(1e-30).unsqueeze(1), torch.ones_like(ent)
    )
    normalized = torch.where(deg.unsqueeze(1) > 0, normalized, torch.full_like(ent, float("nan")))
    return {"entropy": ent, "uniform": uniform, "normalized": normalized, "degree": deg}


def head_agreement(rec: AttentionRecord) -> Tensor:
    """Per destination node: 1 - mean Jensen-Shannon divergence (in bits, so in [0, 1])
    between the attention distributions of every pair of heads. 1 = all heads attend
    alike; NaN with a single head or no incoming edges."""
    w = rec.weights
    H = w.size(1)
    out = torch.full((rec.num_dst,), float("nan"))
    if H < 2:
        return out
    deg = _dst_sum(rec, torch.ones_like(w[:, 0]))

    def plogp(p: Tensor) -> Tensor:
        return torch.where(p > 0, p * torch.log2(p.clamp_min(1e-30)), torch.zeros_like(p))

    total, pairs = torch.zeros(rec.num_dst), 0
    for a in range(H):
        for b in range(a + 1, H):
            m = 0.5 * (w[:, a] + w[:, b])
            js = 0.5 * (plogp(w[:, a]) + plogp(w[:, b])) - plogp(m)  # per edge; sums to JS per node
            total += _dst_sum(rec, js)
            pairs += 1
    agree = 1.0 - total / pairs
    return torch.where(deg > 0, agree, out)


def rollout(
    records: Sequence[AttentionRecord], rows: Optional[Tensor] = None, residual: float = 0.5, head: Optional[int] = None
) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) through stacked self-attention layers:
    :math:`R = \\hat A_L \\cdots \\hat A_1` with :math:`\\hat A = \\text{residual}\\, I + (1 - \\text{residual})\\, A`
    (head-averaged, or one head). ``records`` in forward order; returns the dense rows
    ``rows`` (default: all) of ``R``, ``[len(rows), num_nodes]``: how much each output
    position draws on each input position. Rows of ``R`` sum to 1 where every node has
    incoming attention."""
    if not records:
        raise ValueError("rollout needs at least one record")
    n = records[0].num_src
    for r in records:
        if r.num_src != r.num_dst or r.num_src != n:
            raise ValueError(
                f"rollout needs self-attention layers over the same {n} nodes; {r.name} maps "
                f"{r.num_src} sources to {r.num_dst} destinations"
            )
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    rows = torch.arange(n) if rows is None else torch.as_tensor(rows).view(-1)
    R = torch.zeros(rows.numel(), n)
    R[torch.arange(rows.numel()), rows] = 1.0
    for r in reversed(records):  # R <- R @ A_hat, last layer first
        A = r.to_sparse(head)
        R = residual * R + (1.0 - residual) * torch.sparse.mm(A.t(), R.t()).t()
    return R


def top_k(rec: AttentionRecord, node: int, k: int = 5, head: Optional[int] = None) -> List[Tuple[int, float]]:
    """The ``k`` sources that destination ``node`` attends to most: ``[(source, weight)]``."""
    if not 0 <= node < rec.num_dst:
        raise IndexError(f"node {node} out of range for {rec.num_dst} destinations")
    sel = rec.edge_index[1] == node
    src, w = rec.edge_index[0][sel], rec.head_weights(head)[sel]
    order = torch.argsort(w, descending=True)[:k]
    return [(int(src[o]), float(w[o])) for o in order]


# ------------------------------------------------------------------ plots
def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError("plotting needs matplotlib: pip install 'graphattn[plot]'") from e
    return plt


def _save(fig, path):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_sequence_heatmap(
    rec: AttentionRecord,
    tokens: Sequence[str],
    key_tokens: Optional[Sequence[str]] = None,
    index: int = 0,
    head: Optional[int] = None,
    path=None,
    title: Optional[str] = None,
):
    """Heatmap of sequence ``index``'s attention, queries down, keys across, tokens on
    the axes; ``head=None`` averages heads, ``head="all"`` draws one panel per head."""
    if rec.seq_shape is None:
        raise ValueError(f"{rec.name} is not a sequence layer; use plot_neighbourhood for graphs")
    plt = _plt()
    key_tokens = tokens if key_tokens is None else key_tokens
    heads = list(range(rec.num_heads)) if head == "all" else [head]
    Lq, Lk = len(tokens), len(key_tokens)
    fig, axes = plt.subplots(1, len(heads), figsize=(0.32 * Lk * len(heads) + 2, 0.32 * Lq + 1.5), squeeze=False)
    for ax, h in zip(axes[0], heads):
        m = rec.to_dense(h)[index, :Lq, :Lk].numpy()
        im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=max(float(m.max()), 1e-6))
        ax.set_xticks(range(Lk), key_tokens, rotation=90, fontsize=8)
        ax.set_yticks(range(Lq), tokens, fontsize=8)
        ax.set_title(f"{rec.name} " + ("mean of heads" if h is None else f"head {h}"), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_neighbourhood(
    rec: AttentionRecord,
    node: int,
    hops: int = 1,
    head: Optional[int] = None,
    labels: Optional[Tensor] = None,
    injected: Optional[Tensor] = None,
    path=None,
    title: Optional[str] = None,
):
    """``node``'s ``hops``-hop in-neighbourhood (the edges its output depends on) drawn with
    networkx; edge width and colour follow attention. ``labels`` colours nodes by class; ``injected`` (``[2, M]``) draws
    those edges dashed red (e.g. an attack's insertions)."""
    import networkx as nx

    plt = _plt()
    w = rec.head_weights(head)
    src, dst = rec.edge_index
    # the computation tree: edges into the node, then into those neighbours, ... (``hops`` deep)
    nodes, frontier, inner = {node}, {node}, set()
    for _ in range(hops):
        inner |= frontier
        sel = torch.isin(dst, torch.tensor(sorted(frontier)))
        new = set(src[sel].tolist()) - nodes
        nodes |= new
        frontier = new
    keep = torch.isin(dst, torch.tensor(sorted(inner))) & torch.isin(src, torch.tensor(sorted(nodes)))
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    inj = set(map(tuple, injected.t().tolist())) if injected is not None else set()
    for j, i, a in zip(src[keep].tolist(), dst[keep].tolist(), w[keep].tolist()):
        if i != j:
            g.add_edge(j, i, attention=a, injected=(j, i) in inj)
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    pos = nx.spring_layout(g, seed=0)
    colours = None
    if labels is not None:
        colours = [int(labels[n]) for n in g.nodes]
    nx.draw_networkx_nodes(
        g,
        pos,
        ax=ax,
        node_size=[320 if n == node else 90 for n in g.nodes],
        node_color=colours if colours is not None else "#888",
        cmap="tab10",
        alpha=0.9,
    )
    edges = list(g.edges(data=True))
    if edges:
        att = [d["attention"] for _, _, d in edges]
        top = max(att) or 1.0
        cmap = plt.get_cmap("plasma")
        for (j, i, d), a in zip(edges, att):
            nx.draw_networkx_edges(
                g,
                pos,
                edgelist=[(j, i)],
                ax=ax,
                width=0.5 + 4.0 * a / top,
                edge_color=["red" if d["injected"] else cmap(a / top)],
                style="dashed" if d["injected"] else "solid",
                arrowsize=8,
                connectionstyle="arc3,rad=0.08",
            )
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, top))
        fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.04, label="attention")
    ax.set_title(title or f"{rec.name}: attention into node {node} ({hops}-hop)", fontsize=10)
    ax.axis("off")
    return _save(fig, path)


def plot_entropy_histograms(records: Iterable[AttentionRecord], path=None, bins: int = 30):
    """One panel per layer: histogram of normalised attention entropy (1 = uniform over
    the neighbours), all heads pooled; nodes with a single neighbour are left out."""
    plt = _plt()
    records = list(records)
    fig, axes = plt.subplots(1, len(records), figsize=(3.8 * len(records), 3.0), squeeze=False)
    for ax, rec in zip(axes[0], records):
        e = entropy(rec)
        multi = e["degree"] > 1
        vals = e["normalized"][multi].flatten()
        ax.hist(vals.numpy(), bins=bins, range=(0, 1), color="#3b75af")
        ax.axvline(float(vals.mean()) if vals.numel() else math.nan, color="k", lw=1, ls="--")
        ax.set_title(f"{rec.name} (mean {float(vals.mean()) if vals.numel() else math.nan:.2f})", fontsize=9)
        ax.set_xlabel("entropy / log(degree)")
    axes[0][0].set_ylabel("node x head count")
    fig.tight_layout()
    return _save(fig, path)
