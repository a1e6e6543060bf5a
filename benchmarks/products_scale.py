"""One full-graph training step of a 3-layer GAT on a synthetic graph of ogbn-products' size.

    python benchmarks/products_scale.py                 # 2,449,029 nodes, 61,859,140 undirected edges
    python benchmarks/products_scale.py --scale 0.05    # the same shape, 5% of the size

The graph has ogbn-products' node count, undirected edge count (both directions, plus one
self-loop per node: ~126M directed edges), 100 features and 47 classes; its edges are
uniformly random, so it has none of the real graph's locality (a harder case for the
gathers). The model is the configuration stated in ``--help``: three graphattn
``GATConv`` layers, 4 heads of 32 channels (concatenated) in the hidden layers and one
head for the 47 classes, ELU between layers, Adam. One step is forward,
cross-entropy on a training split, backward and the optimiser's update.

Prints and writes (``--out``) the time of each phase, the peak resident memory of the
step (and of building the graph, measured apart), and PyG's peak estimated from what its
``GATConv`` must hold for the same step: per layer the gathered source rows and the
messages, each ``E x H x C`` floats, kept for backward.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import _reset_peak, _rss_kib  # noqa: E402  (the suite's RSS probes)

NODES, UNDIRECTED_EDGES, FEATURES, CLASSES = 2_449_029, 61_859_140, 100, 47
GIB = 2**30


def reset_peak() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) from the current RSS."""
    if not _reset_peak():
        raise RuntimeError("cannot reset the peak-RSS counter (/proc/self/clear_refs is not writable)")


def peak_gib() -> float:
    return _rss_kib("VmHWM") / 2**20


def random_undirected(num_nodes: int, num_edges: int, seed: int) -> torch.Tensor:
    """``[2, 2 * num_edges + num_nodes]``: ``num_edges`` random pairs in both directions and
    one self-loop per node, sorted by destination. Given edges in that order, a ``Graph``
    keeps no permutation and its CSR arrays are views of ``edge_index``: at this size that
    is 3 GB of int64 indices not held twice."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = torch.randint(0, num_nodes - 1, (num_edges,), generator=gen)
    dst += (dst >= src).long()  # skip the self-loop: uniform over the other nodes
    loops = torch.arange(num_nodes)
    src, dst = torch.cat([src, dst, loops]), torch.cat([dst, src, loops])
    order = torch.sort(dst, stable=True)[1]
    return torch.stack([src[order], dst[order]])


class GAT(torch.nn.Module):
    """Three GATConv layers: in -> heads x hidden (concat) -> heads x hidden -> classes (heads averaged)."""

    def __init__(self, in_channels: int, hidden: int, classes: int, heads: int, out_heads: int):
        super().__init__()
        from graphattn.nn import GATConv

        self.convs = torch.nn.ModuleList(
            [
                GATConv(in_channels, hidden, heads=heads, add_self_loops=False),
                GATConv(heads * hidden, hidden, heads=heads, add_self_loops=False),
                GATConv(heads * hidden, classes, heads=out_heads, concat=False, add_self_loops=False),
            ]
        )

    def forward(self, x, graph):
        for i, conv in enumerate(self.convs):
            x = conv(x, graph)
            if i < len(self.convs) - 1:
                x = F.elu(x, inplace=True)  # autograd then keeps one [N, H*C] tensor here, not two
        return x


def pyg_estimate_gib(num_edges: int, layers) -> float:
    """PyG GATConv keeps, per layer, x_j = x[src] and the messages alpha * x_j (each E x H x C
    floats) for backward, besides the E x H scores; the least it can need."""
    total = 0
    for heads, channels in layers:
        total += 2 * num_edges * heads * channels * 4 + 3 * num_edges * heads * 4
    return total / GIB


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of ogbn-products' nodes and edges")
    p.add_argument("--hidden", type=int, default=32, help="channels per head in the hidden layers (default 32)")
    p.add_argument("--heads", type=int, default=4, help="attention heads in the hidden layers (default 4)")
    p.add_argument("--out-heads", type=int, default=1, help="attention heads of the output layer (default 1)")
    p.add_argument(
        "--train-fraction",
        type=float,
        default=0.08,
        help="share of nodes with a training label (ogbn-products trains on 8%%)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from graphattn import Graph
    from graphattn.train.experiment import atomic_write_json

    n, m = int(NODES * args.scale), int(UNDIRECTED_EDGES * args.scale)
    result = {
        "nodes": n,
        "undirected_edges": m,
        "features": FEATURES,
        "classes": CLASSES,
        "model": f"3 x GATConv, {args.heads} heads x {args.hidden} channels (concat) hidden, "
        f"{args.out_heads} head(s) out, ELU, Adam",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }

    reset_peak()
    t = time.perf_counter()
    edge_index = random_undirected(n, m, seed=0)
    graph = Graph.from_edge_index(edge_index, n)
    del edge_index
    graph.transpose_csr()  # what backward traverses; built once per graph, as in training
    result["graph_build_s"] = time.perf_counter() - t
    result["graph_build_peak_gib"] = peak_gib()
    result["directed_edges_with_self_loops"] = graph.num_edges

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, FEATURES, generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    train = torch.rand(n, generator=gen) < args.train_fraction
    model = GAT(FEATURES, args.hidden, CLASSES, args.heads, args.out_heads)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    result["resident_before_step_gib"] = _rss_kib("VmRSS") / 2**20

    reset_peak()
    t0 = time.perf_counter()
    out = model(x, graph)
    loss = F.cross_entropy(out[train], y[train])
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    result.update(
        forward_s=t1 - t0,
        backward_s=t2 - t1,
        optimizer_s=t3 - t2,
        step_s=t3 - t0,
        step_peak_gib=peak_gib(),
        loss=float(loss.detach()),
    )
    E = graph.num_edges
    result["pyg_estimated_peak_gib"] = pyg_estimate_gib(
        E, [(args.heads, args.hidden), (args.heads, args.hidden), (args.out_heads, CLASSES)]
    )
    for k, v in result.items():
        print(f"{k:32s} {v:,.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.out:  # folders made as needed
        atomic_write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
