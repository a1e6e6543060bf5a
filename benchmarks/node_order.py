"""What a locality node order buys the fused kernels on a graph whose ids are scattered.

    python benchmarks/node_order.py                      # N=100k, E=1M, GATConv 128 -> 8 x 16
    python benchmarks/node_order.py --nodes 20000 --reps 3

The graph has communities (blocks of ``--block`` nodes; ``--local`` of each node's
in-edges come from its own block, the rest from anywhere), as real graphs do, and its
node ids are then shuffled, as a crawl or a database numbering leaves them. One
graphattn ``GATConv`` forward+backward is timed on:

* ``shuffled``: the graph as given;
* ``transparent``: the same graph holding the ``locality`` order
  (``graph.reorder_nodes()``): the op permutes its node tensors in and its output out;
* ``<method> relabeled``: features and graph relabelled once, before the step
  (``order.apply(x)``, ``order.relabel(graph)``), for each order method;
* ``original``: the graph before shuffling (the locality there was to recover).

Each case's time is the median of ``--reps`` runs taken round-robin (so drift of the
machine spreads over every case); speed-ups are against ``shuffled`` from the same run.
Also reported: the time to compute each order, and the share of edges whose two ends
lie within 2,048 ids of each other (how local the numbering is).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NEAR = 2048


def community_graph(nodes: int, edges: int, block: int, local: float, seed: int):
    """``(shuffled edge_index, original edge_index, shuffle)``: each edge's destination
    uniform, its source from the destination's block with probability ``local``, else
    uniform; original node ``v`` has id ``shuffle[v]`` in the shuffled graph."""
    gen = torch.Generator().manual_seed(seed)
    dst = torch.randint(0, nodes, (edges,), generator=gen)
    in_block = torch.rand(edges, generator=gen) < local
    block_start = (dst // block) * block
    near = (block_start + torch.randint(0, block, (edges,), generator=gen)).clamp_max(nodes - 1)
    src = torch.where(in_block, near, torch.randint(0, nodes, (edges,), generator=gen))
    original = torch.stack([src, dst])
    shuffle = torch.randperm(nodes, generator=gen)
    return shuffle[original], original, shuffle


def near_share(edge_index: torch.Tensor) -> float:
    return float(((edge_index[0] - edge_index[1]).abs() < NEAR).float().mean())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--edges", type=int, default=1_000_000)
    p.add_argument("--block", type=int, default=1000, help="community size")
    p.add_argument("--local", type=float, default=0.9, help="share of in-edges from the own community")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    from graphattn import Graph
    from graphattn.nn import GATConv
    from graphattn.ordering import METHODS, node_order
    from graphattn.train.experiment import atomic_write_json, machine_info

    shuffled_ei, original_ei, shuffle = community_graph(args.nodes, args.edges, args.block, args.local, seed=0)
    n = args.nodes
    shuffled = Graph.from_edge_index(shuffled_ei, n, add_self_loops=True)
    x = torch.randn(n, 128, generator=torch.Generator().manual_seed(1))
    cases = {
        "shuffled": (shuffled, x),
        "transparent": None,
        "original": (Graph.from_edge_index(original_ei, n, add_self_loops=True), x[shuffle]),
    }
    orders = {}
    for method in METHODS:
        t = time.perf_counter()
        order = node_order(shuffled, method)
        orders[method] = {"seconds": time.perf_counter() - t, "near_share": near_share(order.inverse[shuffled_ei])}
        cases[f"{method} relabeled"] = (order.relabel(shuffled), order.apply(x))
        if method == "locality":
            cases["transparent"] = (shuffled.reorder_nodes(order), x)

    torch.manual_seed(2)
    conv = GATConv(128, 16, heads=8)
    times = {name: [] for name in cases}
    for _ in range(args.reps):
        for name, (graph, feats) in cases.items():
            feats = feats.detach().requires_grad_()
            t = time.perf_counter()
            conv(feats, graph).sum().backward()
            times[name].append(time.perf_counter() - t)
            conv.zero_grad(set_to_none=True)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "command": "python benchmarks/node_order.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "graph": dict(
            nodes=n,
            edges=args.edges,
            block=args.block,
            local=args.local,
            near_share_shuffled=near_share(shuffled_ei),
            near_share_original=near_share(original_ei),
        ),
        "layer": "graphattn GATConv 128 -> 8 x 16, self-loops added, forward+backward",
        "orders": orders,
        "cases": {
            name: {
                "median_ms": 1000 * m,
                "speedup_vs_shuffled": medians["shuffled"] / m,
                "runs_ms": [1000 * t for t in times[name]],
            }
            for name, m in medians.items()
        },
    }
    print(
        f"graph: {n:,} nodes, {args.edges:,} edges; edges within {NEAR} ids: "
        f"shuffled {report['graph']['near_share_shuffled']:.1%}, "
        f"original {report['graph']['near_share_original']:.1%}"
    )
    for method, info in orders.items():
        print(
            f"order {method:9s} computed in {info['seconds']:.2f} s; edges within {NEAR} ids: {info['near_share']:.1%}"
        )
    for name, info in report["cases"].items():
        print(f"{name:20s} {info['median_ms']:8.1f} ms  {info['speedup_vs_shuffled']:.2f}x")
    if args.out:  # folders made as needed
        atomic_write_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
