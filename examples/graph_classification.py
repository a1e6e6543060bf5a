#!/usr/bin/env python
"""Molecular property prediction on OGB's ``ogbg-mol*`` datasets with attention layers.

Atoms and bonds are embedded with OGB's ``AtomEncoder`` / ``BondEncoder``; graphattn
attention layers (GAT, GATv2 or TransformerConv, the bond embedding entering each
attention score) or GPS layers (a local GAT beside global attention within each
molecule) update the atoms; mean (or sum) pooling and an MLP give one output per task.
The data are read through ogb's ``PygGraphPropPredDataset`` from files on disk (no
download) and scored with OGB's ``Evaluator``: ROC-AUC for the binary classification
datasets (labels missing in the file are ignored), RMSE for the regression ones. As on
OGB's leaderboard, the test score reported is the one at the epoch with the best
validation score. On the shared data:

    python examples/graph_classification.py --dataset ogbg-molbbbp --model gat --runs 10
    python examples/graph_classification.py --dataset ogbg-molesol --model gps --pe-walk-length 16

``--pe-walk-length K`` adds PyG's ``AddRandomWalkPE`` (K random-walk return
probabilities per atom, mapped linearly and added to the atom embedding). Results
(mean +- std over ``--runs`` seeds) go to ``--out`` as JSON with curves beside it; a
checkpoint is written atomically after every epoch and ``--resume`` continues a killed
run to the same result.
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

from graphattn.train.datasets import OGB_GRAPH, load_ogb_graph
from graphattn.train.experiment import (
    add_run_arguments,
    atomic_save,
    check_heads_divide,
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
from graphattn.train.models import GRAPH_MODELS, POOLS, GraphPredictor

# OGB's molecule baselines train 100 epochs with batches of 32 molecules and Adam at 1e-3.
DEFAULTS = dict(epochs=100, batch_size=32, hidden=64, layers=4, heads=4)
SMOKE = dict(epochs=5, batch_size=16, hidden=16, layers=2, heads=2)
SMOKE_GRAPHS = {"train": 320, "valid": 80, "test": 80}  # --smoke: the first molecules of each split
LOWER_IS_BETTER = ("rmse", "mae")  # OGB's error metrics; its other metrics are scores


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ogbg-molbbbp", help=f"one of {', '.join(OGB_GRAPH)} (default: ogbg-molbbbp)")
    p.add_argument(
        "--root",
        default="../shared/data/ogb",
        help="the folder holding <name with _>/ in OGB's layout, e.g. ogbg_molbbbp/raw/ (default ../shared/data/ogb)",
    )
    p.add_argument("--model", default="gat", choices=GRAPH_MODELS)
    p.add_argument(
        "--hidden", type=positive_int, default=None, help=f"atom embedding width (default {DEFAULTS['hidden']})"
    )
    p.add_argument("--layers", type=positive_int, default=None, help=f"attention layers (default {DEFAULTS['layers']})")
    p.add_argument(
        "--heads",
        type=positive_int,
        default=None,
        help=f"heads per layer, hidden/heads channels each (default {DEFAULTS['heads']})",
    )
    p.add_argument("--dropout", type=probability, default=0.2, help="dropout after each layer and in the MLP")
    p.add_argument("--attn-dropout", type=probability, default=0.0, help="dropout on attention weights")
    p.add_argument("--pool", default="mean", choices=POOLS, help="readout over each molecule's atoms")
    p.add_argument("--no-edge-features", action="store_true", help="leave bond features out of the attention")
    p.add_argument(
        "--pe-walk-length",
        type=nonnegative_int,
        default=0,
        help="random-walk positional encoding of this many steps (PyG's AddRandomWalkPE; 0 = none)",
    )
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0)
    p.add_argument("--epochs", type=positive_int, default=None, help=f"epochs per run (default {DEFAULTS['epochs']})")
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help=f"molecules per step (default {DEFAULTS['batch_size']})"
    )
    add_run_arguments(
        p,
        "runs/graph_classification/<dataset>-<model>.json",
        "a few epochs of a small model on the first molecules of each split (for tests)",
    )
    args = p.parse_args(argv)
    canonical = {d.lower(): d for d in OGB_GRAPH}.get(args.dataset.lower())
    if canonical is None:
        p.error(f"unknown dataset {args.dataset!r}; choose one of {', '.join(OGB_GRAPH)}")
    args.dataset = canonical
    base = dict(DEFAULTS, **SMOKE) if args.smoke else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.smoke:
        args.runs = min(args.runs, 2)
    check_heads_divide(p, args.hidden, args.heads, "--hidden")
    if args.out is None:
        args.out = f"runs/graph_classification/{args.dataset}-{args.model}.json"
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
        "hidden",
        "layers",
        "heads",
        "dropout",
        "attn_dropout",
        "pool",
        "no_edge_features",
        "pe_walk_length",
        "lr",
        "weight_decay",
        "epochs",
        "batch_size",
        "runs",
        "seed",
        "smoke",
    )
    return {k: getattr(args, k) for k in keys}


def load_data(args) -> SimpleNamespace:
    """The dataset's train/valid/test subsets (dataset views, read lazily) and its task."""
    from torch_geometric.transforms import AddRandomWalkPE

    transform = AddRandomWalkPE(args.pe_walk_length, attr_name="pe") if args.pe_walk_length else None
    dataset, split_idx = load_ogb_graph(args.root, args.dataset, transform=transform)
    if args.smoke:
        split_idx = {k: idx[: SMOKE_GRAPHS[k]] for k, idx in split_idx.items()}
    return SimpleNamespace(
        name=args.dataset,
        size=len(dataset),
        num_tasks=dataset.num_tasks,
        task_type=dataset.task_type,
        metric=dataset.eval_metric,
        **{k: dataset[idx] for k, idx in split_idx.items()},
    )


