"""Shared engine of the OGB node-property examples (``ogbn_arxiv.py``, ``ogbn_products.py``).

Full-graph training (one forward over the whole graph per step: what the fused
kernels make affordable) or neighbour-sampled mini-batches; OGB's ``Evaluator``;
seeds, early stopping on validation accuracy, atomic checkpoints with ``--resume``,
results JSON and curves; data-parallel under ``torchrun`` (see
:mod:`graphattn.train.distributed`).
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
from graphattn.train.datasets import describe, load_ogb_node
from graphattn.train.distributed import all_reduce_sum, cleanup, setup, shard, shard_loss_scale
from graphattn.train.experiment import (
    add_run_arguments,
    atomic_save,
    check_outputs,
    exits_on_checkpoint_error,
    machine_info,
    nonnegative_float,
    positive_float,
    positive_int,
    probability,
    report,
    resolve_device,
    restoring,
    resume_from,
    summarize_runs,
)
from graphattn.train.models import MODELS, DeepNodeClassifier
from graphattn.train.sampling import NeighborSampler, neighbor_loader_available

SMOKE = dict(epochs=4, eval_every=1, hidden=8, heads=2, layers=2, batch_size=64, num_neighbors="5,5", patience=50)


def entry_points(doc: str, name: str, defaults: dict):
    """``parse_args`` and ``main`` of an OGB node script with these defaults."""

    def parse_args(argv=None):
        p = build_parser(doc, name, defaults)
        return finish_args(p, p.parse_args(argv), name, defaults)

    @exits_on_checkpoint_error
    def main(argv=None) -> dict:
        return run(parse_args(argv), name)

    return parse_args, main


def build_parser(doc: str, name: str, defaults: dict) -> argparse.ArgumentParser:
    d = defaults
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/ogb", help=f"the folder holding {name.replace('-', '_')}/ in OGB's layout")
    p.add_argument("--model", default="gat", choices=MODELS)
    p.add_argument(
        "--mode",
        default=d["mode"],
        choices=("full", "sampled"),
        help=f"full-graph steps or neighbour-sampled mini-batches (default {d['mode']})",
    )
    p.add_argument(
        "--sampler",
        default="pyg",
        choices=("pyg", "graphattn"),
        help="sampled mode: PyG's NeighborLoader (needs pyg-lib or torch-sparse) or graphattn's plain-PyTorch sampler",
    )
    p.add_argument("--num-neighbors", default=None, help=f"fan-out per layer (default {d['num_neighbors']})")
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help=f"seed nodes per batch (default {d['batch_size']})"
    )
    p.add_argument(
        "--eval-mode",
        default="full",
        choices=("full", "sampled"),
        help="evaluate with full neighbourhoods on the whole graph, or on sampled ones (less memory)",
    )
    p.add_argument("--hidden", type=positive_int, default=None, help=f"channels per head (default {d['hidden']})")
    p.add_argument("--heads", type=positive_int, default=None, help=f"heads per layer (default {d['heads']})")
    p.add_argument("--layers", type=positive_int, default=None, help=f"attention layers (default {d['layers']})")
    p.add_argument("--dropout", type=probability, default=d["dropout"])
    p.add_argument("--input-dropout", type=probability, default=d["input_dropout"])
    p.add_argument("--attn-dropout", type=probability, default=d["attn_dropout"])
    p.add_argument("--no-norm", action="store_true", help="no batch norm between layers")
    p.add_argument("--lr", type=positive_float, default=d["lr"])
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0)
    p.add_argument("--epochs", type=positive_int, default=None, help=f"maximum epochs (default {d['epochs']})")
    p.add_argument(
        "--eval-every", type=positive_int, default=None, help=f"epochs between evaluations (default {d['eval_every']})"
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        help=f"evaluations without better validation accuracy before stopping (default {d['patience']})",
    )
    add_run_arguments(p, f"runs/{name}/<model>.json", "a few epochs of a small model (for tests)")
    return p


def finish_args(p: argparse.ArgumentParser, args: argparse.Namespace, name: str, defaults: dict):
    base = dict(defaults, **SMOKE) if args.smoke else defaults
    for key in ("num_neighbors", "batch_size", "hidden", "heads", "layers", "epochs", "eval_every", "patience"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    try:
        args.num_neighbors = [int(k) for k in str(args.num_neighbors).split(",")]
    except ValueError:
        p.error(f"--num-neighbors must be comma-separated integers, got {args.num_neighbors!r}")
    if len(args.num_neighbors) != args.layers:
        p.error(f"--num-neighbors needs one fan-out per layer ({args.layers}), got {args.num_neighbors}")
    if any(k == 0 or k < -1 for k in args.num_neighbors):
        p.error(f"--num-neighbors: each fan-out is a positive count or -1 (all neighbours), got {args.num_neighbors}")
    if args.out is None:
        args.out = f"runs/{name}/{args.model}-{args.mode}.json"
    check_outputs(
        p,
        {
            "--out": args.out,
            "checkpoint": Path(args.out).with_suffix(".ckpt.pt"),
            "plot": Path(args.out).with_suffix(".png"),
        },
    )
    args.name = name
    return args


def config_of(args) -> dict:
    keys = (
        "name",
        "model",
        "mode",
        "num_neighbors",
        "batch_size",
        "hidden",
        "heads",
        "layers",
        "dropout",
        "input_dropout",
        "attn_dropout",
        "no_norm",
        "lr",
        "weight_decay",
        "epochs",
        "eval_every",
        "patience",
        "runs",
        "seed",
        "smoke",
    )
    return {k: getattr(args, k) for k in keys}


def make_batches(args, data, nodes, gen, shuffle):
    """Mini-batches ``(n_id, local edge_index, batch_size)`` over ``nodes``."""
    if args.sampler == "pyg":
        if not neighbor_loader_available():
            raise SystemExit(
                "error: --mode sampled with --sampler pyg needs PyG's compiled sampler: install pyg-lib "
                "(pip install pyg-lib -f https://data.pyg.org/whl/torch-<version>+<cpu|cu1xx>.html) "
                "or torch-sparse, or pass --sampler graphattn for the plain-PyTorch sampler"
            )
        from torch_geometric.data import Data
        from torch_geometric.loader import NeighborLoader

        loader = NeighborLoader(
            Data(edge_index=data.edge_index, num_nodes=data.num_nodes),
            num_neighbors=args.num_neighbors,
            input_nodes=nodes,
            batch_size=args.batch_size,
            shuffle=shuffle,
            generator=gen,
        )
        return ((b.n_id, b.edge_index, b.batch_size) for b in loader)
    sampler = NeighborSampler(
        data.edge_index,
        data.num_nodes,
        args.num_neighbors,
        input_nodes=nodes,
        batch_size=args.batch_size,
        shuffle=shuffle,
        generator=gen,
    )
    return ((b.n_id, b.edge_index, b.batch_size) for b in sampler)


def train_epoch(args, ddp, opt, data, graph, info, epoch_seed: int) -> float:
    ddp.train()
    train_idx = data.split_idx["train"]
    device = info.device
    if args.mode == "full":
        # Every rank runs the same forward (same seed: same dropout masks) and takes the
        # loss of its shard; DDP's average then equals the full-batch gradient.
        mine = shard(train_idx, info).to(device)
        opt.zero_grad()
        out = ddp(data.x, graph)
        loss = F.cross_entropy(out[mine], data.y[mine], reduction="sum") * shard_loss_scale(train_idx.numel(), info)
        loss.backward()
        opt.step()
        return all_reduce_sum(float(loss.detach()) / info.world_size, info)
    # One permutation for all ranks (each takes its shard of it); neighbour draws differ per rank.
    perm = train_idx[torch.randperm(train_idx.numel(), generator=torch.Generator().manual_seed(epoch_seed))]
    gen = torch.Generator().manual_seed(epoch_seed * 7 + 1 + info.rank)
    total, count = 0.0, 0
    for n_id, edge_index, bs in make_batches(args, data.cpu_graph, shard(perm, info), gen, shuffle=False):
        n_id = n_id.to(device)
        opt.zero_grad()
        out = ddp(data.x[n_id], edge_index.to(device))[:bs]
        loss = F.cross_entropy(out, data.y[n_id[:bs]])
        loss.backward()
        opt.step()
        total += float(loss.detach()) * bs
        count += bs
    return all_reduce_sum(total, info) / max(all_reduce_sum(count, info), 1)


@torch.no_grad()
def predict(args, model, data, graph, gen):
    model.eval()
    if args.eval_mode == "full":
        return model(data.x, graph).argmax(-1)
    pred = torch.empty(data.num_nodes, dtype=torch.long, device=data.x.device)
    for n_id, edge_index, bs in make_batches(args, data.cpu_graph, torch.arange(data.num_nodes), gen, shuffle=False):
        n_id = n_id.to(data.x.device)
        pred[n_id[:bs]] = model(data.x[n_id], edge_index.to(data.x.device))[:bs].argmax(-1)
    return pred


def evaluate(args, model, data, graph, gen) -> dict:
    from ogb.nodeproppred import Evaluator

    pred = predict(args, model, data, graph, gen).cpu()
    evaluator, y = Evaluator(name=args.name), data.y.cpu()
    return {
        f"{split}_acc": float(evaluator.eval({"y_true": y[idx].view(-1, 1), "y_pred": pred[idx].view(-1, 1)})["acc"])
        for split, idx in (
            ("train", data.split_idx["train"]),
            ("val", data.split_idx["valid"]),
            ("test", data.split_idx["test"]),
        )
    }


def run(args, doc_name: str) -> dict:
    if args.sampler == "pyg" and "sampled" in (args.mode, args.eval_mode) and not neighbor_loader_available():
        make_batches(args, None, None, None, False)  # the clear error, before any data is read
    try:
        info = setup(resolve_device(args.device))
    except ValueError as e:  # more processes than GPUs
        raise SystemExit(f"error: {e}") from None
    device = info.device
    progress = info.is_main and not args.no_progress and sys.stderr.isatty()
    try:
        data = load_ogb_node(args.root, args.name)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}")
    if info.is_main:
        print(describe(data) + (f"; {info.world_size} processes" if info.enabled else ""))
    # the samplers work on the CPU copy of the structure (features stay where training runs)
    data.cpu_graph = SimpleNamespace(edge_index=data.edge_index, num_nodes=data.num_nodes)
    data.x, data.y = data.x.to(device), data.y.to(device)
    graph = (
        Graph.from_edge_index(data.edge_index.to(device), data.num_nodes)
        if "full" in (args.mode, args.eval_mode)
        else None
    )
    ckpt_path = Path(args.out).with_suffix(".ckpt.pt")
    ckpt = resume_from(ckpt_path, config_of(args), args.resume, keys=("done",))
    done = ckpt["done"] if ckpt else []
    t0 = time.perf_counter()
    for r in range(len(done), args.runs):
        torch.manual_seed(args.seed + r)
        model = DeepNodeClassifier(
            args.model,
            data.x.size(1),
            data.num_classes,
            args.hidden,
            args.heads,
            args.layers,
            args.dropout,
            args.input_dropout,
            args.attn_dropout,
            not args.no_norm,
        ).to(device)
        ddp = torch.nn.parallel.DistributedDataParallel(model) if info.enabled else model
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        st = {
            "epoch": 0,
            "best": None,
            "bad": 0,
            "history": {"train_loss": [], "train_acc": [], "val_acc": [], "test_acc": []},
        }
        if ckpt is not None and ckpt.get("run") == r:
            with restoring(ckpt_path):
                model.load_state_dict(ckpt["model"])
                opt.load_state_dict(ckpt["opt"])
                st = ckpt["run_state"]
                if info.is_main:
                    print(f"resumed run {r} at epoch {st['epoch']}")
        bar = tqdm(
            total=args.epochs, initial=st["epoch"], desc=f"{args.name}/{args.model} run {r}", disable=not progress
        )
        while st["epoch"] < args.epochs and st["bad"] < args.patience:
            # Each epoch's randomness comes from its own seed, so a resumed run draws what it would have.
            epoch_seed = (args.seed + r) * 1_000_003 + st["epoch"]
            torch.manual_seed(epoch_seed)
            loss = train_epoch(args, ddp, opt, data, graph, info, epoch_seed)
            st["epoch"] += 1
            st["history"]["train_loss"].append(loss)
            bar.update(1)
            if st["epoch"] % args.eval_every and st["epoch"] < args.epochs:
                continue
            ev = evaluate(args, model, data, graph, torch.Generator().manual_seed(epoch_seed))
            for k in ("train_acc", "val_acc", "test_acc"):
                st["history"][k].append(ev[k])
            if st["best"] is None or ev["val_acc"] > st["best"]["val_acc"]:
                st["best"], st["bad"] = {"epoch": st["epoch"], **ev}, 0
            else:
                st["bad"] += 1
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{ev['val_acc']:.4f}", best=f"{st['best']['val_acc']:.4f}")
            if info.is_main:
                atomic_save(
                    {
                        "config": config_of(args),
                        "done": done,
                        "run": r,
                        "run_state": st,
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                    },
                    ckpt_path,
                )
        bar.close()
        best = st["best"]
        done.append(
            {
                "seed": args.seed + r,
                "epochs": st["epoch"],
                "best_epoch": best["epoch"],
                "val_acc": best["val_acc"],
                "test_acc": best["test_acc"],
                "history": st["history"],
            }
        )
        if info.is_main:
            print(f"run {r}: test accuracy {best['test_acc']:.4f} (val {best['val_acc']:.4f}, epoch {best['epoch']})")
            atomic_save({"config": config_of(args), "done": done, "run": None}, ckpt_path)

    per_run = [d["test_acc"] for d in done]
    summary = summarize_runs(per_run)
    result = {
        "dataset": args.name,
        "model": args.model,
        "metric": "test_accuracy",
        "mean": summary["mean"],
        "std": summary["std"],
        "runs": len(per_run),
        "per_run": per_run,
        "val_acc": [d["val_acc"] for d in done],
        "best_epoch": [d["best_epoch"] for d in done],
        "mode": args.mode,
        "world_size": info.world_size,
        "history": [d["history"] for d in done],
        "config": config_of(args),
        "seconds": time.perf_counter() - t0,
        "machine": machine_info(),
        "device": str(device),
    }
    if info.is_main:
        report(
            result,
            args.out,
            result["history"],
            ("train_loss", "val_acc", "test_acc"),
            f"{args.model.upper()} on {args.name} ({args.mode})",
            "epoch (loss) / evaluation (accuracy)",
        )
    cleanup(info)
    return result
