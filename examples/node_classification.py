#!/usr/bin/env python
"""Node classification with GAT / GATv2 / dot-product attention.

With no arguments it trains on an embedded synthetic graph (a contextual
stochastic block model generated in-process: no download). On Planetoid:

    python examples/node_classification.py --dataset Cora --root ../shared/data/planetoid --runs 10

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
    atomic_save,
    check_outputs,
    device_argument,
    exits_on_checkpoint_error,
    load_checkpoint,
    machine_info,
    nonnegative_float,
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
    EarlyStopping,
    NodeClassifier,
    evaluate_node_classifier,
    node_classifier_step,
)

DATASETS = ("synthetic",) + PLANETOID


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic", help=f"one of {', '.join(DATASETS)} (default: synthetic)")
    p.add_argument("--root", default="data/planetoid", help="PyG Planetoid root: the folder holding <Name>/raw/")
    p.add_argument("--model", default="gat", choices=MODELS)
    p.add_argument("--runs", type=positive_int, default=3,
                   help="number of seeds (default 3; the GAT paper reports 100)")
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
    args = p.parse_args(argv)
    canonical = {d.lower(): d for d in DATASETS}.get(args.dataset.lower())
    if canonical is None:
        p.error(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    args.dataset = canonical
    if args.out_heads is None:
        args.out_heads = 8 if args.dataset == "PubMed" else 1
    if args.smoke:
        args.epochs, args.runs, args.patience = min(args.epochs, 60), min(args.runs, 2), min(args.patience, 20)
        args.checkpoint_every = min(args.checkpoint_every, 10)
    if args.out is None:
        args.out = f"runs/node_classification/{args.dataset}-{args.model}.json"
    if args.checkpoint is None:
        args.checkpoint = str(Path(args.out).with_suffix(".ckpt.pt"))
    check_outputs(p, {"--out": args.out, "--checkpoint": args.checkpoint})
    return args


def load_data(args):
    if args.dataset == "synthetic":
        if args.smoke:
            return contextual_sbm(num_nodes=600, num_val=200, num_test=300, seed=1234)
        return contextual_sbm(num_nodes=3000, seed=1234)
    return load_planetoid(args.root, args.dataset)


def config_of(args) -> dict:
    keys = ("dataset", "model", "runs", "epochs", "patience", "lr", "weight_decay", "hidden", "heads", "out_heads",
            "dropout", "seed", "smoke")
    return {k: getattr(args, k) for k in keys}


def new_run_state(args, run, data, device):
    torch.manual_seed(args.seed + run)
    model = NodeClassifier(args.model, data.x.size(1), data.num_classes, args.hidden, args.heads, args.out_heads,
                           args.dropout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    return {
        "run": run, "epoch": 0, "model": model, "opt": opt, "stopper": EarlyStopping(args.patience),
        "history": {"train_loss": [], "val_loss": [], "val_acc": []},
    }


# The plain fields of a run's state that a checkpoint carries (model, optimiser and stopper apart).
RUN_FIELDS = ("run", "epoch", "history")


def save(args, state, done):
    atomic_save({
        "config": config_of(args),
        "done": done,
        **{k: state[k] if state else None for k in RUN_FIELDS},
        "model": state["model"].state_dict() if state else None,
        "opt": state["opt"].state_dict() if state else None,
        "stopper": state["stopper"].state_dict() if state else None,
        "rng": torch.get_rng_state(),
    }, args.checkpoint)


def train_run(args, state, data, graph, done, progress):
    model, opt, stopper = state["model"], state["opt"], state["stopper"]
    bar = tqdm(range(state["epoch"], args.epochs), desc=f"run {state['run']}", disable=not progress,
               initial=state["epoch"], total=args.epochs, leave=False)
    for epoch in bar:
        loss = node_classifier_step(model, data, graph, opt)
        ev = evaluate_node_classifier(model, data, graph)
        h = state["history"]
        h["train_loss"].append(loss)
        h["val_loss"].append(ev["val_loss"])
        h["val_acc"].append(ev["val_acc"])
        state["epoch"] = epoch + 1
        stopper.step(epoch, ev["val_acc"], ev["val_loss"], test_acc=ev["test_acc"])
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{ev['val_acc']:.3f}")
        if stopper.stop or state["epoch"] % args.checkpoint_every == 0:
            save(args, state, done)
        if stopper.stop:
            break
    bar.close()
    return stopper.best


@exits_on_checkpoint_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        data = load_data(args)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    print(describe(data))
    data = data.to(device)
    graph = Graph.from_edge_index(data.edge_index, data.num_nodes)  # sorted once, reused every step

    done, state = [], None
    if args.resume:
        ckpt = load_checkpoint(args.checkpoint)
        if ckpt is not None:
            if ckpt.get("config") != config_of(args):
                raise SystemExit(f"error: checkpoint {args.checkpoint} was written with a different configuration:"
                                 f" {ckpt.get('config')}; remove it or rerun with those arguments")
            with restoring(args.checkpoint):
                done = ckpt["done"]
                if ckpt["run"] is not None and ckpt["run"] == len(done):
                    state = new_run_state(args, ckpt["run"], data, device)
                    state["model"].load_state_dict(ckpt["model"])
                    state["opt"].load_state_dict(ckpt["opt"])
                    state["stopper"].load_state_dict(ckpt["stopper"])
                    for k in RUN_FIELDS:
                        state[k] = ckpt[k]
                    torch.set_rng_state(ckpt["rng"])
            print(f"resumed from {args.checkpoint}: {len(done)} run(s) done"
                  + (f", run {state['run']} at epoch {state['epoch']}" if state else ""))

    t0 = time.perf_counter()
    runs_bar = tqdm(total=args.runs, initial=len(done), desc=f"{args.dataset}/{args.model}", disable=not progress)
    while len(done) < args.runs:
        run = len(done)
        if state is None or state["run"] != run:
            state = new_run_state(args, run, data, device)
        early = train_run(args, state, data, graph, done, progress)
        done.append({"seed": args.seed + run, "epochs": state["epoch"], "best_epoch": early["epoch"],
                     "val_acc": early["val_acc"], "test_acc": early["test_acc"], "history": state["history"]})
        print(f"run {run}: test accuracy {early['test_acc']:.4f} (val {early['val_acc']:.4f}, "
              f"epoch {early['epoch']}, stopped after {state['epoch']})")
        state = None
        save(args, None, done)
        runs_bar.update(1)
    runs_bar.close()

    per_run = [r["test_acc"] for r in done]
    summary = summarize_runs(per_run)
    result = {
        "dataset": args.dataset, "model": args.model, "metric": "test_accuracy",
        "mean": summary["mean"], "std": summary["std"], "runs": len(per_run), "per_run": per_run,
        "val_acc": [r["val_acc"] for r in done], "epochs": [r["epochs"] for r in done],
        "config": config_of(args), "seconds": time.perf_counter() - t0, "machine": machine_info(),
        "device": str(device),
    }
    report(result, args.out, [r["history"] for r in done], ("train_loss", "val_loss", "val_acc"),
           f"{args.model.upper()} on {args.dataset}")
    return result


if __name__ == "__main__":
    main()
