#!/usr/bin/env python
"""Attention pictures for a trained Cora GAT and a trained SST-2 transformer.

Writes, under ``--out-dir``:

- ``cora_neighbourhood_<node>.png``: a node's 2-hop neighbourhood, edge width and colour
  by the first layer's attention, nodes coloured by class;
- ``cora_entropy.png``: per-layer histograms of normalised attention entropy;
- ``cora_conv1.csv`` / ``cora_conv1.graphml``: the first layer's attention as an edge
  list and as a networkx graph (attention as edge attributes), for Gephi, Cytoscape, pandas;
- ``sst2_heatmap_<i>.png`` (mean of heads), ``sst2_heads_<i>.png`` (one panel per head)
  and ``sst2_rollout_<i>.png`` (attention rollout through the layers) for dev sentences;
- ``summary.json``: entropy, head agreement and top-k numbers behind the pictures.

    python examples/visualize_attention.py
    python examples/visualize_attention.py --text-model runs/text_classification/sst2-complete.model.pt

Without ``--text-model`` a small SST-2 classifier is trained first (``--text-epochs``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from graphattn import explain
from graphattn.train.datasets import contextual_sbm, load_planetoid
from graphattn.train.experiment import (
    atomic_write_json,
    check_outputs,
    device_argument,
    exits_on_checkpoint_error,
    nonnegative_int,
    positive_int,
    resolve_device,
    seed_int,
)
from graphattn.train.models import NodeClassifier, fit_node_classifier

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[0].parent / "shared" / "data"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="Cora", help="Cora (Planetoid) or synthetic")
    p.add_argument("--root", default=str(SHARED / "planetoid"))
    p.add_argument("--model", default="gat", choices=["gat", "gatv2", "dot"])
    p.add_argument(
        "--node",
        type=nonnegative_int,
        default=None,
        help="node to draw (default: a test node with 4-8 neighbours and at most 40 edges two hops away)",
    )
    p.add_argument("--text-model", default=None, help="a .model.pt from examples/text_classification.py")
    p.add_argument("--text-train", default=str(SHARED / "text" / "sst2" / "train.tsv"))
    p.add_argument("--text-dev", default=str(SHARED / "text" / "sst2" / "dev.tsv"))
    p.add_argument("--text-epochs", type=positive_int, default=1)
    p.add_argument("--sentences", type=positive_int, default=3, help="dev sentences to draw")
    p.add_argument("--epochs", type=positive_int, default=300)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="cpu", type=device_argument, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out-dir", default="runs/visualize_attention")
    p.add_argument("--smoke", action="store_true", help="synthetic graph, tiny text model")
    args = p.parse_args(argv)
    if args.smoke:
        args.dataset, args.epochs, args.sentences = "synthetic", 20, 1
    check_outputs(p, directories={"--out-dir": args.out_dir})
    return args


def graph_pictures(args, out: Path, device) -> dict:
    if args.dataset.lower() == "synthetic":
        data = contextual_sbm(num_nodes=500, num_val=100, num_test=200, seed=1)
    else:
        data = load_planetoid(args.root, args.dataset)
    data = data.to(device)
    torch.manual_seed(args.seed)
    model = NodeClassifier(args.model, data.x.size(1), data.num_classes).to(device)
    best = fit_node_classifier(model, data, args.epochs, patience=100)
    print(f"{args.dataset} {args.model}: test accuracy {best['test_acc']:.4f}")
    with explain.capture(model) as cap, torch.no_grad():
        model(data.x, data.edge_index)
    conv1 = cap["conv1"]
    deg = torch.bincount(data.edge_index[1], minlength=data.num_nodes)
    node = args.node
    if node is not None and node >= data.num_nodes:
        raise SystemExit(f"error: --node {node} is not a node of {args.dataset} (it has {data.num_nodes})")
    if node is None:  # a test node with a readable 2-hop tree: a few neighbours, none of them a hub
        src, dst = data.edge_index
        two_hop = torch.zeros(data.num_nodes, dtype=torch.long, device=deg.device).index_add_(0, dst, deg[src])
        cand = torch.nonzero(data.test_mask & (deg >= 4) & (deg <= 8) & (two_hop <= 40)).flatten()
        node = int(cand[0]) if cand.numel() else int(torch.nonzero(data.test_mask).flatten()[0])
    explain.plot_neighbourhood(
        conv1,
        node,
        hops=2,
        labels=data.y.cpu(),
        path=out / f"cora_neighbourhood_{node}.png",
        title=f"{args.dataset} {args.model.upper()} layer 1: attention into node {node} (class {int(data.y[node])})",
    )
    explain.plot_entropy_histograms(cap.records, path=out / "cora_entropy.png")
    conv1.to_csv(out / "cora_conv1.csv")
    import networkx as nx

    nx.write_graphml(conv1.to_networkx(), out / "cora_conv1.graphml")
    summary = {"test_acc": best["test_acc"], "node": node, "top_k": explain.top_k(conv1, node, 5)}
    for rec in cap.records:
        e = explain.entropy(rec)
        multi = e["degree"] > 1
        agree = explain.head_agreement(rec)
        summary[rec.name] = {
            "mean_normalized_entropy": float(e["normalized"][multi].mean()),
            "mean_head_agreement": float(agree[~agree.isnan()].mean()) if rec.num_heads > 1 else None,
        }
    return summary


def text_pictures(args, out: Path, device) -> dict:
    sys.path.insert(0, str(HERE))
    import text_classification as tc

    path = args.text_model
    if path is None:
        argv = [
            "--train",
            args.text_train,
            "--dev",
            args.text_dev,
            "--epochs",
            str(args.text_epochs),
            "--out",
            str(out / "sst2_model.json"),
            "--no-progress",
        ]
        tc.main(argv + (["--smoke"] if args.smoke else []))
        path = str(out / "sst2_model.model.pt")
    model, vocab, cfg = tc.load_classifier(path, device)
    dev = tc.read_tsv(args.text_dev, cfg["labels"])  # class ids of the model's own label list
    summary = {}
    for k, (sentence, label) in enumerate(dev[: args.sentences]):
        ids = torch.tensor([vocab.encode(sentence, cfg["max_len"])], device=device)
        with explain.capture(model) as cap, torch.no_grad():
            pred = int(model(ids, ids == vocab.PAD).argmax(-1))
        tokens = [vocab.itos[i] for i in ids[0].tolist()]
        last = cap.records[-1]
        explain.plot_sequence_heatmap(
            last,
            tokens,
            path=out / f"sst2_heatmap_{k}.png",
            title=f"last layer, mean of heads; label {label}, predicted {pred}",
        )
        explain.plot_sequence_heatmap(last, tokens, head="all", path=out / f"sst2_heads_{k}.png")
        roll = explain.rollout(cap.records)
        rrec = explain.AttentionRecord(
            "rollout", "rollout", *_dense_to_edges(roll), len(tokens), len(tokens), (1, len(tokens), len(tokens))
        )
        explain.plot_sequence_heatmap(
            rrec, tokens, path=out / f"sst2_rollout_{k}.png", title="attention rollout through all layers"
        )
        cls_row = roll[0]
        summary[f"sentence_{k}"] = {
            "text": sentence,
            "label": label,
            "predicted": pred,
            "cls_rollout_top": sorted(zip(tokens, cls_row.tolist()), key=lambda t: -t[1])[:5],
        }
    return summary


def _dense_to_edges(m: torch.Tensor):
    i, j = torch.nonzero(m > 0, as_tuple=True)
    return torch.stack([j, i]), m[i, j].unsqueeze(1)


@exits_on_checkpoint_error
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary = {"graph": graph_pictures(args, out, device), "text": text_pictures(args, out, device)}
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    atomic_write_json(summary, out / "summary.json")
    print(f"pictures and summary under {out}/")
    return summary


if __name__ == "__main__":
    main()