def describe(data) -> str:
    return (
        f"{data.name}: {data.size} molecules, {data.num_tasks} task(s) ({data.task_type}, scored by "
        f"{data.metric}), split {len(data.train)}/{len(data.valid)}/{len(data.test)}"
    )


def new_model(args, data) -> GraphPredictor:
    return GraphPredictor(
        args.model,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        num_tasks=data.num_tasks,
        dropout=args.dropout,
        attn_dropout=args.attn_dropout,
        pool=args.pool,
        edge_features=not args.no_edge_features,
        pe_dim=args.pe_walk_length,
    )


def predict(model, batch):
    return model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, getattr(batch, "pe", None))


def labeled_loss(out, y, task_type: str):
    """BCE-with-logits (classification) or MSE (regression) over the labels present
    (OGB's convention: a missing label is NaN, ``y == y`` is False there); None when
    the batch has no label at all."""
    y = y.view(out.shape).to(out.dtype)
    labeled = y == y
    if not bool(labeled.any()):
        return None
    if "classification" in task_type:
        return F.binary_cross_entropy_with_logits(out[labeled], y[labeled])
    return F.mse_loss(out[labeled], y[labeled])


def train_epoch(model, opt, loader, task_type: str, device) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        if batch.num_nodes < 2:  # batch norm needs two atoms (OGB's examples skip such batches too)
            continue
        batch = batch.to(device)
        opt.zero_grad()
        loss = labeled_loss(predict(model, batch), batch.y, task_type)
        if loss is None:
            continue
        loss.backward()
        opt.step()
        total += float(loss.detach()) * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model, loaders: dict, evaluator, device) -> dict:
    """OGB's metric on each split (``val_<metric>``, ``test_<metric>``)."""
    model.eval()
    scores = {}
    for split, loader in loaders.items():
        y_true, y_pred = [], []
        for batch in loader:
            batch = batch.to(device)
            out = predict(model, batch).float()
            y_pred.append(out.cpu())
            y_true.append(batch.y.view(out.shape).cpu())
        result = evaluator.eval({"y_true": torch.cat(y_true), "y_pred": torch.cat(y_pred)})
        scores[f"{split}_{evaluator.eval_metric}"] = float(result[evaluator.eval_metric])
    return scores


