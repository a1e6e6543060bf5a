#!/usr/bin/env python
"""Link prediction with an encoder of graphattn layers and a dot-product or MLP decoder.

Planetoid (random link split, AUC and AP on held-out edges against as many sampled
non-edges):

    python examples/link_prediction.py --dataset Cora --root ../shared/data/planetoid

ogbl-ddi (OGB's split and Evaluator, Hits@20; the nodes have no features, so each
gets a learnable embedding):

    python examples/link_prediction.py --dataset ogbl-ddi --root ../shared/data/ogb
    torchrun --nproc_per_node=2 examples/link_prediction.py --dataset ogbl-ddi --root ../shared/data/ogb

Under ``torchrun`` every process encodes the whole graph and scores its share of
each batch's positive and negative pairs; with the dot decoder (no dropout after
the encoder) the averaged gradient is exactly the single-process one.

Training samples negatives afresh every epoch (uniform node pairs; for Planetoid,
pairs that are not training edges). The model of the evaluation with the best
validation score is the one reported. Results (mean +- std over ``--runs`` seeds)
go to ``--out`` as JSON with curves beside it; a checkpoint is written atomically
after every evaluation and ``--resume`` continues a killed run to the same result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from graphattn import Graph
from graphattn.graph import both_directions, undirected_pairs
from graphattn.train.datasets import PLANETOID, load_ogb_link, load_planetoid
from graphattn.train.distributed import all_reduce_sum, cleanup, setup
from graphattn.train.experiment import (
    add_run_arguments,
    atomic_save,
    bounded,
    check_outputs,
    exits_on_checkpoint_error,
    machine_info,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
    report,
    resolve_device,
    restore_training_state,
    restoring,
    resume_from,
    summarize_runs,
    training_state,
)
from graphattn.train.metrics import average_precision, hits_at_k, roc_auc
from graphattn.train.models import DECODERS, MODELS, LinkPredictor

DATASETS = PLANETOID + ("ogbl-ddi",)
SHARE = bounded(float, 0, 1, low_open=True, high_open=True)  # of the edges held out
# Per-dataset defaults; flags given on the command line win.
DEFAULTS = {
    "planetoid": dict(
        root="data/planetoid",
        hidden=16,
        heads=8,
        layers=2,
        decoder="dot",
        decoder_hidden=0,
        dropout=0.5,
        lr=0.01,
        epochs=300,
        batch_size=0,
        eval_every=5,
        patience=20,
        weight_decay=0.0,
        disjoint_ratio=0.0,
    ),
    "ogbl-ddi": dict(
        root="data/ogb",
        hidden=256,
        heads=1,
        layers=2,
        decoder="mlp",
        decoder_hidden=64,
        dropout=0.5,
        lr=0.005,
        epochs=200,
        batch_size=65536,
        eval_every=5,
        patience=10,
        weight_decay=0.0,
        disjoint_ratio=0.0,
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="Cora", help=f"one of {', '.join(DATASETS)} (default: Cora)")
    p.add_argument(
        "--root",
        default=None,
        help="Planetoid: the folder holding <Name>/raw/ (default data/planetoid); "
        "ogbl-ddi: the folder holding ogbl_ddi/ (default data/ogb)",
    )
    p.add_argument("--model", default="gat", choices=MODELS, help="attention layer of the encoder")
    p.add_argument("--decoder", default=None, choices=DECODERS, help="dot or mlp (default: dot; mlp for ogbl-ddi)")
    p.add_argument(
        "--decoder-hidden",
        type=nonnegative_int,
        default=None,
        help="width of the MLP decoder (0 = the encoder's width; default 0; 64 for ogbl-ddi, which scores "
        "two million pairs per epoch)",
    )
    p.add_argument("--hidden", type=positive_int, default=None, help="channels per head (default 16; 256 for ogbl-ddi)")
    p.add_argument(
        "--heads", type=positive_int, default=None, help="heads per layer, concatenated (default 8; 1 for ogbl-ddi)"
    )
    p.add_argument("--layers", type=positive_int, default=None, help="attention layers (default 2)")
    p.add_argument("--no-residual", action="store_true", help="drop the per-layer linear skip of a node's own input")
    p.add_argument(
        "--dropout", type=probability, default=None, help="dropout between layers and in the MLP (default 0.5)"
    )
    p.add_argument("--attn-dropout", type=probability, default=0.0, help="dropout on attention weights")
    p.add_argument(
        "--lr", type=positive_float, default=None, help="Adam learning rate (default 0.01; 0.005 for ogbl-ddi)"
    )
    p.add_argument("--weight-decay", type=nonnegative_float, default=None)
    p.add_argument("--epochs", type=positive_int, default=None, help="maximum epochs (default 300; 200 for ogbl-ddi)")
    p.add_argument(
        "--batch-size",
        type=nonnegative_int,
        default=None,
        help="positive edges per step, each step re-encoding the graph (0 = all; default 0; 65536 for ogbl-ddi)",
    )
    p.add_argument("--eval-every", type=positive_int, default=None, help="epochs between evaluations (default 5)")
    p.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        help="evaluations without a better validation score before stopping (default 20; 10 for ogbl-ddi)",
    )
    p.add_argument(
        "--disjoint-ratio",
        type=probability,
        default=None,
        help="share of training edges drawn afresh each epoch as supervision and removed from that "
        "epoch's message-passing graph (0 = every training edge does both; default 0)",
    )
    p.add_argument("--val-ratio", type=SHARE, default=0.05, help="Planetoid: share of edges held out for validation")
    p.add_argument("--test-ratio", type=SHARE, default=0.1, help="Planetoid: share of edges held out for test")
    add_run_arguments(
        p, "runs/link_prediction/<dataset>-<model>.json", "a few epochs on a small slice of the data (for tests)"
    )
    args = p.parse_args(argv)
    canonical = {d.lower(): d for d in DATASETS}.get(args.dataset.lower())
    if canonical is None:
        p.error(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    args.dataset = canonical
    defaults = DEFAULTS["ogbl-ddi" if canonical == "ogbl-ddi" else "planetoid"]
    if args.smoke:
        defaults = dict(
            defaults,
            epochs=6,
            eval_every=2,
            hidden=min(defaults["hidden"], 16),
            heads=2,
            batch_size=min(defaults["batch_size"], 4096) if defaults["batch_size"] else 0,
        )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.val_ratio + args.test_ratio >= 1:
        p.error("--val-ratio and --test-ratio must sum to less than 1")
    if args.out is None:
        args.out = f"runs/link_prediction/{args.dataset}-{args.model}.json"
    check_outputs(
        p,
        {
            "--out": args.out,
            "checkpoint": Path(args.out).with_suffix(".ckpt.pt"),
            "plot": Path(args.out).with_suffix(".png"),
        },
    )
    return args


def config_of(args) -> dict:
    keys = (
        "dataset",
        "model",
        "decoder",
        "decoder_hidden",
        "hidden",
        "heads",
        "layers",
        "no_residual",
        "dropout",
        "attn_dropout",
        "lr",
        "weight_decay",
        "disjoint_ratio",
        "epochs",
        "batch_size",
        "eval_every",
        "patience",
        "val_ratio",
        "test_ratio",
        "runs",
        "seed",
        "smoke",
    )
    return {k: getattr(args, k) for k in keys}


def _sample_pairs(num_nodes: int, count: int, gen: torch.Generator, exclude=None) -> torch.Tensor:
    """``count`` uniform node pairs (no self-pairs); with ``exclude`` (a sorted tensor of
    ``u * N + v`` keys) pairs in it are redrawn, so none is a known edge."""
    out = torch.empty(2, 0, dtype=torch.long)
    while out.size(1) < count:
        need = count - out.size(1)
        pairs = torch.randint(0, num_nodes, (2, need + need // 8 + 16), generator=gen)
        pairs = pairs[:, pairs[0] != pairs[1]]
        if exclude is not None:
            pairs = pairs[:, ~torch.isin(pairs[0] * num_nodes + pairs[1], exclude)]
        out = torch.cat([out, pairs[:, :need]], dim=1)
    return out


def load_data(args, run: int) -> SimpleNamespace:
    """Features (or None), the message-passing graph, training positives and the
    evaluation pairs. Planetoid: a random link split drawn with seed ``seed + run``."""
    if args.dataset == "ogbl-ddi":
        data, split = load_ogb_link(args.root, "ogbl-ddi")
        n = data.num_nodes
        train = split["train"]["edge"].t().contiguous()
        ev = {
            "val_pos": split["valid"]["edge"].t(),
            "val_neg": split["valid"]["edge_neg"].t(),
            "test_pos": split["test"]["edge"].t(),
            "test_neg": split["test"]["edge_neg"].t(),
        }
        if args.smoke:  # the first 600 drugs and the edges among them
            n = 600
            ev = {k: v[:, (v < n).all(0)] for k, v in ev.items()}
            train = train[:, (train < n).all(0)]
        return SimpleNamespace(x=None, num_nodes=n, train_pos=train, message=both_directions(train), exclude=None, **ev)
    data = load_planetoid(args.root, args.dataset)
    n = data.num_nodes
    edges = undirected_pairs(data.edge_index)
    gen = torch.Generator().manual_seed(args.seed + run)
    perm = edges[:, torch.randperm(edges.size(1), generator=gen)]
    n_val, n_test = int(args.val_ratio * perm.size(1)), int(args.test_ratio * perm.size(1))
    val_pos, test_pos, train = perm[:, :n_val], perm[:, n_val : n_val + n_test], perm[:, n_val + n_test :]
    known = torch.sort(torch.cat([both_directions(edges)[0] * n + both_directions(edges)[1]])).values
    neg = _sample_pairs(n, n_val + n_test, gen, exclude=known)
    train_keys = torch.sort(both_directions(train)[0] * n + both_directions(train)[1]).values
    return SimpleNamespace(
        x=data.x,
        num_nodes=n,
        train_pos=train,
        message=both_directions(train),
        exclude=train_keys,
        val_pos=val_pos,
        val_neg=neg[:, :n_val],
        test_pos=test_pos,
        test_neg=neg[:, n_val:],
    )


@torch.no_grad()
def scores(model, z, pairs, chunk=1 << 16):
    return torch.cat([model.decode(z, pairs[:, i : i + chunk]) for i in range(0, pairs.size(1), chunk)]).float().cpu()


@torch.no_grad()
def evaluate(args, model, data, graph, device) -> dict:
    model.eval()
    z = model.encode(data.x, graph)
    s = {k: scores(model, z, getattr(data, k).to(device)) for k in ("val_pos", "val_neg", "test_pos", "test_neg")}
    res = {}
    for split in ("val", "test"):
        pos, neg = s[f"{split}_pos"], s[f"{split}_neg"]
        if args.dataset == "ogbl-ddi":
            from ogb.linkproppred import Evaluator

            evaluator = Evaluator(name="ogbl-ddi")
            for k in (10, 20, 30):
                evaluator.K = k
                res[f"{split}_hits@{k}"] = float(evaluator.eval({"y_pred_pos": pos, "y_pred_neg": neg})[f"hits@{k}"])
        else:
            res[f"{split}_auc"] = roc_auc(pos, neg)
            res[f"{split}_ap"] = average_precision(pos, neg)
            res[f"{split}_hits@20"] = hits_at_k(pos, neg, 20)
    return res


def selection_metric(args) -> str:
    return "hits@20" if args.dataset == "ogbl-ddi" else "auc"


def new_model(args, data, device):
    return LinkPredictor(
        args.model,
        None if data.x is None else data.x.size(1),
        hidden=args.hidden,
        heads=args.heads,
        layers=args.layers,
        dropout=args.dropout,
        attn_dropout=args.attn_dropout,
        decoder=args.decoder,
        residual=not args.no_residual,
        num_nodes=data.num_nodes,
        decoder_hidden=args.decoder_hidden or None,
    ).to(device)


def train_epoch(args, ddp, opt, data, graph, gen, info) -> float:
    ddp.train()
    device = info.device
    train_pos = data.train_pos
    perm = torch.randperm(train_pos.size(1), generator=gen)  # the same on every rank
    if args.disjoint_ratio > 0:
        # This epoch's supervision edges carry no messages: the encoder cannot score a
        # positive pair by having seen that very edge (PyG's disjoint_train_ratio).
        n_sup = max(1, int(args.disjoint_ratio * perm.numel()))
        graph = Graph.from_edge_index(both_directions(train_pos[:, perm[n_sup:]]).to(device), data.num_nodes)
        perm = perm[:n_sup]
    size = args.batch_size if args.batch_size > 0 else perm.numel()
    total, count = 0.0, 0
    for start in range(0, perm.numel(), size):
        pos = train_pos[:, perm[start : start + size]]
        neg = _sample_pairs(data.num_nodes, pos.size(1), gen, exclude=data.exclude)
        batch = pos.size(1)
        if info.enabled:  # this rank's share of the batch's pairs
            pos, neg = pos[:, info.rank :: info.world_size], neg[:, info.rank :: info.world_size]
        opt.zero_grad()
        pos_out, neg_out = ddp(data.x, graph, pos.to(device), neg.to(device))
        # (sum over this rank's pairs) x world / batch: DDP's mean over ranks is the batch mean
        loss = (
            (
                F.binary_cross_entropy_with_logits(pos_out, torch.ones_like(pos_out), reduction="sum")
                + F.binary_cross_entropy_with_logits(neg_out, torch.zeros_like(neg_out), reduction="sum")
            )
            * info.world_size
            / batch
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
        opt.step()
        total += all_reduce_sum(loss.item(), info) / info.world_size * batch
        count += batch
    return total / count


@exits_on_checkpoint_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        info = setup(resolve_device(args.device))
    except ValueError as e:  # more processes than GPUs
        raise SystemExit(f"error: {e}") from None
    device = info.device
    progress = info.is_main and not args.no_progress and sys.stderr.isatty()
    ckpt_path = Path(args.out).with_suffix(".ckpt.pt")
    ckpt = resume_from(ckpt_path, config_of(args), args.resume, keys=("done",))
    done = ckpt["done"] if ckpt else []
    metric = selection_metric(args)
    t0 = time.perf_counter()
    cached = None
    for run in range(len(done), args.runs):
        try:
            if cached is None or args.dataset != "ogbl-ddi":
                cached = load_data(args, run)
        except (FileNotFoundError, ValueError, ImportError) as e:
            raise SystemExit(f"error: {e}")
        data = cached
        if run == len(done) and not done and info.is_main:
            print(
                f"{args.dataset}: {data.num_nodes} nodes, {data.train_pos.size(1)} training edges, "
                f"{data.val_pos.size(1)}/{data.test_pos.size(1)} validation/test edges"
            )
        data.x = data.x.to(device) if data.x is not None else None
        graph = Graph.from_edge_index(data.message.to(device), data.num_nodes)  # sorted once per run
        torch.manual_seed(args.seed + run)
        gen = torch.Generator().manual_seed(args.seed + run)
        model = new_model(args, data, device)
        ddp = torch.nn.parallel.DistributedDataParallel(model) if info.enabled else model
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        st = {
            "epoch": 0,
            "best": None,
            "bad": 0,
            "history": {"train_loss": [], f"val_{metric}": [], f"test_{metric}": []},
        }
        if ckpt is not None and ckpt.get("state") is not None and ckpt.get("run") == run:
            with restoring(ckpt_path):
                restore_training_state(ckpt["state"], model, opt, None, gen, ckpt_path)
                st = ckpt["run_state"]
                if info.is_main:
                    print(f"resumed run {run} at epoch {st['epoch']}")
        bar = tqdm(
            total=args.epochs, initial=st["epoch"], desc=f"{args.dataset}/{args.model} run {run}", disable=not progress
        )
        while st["epoch"] < args.epochs and st["bad"] < args.patience:
            loss = train_epoch(args, ddp, opt, data, graph, gen, info)
            st["epoch"] += 1
            st["history"]["train_loss"].append(loss)
            bar.update(1)
            if st["epoch"] % args.eval_every and st["epoch"] < args.epochs:
                continue
            ev = evaluate(args, model, data, graph, device)
            st["history"][f"val_{metric}"].append(ev[f"val_{metric}"])
            st["history"][f"test_{metric}"].append(ev[f"test_{metric}"])
            if st["best"] is None or ev[f"val_{metric}"] > st["best"][f"val_{metric}"]:
                st["best"], st["bad"] = {"epoch": st["epoch"], **ev}, 0
            else:
                st["bad"] += 1
            bar.set_postfix(
                loss=f"{loss:.4f}", val=f"{ev[f'val_{metric}']:.4f}", best=f"{st['best'][f'val_{metric}']:.4f}"
            )
            if info.is_main:
                atomic_save(
                    {
                        "config": config_of(args),
                        "done": done,
                        "run": run,
                        "run_state": st,
                        "state": training_state(model, opt, None, gen),
                    },
                    ckpt_path,
                )
        bar.close()
        best = st["best"]
        done.append(
            {
                "seed": args.seed + run,
                "epochs": st["epoch"],
                "best_epoch": best["epoch"],
                **{k: v for k, v in best.items() if k != "epoch"},
                "history": st["history"],
            }
        )
        if not info.is_main:
            continue
        print(
            f"run {run}: test {metric} {best[f'test_{metric}']:.4f} (val {best[f'val_{metric}']:.4f}, "
            f"epoch {best['epoch']}, stopped after {st['epoch']})"
        )
        atomic_save({"config": config_of(args), "done": done, "run": None, "run_state": None, "state": None}, ckpt_path)

    per_run = [r[f"test_{metric}"] for r in done]
    summary = summarize_runs(per_run)
    others = sorted({k for r in done for k in r if k.startswith(("val_", "test_"))})
    result = {
        "dataset": args.dataset,
        "model": args.model,
        "metric": f"test_{metric}",
        "mean": summary["mean"],
        "std": summary["std"],
        "runs": len(per_run),
        "per_run": per_run,
        **{k: [r[k] for r in done] for k in others if k != f"test_{metric}"},
        "best_epoch": [r["best_epoch"] for r in done],
        "epochs": [r["epochs"] for r in done],
        "config": config_of(args),
        "seconds": time.perf_counter() - t0,
        "machine": machine_info(),
        "device": str(device),
        "world_size": info.world_size,
        "history": [r["history"] for r in done],
    }
    cleanup(info)
    if not info.is_main:
        return result
    report(
        result,
        args.out,
        result["history"],
        list(done[0]["history"]),
        f"{args.model.upper()} link prediction on {args.dataset}",
        "epoch (loss) / evaluation (scores)",
    )
    return result


if __name__ == "__main__":
    main()
