#!/usr/bin/env python
"""Node classification with GAT / GATv2 / dot-product attention.

With no arguments it trains on an embedded synthetic graph (a contextual
stochastic block model generated in-process: no download). On Planetoid:

    python examples/node_classification.py --dataset Cora --root ../shared/data/planetoid --runs 10

Any node dataset class of torch_geometric.datasets, as ClassName or ClassName:name, read
offline by PyG's own class from --root in PyG's layout (missing raw files are an error that
names them and their folder; nothing is downloaded):

    python examples/node_classification.py --dataset HeterophilousGraphDataset:Minesweeper \\
        --root ../shared/data/heterophilous --runs 10

Splits: a dataset with several split columns (masks of shape [N, S], e.g. Minesweeper's 10,
WikiCS's 20 train/val columns and one test mask) gives run r column r mod S of each mask;
one without masks (Amazon, Coauthor) gets a fresh random split per run, seeded with
--seed + r: 20 train and 30 validation nodes per class, the rest test (Shchur et al., 2018,
"Pitfalls of Graph Neural Network Evaluation"). The metric (--metric auto) is ROC-AUC of
class 1 for two-class datasets (as Platonov et al., 2023 report Minesweeper), accuracy
otherwise; it drives early stopping and is what the results report.

Defaults are the GAT paper's (8 heads x 8 hidden, 1 output head - 8 for PubMed -,
dropout 0.6 on inputs and attention, lr 0.005, weight decay 5e-4, early stopping
with patience 100 on validation loss and accuracy). Results (mean +- std over
``--runs`` seeds) go to ``--out`` as JSON, training curves to a PNG beside it, and
a checkpoint is written atomically so ``--resume`` continues a killed run to the
same result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from graphattn import Graph
from graphattn.train.datasets import PLANETOID, contextual_sbm, describe, load_planetoid
from graphattn.train.experiment import (
    add_config_argument,
    atomic_save,
    check_outputs,
    device_argument,
    exits_on_checkpoint_error,
    load_checkpoint,
    machine_info,
    nonnegative_float,
    parse_with_config,
    positive_float,
    positive_int,
    probability,
    report,
    resolve_device,
    restoring,
    seed_int,
    summarize_runs,
)
from graphattn.train.models import (
    MODELS,
    NODE_METRICS,
    EarlyStopping,
    NodeClassifier,
    evaluate_node_classifier,
    node_classifier_step,
)
from graphattn.train.pyg_datasets import load_pyg_node_dataset, parse_dataset_spec, split_for_run, split_rule

DATASETS = ("synthetic",) + PLANETOID


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(p)
    p.add_argument(
        "--dataset",
        default="synthetic",
        help=f"one of {', '.join(DATASETS)} (default: synthetic), or a torch_geometric.datasets class as "
        "ClassName or ClassName:name (WikiCS, Amazon:Computers, HeterophilousGraphDataset:Minesweeper)"
        "; run r uses mask column r mod S, or a seeded 20/30-per-class random split without masks",
    )
    p.add_argument(
        "--root",
        default="data/planetoid",
        help="dataset root: for Planetoid the folder holding <Name>/raw/; for a PyG class the root its "
        "constructor takes (a missing file's error names the folder it must be in)",
    )
    p.add_argument(
        "--metric",
        default="auto",
        choices=("auto",) + NODE_METRICS,
        help="auto (default): rocauc for two classes, accuracy otherwise",
    )
    p.add_argument("--model", default="gat", choices=MODELS)
    p.add_argument(
        "--runs", type=positive_int, default=3, help="number of seeds (default 3; the GAT paper reports 100)"
    )
    p.add_argument("--epochs", type=positive_int, default=1000, help="maximum epochs per run")
    p.add_argument("--patience", type=positive_int, default=100)
    p.add_argument("--lr", type=positive_float, default=0.005)
    p.add_argument("--weight-decay", type=nonnegative_float, default=5e-4)
    p.add_argument("--hidden", type=positive_int, default=8, help="hidden channels per head")
    p.add_argument("--heads", type=positive_int, default=8)
    p.add_argument("--out-heads", type=positive_int, default=None, help="output heads (default 1; 8 for PubMed)")
    p.add_argument("--dropout", type=probability, default=0.6)
    p.add_argument("--device", default="auto", type=device_argument, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the first run; run r uses seed + r")
    p.add_argument("--out", default=None, help="results JSON (default runs/node_classification/<dataset>-<model>.json)")
    p.add_argument("--checkpoint", default=None, help="checkpoint path (default: beside --out)")
    p.add_argument("--checkpoint-every", type=positive_int, default=25, help="epochs between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    p.add_argument("--smoke", action="store_true", help="a few epochs on a small synthetic graph (for tests)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parse_with_config(p, argv)
    args.dataset = canonical_dataset(p, args.dataset)
    if args.out_heads is None:
        args.out_heads = 8 if args.dataset == "PubMed" else 1
    if args.smoke:
        args.epochs, args.runs, args.patience = min(args.epochs, 60), min(args.runs, 2), min(args.patience, 20)
        args.checkpoint_every = min(args.checkpoint_every, 10)
    if args.out is None:
        args.out = f"runs/node_classification/{args.dataset.replace(':', '-')}-{args.model}.json"
    if args.checkpoint is None:
        args.checkpoint = str(Path(args.out).with_suffix(".ckpt.pt"))
    check_outputs(p, {"--out": args.out, "--checkpoint": args.checkpoint})
    return args


def canonical_dataset(parser, name: str) -> str:
    """The dataset's canonical spelling (``cora`` -> ``Cora``, ``amazon:computers`` ->
    ``Amazon:computers``); an unknown one is ``parser.error``."""
    canonical = {d.lower(): d for d in DATASETS}.get(name.lower())
    if canonical is not None:
        return canonical
    try:
        cls, sub = parse_dataset_spec(name)
    except ValueError as e:
        parser.error(
            f"unknown dataset {name!r} ({e}); choose one of {', '.join(DATASETS)} "
            f"or a torch_geometric.datasets class as ClassName or ClassName:name"
        )
    return f"{cls.__name__}:{sub}" if sub else cls.__name__


def load_data(args):
    if args.dataset == "synthetic":
        if args.smoke:
            return contextual_sbm(num_nodes=600, num_val=200, num_test=300, seed=1234)
        return contextual_sbm(num_nodes=3000, seed=1234)
    if args.dataset in PLANETOID:
        return load_planetoid(args.root, args.dataset)
    return load_pyg_node_dataset(args.root, args.dataset)


def resolve_metric(requested: str, num_classes: int) -> str:
    """``--metric``: auto is rocauc for two classes, accuracy otherwise."""
    if requested == "auto":
        return "rocauc" if num_classes == 2 else "accuracy"
    if requested == "rocauc" and num_classes != 2:
        raise SystemExit(f"error: --metric rocauc needs a two-class dataset; this one has {num_classes} classes")
    return requested


def short_name(metric: str) -> str:
    """The suffix of the per-run keys: ``val_acc`` as before for accuracy, ``val_rocauc``."""
    return "acc" if metric == "accuracy" else metric


def config_of(args) -> dict:
    keys = (
        "dataset",
        "model",
        "runs",
        "epochs",
        "patience",
        "lr",
        "weight_decay",
        "hidden",
        "heads",
        "out_heads",
        "dropout",
        "seed",
        "smoke",
        "metric",
    )
    return {k: getattr(args, k) for k in keys}


def new_run_state(args, run, data, device, metric="accuracy"):
    torch.manual_seed(args.seed + run)
    model = NodeClassifier(
        args.model, data.x.size(1), data.num_classes, args.hidden, args.heads, args.out_heads, args.dropout
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    return {
        "run": run,
        "epoch": 0,
        "model": model,
        "opt": opt,
        "stopper": EarlyStopping(args.patience),
        "history": {"train_loss": [], "val_loss": [], f"val_{short_name(metric)}": []},
    }


# The plain fields of a run's state that a checkpoint carries (model, optimiser and stopper apart).
RUN_FIELDS = ("run", "epoch", "history")


def save(args, state, done):
    atomic_save(
        {
            "config": config_of(args),
            "done": done,
            **{k: state[k] if state else None for k in RUN_FIELDS},
            "model": state["model"].state_dict() if state else None,
            "opt": state["opt"].state_dict() if state else None,
            "stopper": state["stopper"].state_dict() if state else None,
            "rng": torch.get_rng_state(),
        },
        args.checkpoint,
    )


def train_run(args, state, data, graph, done, progress, metric="accuracy"):
    model, opt, stopper = state["model"], state["opt"], state["stopper"]
    val_key = f"val_{short_name(metric)}"
    bar = tqdm(
        range(state["epoch"], args.epochs),
        desc=f"run {state['run']}",
        disable=not progress,
        initial=state["epoch"],
        total=args.epochs,
        leave=False,
    )
    for epoch in bar:
        loss = node_classifier_step(model, data, graph, opt)
        ev = evaluate_node_classifier(model, data, graph, metric=metric)
        h = state["history"]
        h["train_loss"].append(loss)
        h["val_loss"].append(ev["val_loss"])
        h[val_key].append(ev["val_score"])
        state["epoch"] = epoch + 1
        stopper.step(epoch, ev["val_score"], ev["val_loss"], test_score=ev["test_score"])
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{ev['val_score']:.3f}")
        if stopper.stop or state["epoch"] % args.checkpoint_every == 0:
            save(args, state, done)
        if stopper.stop:
            break
    bar.close()
    return stopper.best


def resume_state(args, data, device, metric):
    """``(done, state)`` from the checkpoint under ``--resume``, else ``([], None)``."""
    ckpt = load_checkpoint(args.checkpoint) if args.resume else None
    if ckpt is None:
        return [], None
    if ckpt.get("config") != config_of(args):
        raise SystemExit(
            f"error: checkpoint {args.checkpoint} was written with a different configuration:"
            f" {ckpt.get('config')}; remove it or rerun with those arguments"
        )
    state = None
    with restoring(args.checkpoint):
        done = ckpt["done"]
        if ckpt["run"] is not None and ckpt["run"] == len(done):
            state = new_run_state(args, ckpt["run"], data, device, metric)
            state["model"].load_state_dict(ckpt["model"])
            state["opt"].load_state_dict(ckpt["opt"])
            state["stopper"].load_state_dict(ckpt["stopper"])
            for k in RUN_FIELDS:
                state[k] = ckpt[k]
            torch.set_rng_state(ckpt["rng"])
    print(
        f"resumed from {args.checkpoint}: {len(done)} run(s) done"
        + (f", run {state['run']} at epoch {state['epoch']}" if state else "")
    )
    return done, state


def summarize(args, done, metric, split, device, seconds) -> dict:
    short = short_name(metric)
    per_run = [r[f"test_{short}"] for r in done]
    summary = summarize_runs(per_run)
    return {
        "dataset": args.dataset,
        "model": args.model,
        "metric": f"test_{metric}",
        "mean": summary["mean"],
        "std": summary["std"],
        "runs": len(per_run),
        "per_run": per_run,
        f"val_{short}": [r[f"val_{short}"] for r in done],
        "epochs": [r["epochs"] for r in done],
        "split": split,
        "split_columns": [r["split"] for r in done],
        "config": config_of(args),
        "seconds": seconds,
        "machine": machine_info(),
        "device": str(device),
    }


@exits_on_checkpoint_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        data = load_data(args)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    metric, split = resolve_metric(args.metric, data.num_classes), split_rule(data)
    print(f"{describe(split_for_run(data, 0, args.seed)[0])}; {split}; metric {metric}")
    data = data.to(device)
    graph = Graph.from_edge_index(data.edge_index, data.num_nodes)  # sorted once, reused every step

    done, state = resume_state(args, data, device, metric)
    short = short_name(metric)
    t0 = time.perf_counter()
    runs_bar = tqdm(total=args.runs, initial=len(done), desc=f"{args.dataset}/{args.model}", disable=not progress)
    while len(done) < args.runs:
        run = len(done)
        run_data, columns = split_for_run(data, run, args.seed)
        if state is None or state["run"] != run:
            state = new_run_state(args, run, run_data, device, metric)
        early = train_run(args, state, run_data, graph, done, progress, metric)
        done.append(
            {
                "seed": args.seed + run,
                "epochs": state["epoch"],
                "best_epoch": early["epoch"],
                f"val_{short}": early["val_acc"],
                f"test_{short}": early["test_score"],
                "split": columns,
                "history": state["history"],
            }
        )
        print(
            f"run {run}: test {metric} {early['test_score']:.4f} (val {early['val_acc']:.4f}, "
            f"epoch {early['epoch']}, stopped after {state['epoch']})"
        )
        state = None
        save(args, None, done)
        runs_bar.update(1)
    runs_bar.close()

    result = summarize(args, done, metric, split, device, time.perf_counter() - t0)
    report(
        result,
        args.out,
        [r["history"] for r in done],
        ("train_loss", "val_loss", f"val_{short}"),
        f"{args.model.upper()} on {args.dataset}",
    )
    return result


if __name__ == "__main__":
    main()