def improves(metric: str, value: float, best) -> bool:
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def train_run(args, run: int, data, device, ckpt_path: Path, saved, done: list, progress: bool) -> dict:
    """One seed: train ``args.epochs`` epochs, checkpointing after each; returns the
    run's state (``best``: the epoch with the best validation score, with its scores)."""
    from ogb.graphproppred import Evaluator
    from torch_geometric.loader import DataLoader

    metric = data.metric
    torch.manual_seed(args.seed + run)
    gen = torch.Generator().manual_seed(args.seed + run)  # the training order; travels in checkpoints
    model = new_model(args, data).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    st = {
        "epoch": 0,
        "best": None,
        "seconds": 0.0,
        "history": {"train_loss": [], f"val_{metric}": [], f"test_{metric}": []},
    }
    if saved is not None:
        with restoring(ckpt_path):
            restore_training_state(saved["state"], model, opt, None, gen, ckpt_path)
            st = saved["run_state"]
            print(f"resumed run {run} at epoch {st['epoch']}")
    train_loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, generator=gen)
    eval_loaders = {
        split: DataLoader(getattr(data, name), batch_size=max(args.batch_size, 256))
        for split, name in (("val", "valid"), ("test", "test"))
    }
    evaluator = Evaluator(args.dataset)
    bar = tqdm(
        total=args.epochs, initial=st["epoch"], desc=f"{args.dataset}/{args.model} run {run}", disable=not progress
    )
    while st["epoch"] < args.epochs:
        start = time.perf_counter()
        loss = train_epoch(model, opt, train_loader, data.task_type, device)
        scores = evaluate(model, eval_loaders, evaluator, device)
        st["epoch"] += 1
        st["seconds"] += time.perf_counter() - start
        st["history"]["train_loss"].append(loss)
        for key, value in scores.items():
            st["history"][key].append(value)
        best_val = None if st["best"] is None else st["best"][f"val_{metric}"]
        if improves(metric, scores[f"val_{metric}"], best_val):
            st["best"] = {"epoch": st["epoch"], **scores}
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss:.4f}", val=f"{scores[f'val_{metric}']:.4f}", best=f"{st['best'][f'val_{metric}']:.4f}"
        )
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
    return st


@exits_on_checkpoint_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        data = load_data(args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}")
    print(describe(data) + (" (smoke: the first molecules of each split)" if args.smoke else ""))
    ckpt_path = Path(args.out).with_suffix(".ckpt.pt")
    ckpt = resume_from(ckpt_path, config_of(args), args.resume, keys=("done",))
    done = ckpt["done"] if ckpt else []
    metric = data.metric
    t0 = time.perf_counter()
    for run in range(len(done), args.runs):
        saved = ckpt if ckpt is not None and ckpt.get("run") == run else None
        st = train_run(args, run, data, device, ckpt_path, saved, done, progress)
        best = st["best"]
        done.append(
            {
                "seed": args.seed + run,
                "epochs": st["epoch"],
                "best_epoch": best["epoch"],
                f"val_{metric}": best[f"val_{metric}"],
                f"test_{metric}": best[f"test_{metric}"],
                "seconds_per_epoch": st["seconds"] / st["epoch"],
                "history": st["history"],
            }
        )
        print(
            f"run {run}: test {metric} {best[f'test_{metric}']:.4f} (val {best[f'val_{metric}']:.4f}, "
            f"epoch {best['epoch']}; {st['seconds'] / st['epoch']:.2f} s/epoch)"
        )
        atomic_save({"config": config_of(args), "done": done, "run": None, "run_state": None, "state": None}, ckpt_path)

    per_run = [r[f"test_{metric}"] for r in done]
    summary = summarize_runs(per_run)
    result = {
        "dataset": args.dataset,
        "model": args.model,
        "metric": f"test_{metric}",
        "higher_is_better": metric not in LOWER_IS_BETTER,
        "mean": summary["mean"],
        "std": summary["std"],
        "runs": len(per_run),
        "per_run": per_run,
        f"val_{metric}": [r[f"val_{metric}"] for r in done],
        "best_epoch": [r["best_epoch"] for r in done],
        "epochs": [r["epochs"] for r in done],
        "seconds_per_epoch": [r["seconds_per_epoch"] for r in done],
        "config": config_of(args),
        "seconds": time.perf_counter() - t0,
        "machine": machine_info(),
        "device": str(device),
        "history": [r["history"] for r in done],
    }
    report(
        result,
        args.out,
        result["history"],
        list(result["history"][0]),
        f"{result['model'].upper()} on {result['dataset']}",
        percent=False,
    )
    return result


if __name__ == "__main__":
    main()
