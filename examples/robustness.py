#!/usr/bin/env python
"""Accuracy under attack: GAT, GATv2 and dot-product attention on Cora, with and without
the similarity-pruning defence, against random and gradient-based structure perturbations.

Models are trained on the clean graph (early stopping on validation accuracy), then
evaluated on perturbed graphs (evasion): random edge insertion, random edge deletion,
feature noise, and a greedy gradient-based edge-flip attack (SGC surrogate,
:func:`graphattn.robustness.gradient_attack`). For each budget it also records what
attention does: the first layer's mean normalised entropy and the attention mass that
lands on inserted edges (against the share uniform attention would give them).

    python examples/robustness.py                          # Cora from ../shared/data/planetoid
    python examples/robustness.py --text-model runs/text_classification/sst2-complete.model.pt

With ``--text-model`` (a classifier saved by ``examples/text_classification.py``) the
same curves are drawn for token dropout and substitution on its dev set. Results go to
``--out`` as JSON with the plot beside it; finished models and budgets are checkpointed
atomically and ``--resume`` skips them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from graphattn import explain
from graphattn import robustness as rb
from graphattn.train.datasets import contextual_sbm, describe, load_planetoid
from graphattn.train.experiment import (
    add_run_arguments,
    atomic_save,
    atomic_write_json,
    bounded,
    check_outputs,
    choice_list,
    exits_on_checkpoint_error,
    machine_info,
    nonnegative_float,
    number_list,
    positive_int,
    resolve_device,
    resume_from,
    summarize_runs,
    unit_interval,
)
from graphattn.train.models import NodeClassifier, fit_node_classifier

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = ("gat", "gatv2", "dot", "gat-prune")
ATTACKS = ("gradient", "random-insert", "random-delete", "feature-noise")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="Cora", help="Cora (Planetoid) or synthetic")
    p.add_argument("--root", default=str(SHARED / "planetoid"))
    p.add_argument(
        "--models", default=",".join(MODELS), type=choice_list(MODELS), help=f"comma-separated from {', '.join(MODELS)}"
    )
    p.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        type=choice_list(ATTACKS),
        help=f"comma-separated from {', '.join(ATTACKS)}",
    )
    p.add_argument(
        "--budgets",
        default="0,0.05,0.1,0.2,0.3",
        type=number_list(nonnegative_float),
        help="structure attacks: fractions of the edges",
    )
    p.add_argument(
        "--noise-levels",
        default="0,0.5,1,2,4",
        type=number_list(nonnegative_float),
        help="feature noise: noise std / feature std",
    )
    p.add_argument("--prune-threshold", type=bounded(float, -1, 1), default=0.1, help="cosine similarity for gat-prune")
    p.add_argument("--epochs", type=positive_int, default=300)
    p.add_argument("--patience", type=positive_int, default=100)
    p.add_argument("--text-model", default=None, help="a .model.pt from examples/text_classification.py")
    p.add_argument("--text-dev", default=str(SHARED / "text" / "sst2" / "dev.tsv"))
    p.add_argument(
        "--text-rates",
        default="0,0.1,0.2,0.3,0.5",
        type=number_list(unit_interval),
        help="token dropout and substitution: shares of the tokens",
    )
    add_run_arguments(p, "runs/robustness/<dataset>.json", "small synthetic graph, few epochs, two budgets", runs=2)
    args = p.parse_args(argv)
    if args.smoke:
        args.dataset, args.epochs, args.patience, args.runs = "synthetic", 30, 10, 1
        args.budgets, args.noise_levels = [0.0, 0.2], [0.0, 1.0]
        args.text_rates = [0.0, 0.3]
    if args.out is None:
        args.out = f"runs/robustness/{args.dataset}.json"
    args.checkpoint = str(Path(args.out).with_suffix(".ckpt.pt"))
    check_outputs(p, {"--out": args.out, "checkpoint": args.checkpoint, "plot": Path(args.out).with_suffix(".png")})
    return args


def config_of(args):
    keys = (
        "dataset",
        "models",
        "attacks",
        "budgets",
        "noise_levels",
        "prune_threshold",
        "runs",
        "epochs",
        "patience",
        "seed",
        "text_model",
        "text_rates",
        "smoke",
    )
    return {k: getattr(args, k) for k in keys}


def load_graph(args):
    if args.dataset.lower() == "synthetic":
        return contextual_sbm(num_nodes=600, num_val=150, num_test=300, seed=1) if args.smoke else contextual_sbm()
    return load_planetoid(args.root, args.dataset)


def build(kind: str, data, prune_threshold: float):
    base, prune = (kind[:-6], prune_threshold) if kind.endswith("-prune") else (kind, None)
    return NodeClassifier(base, data.x.size(1), data.num_classes, prune_threshold=prune)


def levels(args, attack: str):
    return args.noise_levels if attack == "feature-noise" else args.budgets


def perturb(attack: str, budget: float, data, seed: int, cache: dict):
    """``(x, edge_index, inserted_edges)`` for one attack at one budget."""
    none = torch.empty(2, 0, dtype=torch.long, device=data.edge_index.device)
    if budget == 0:
        return data.x, data.edge_index, none
    if attack == "random-insert":
        ei, ins = rb.insert_random_edges(data.edge_index, data.num_nodes, budget, seed)
        return data.x, ei, ins
    if attack == "random-delete":
        return data.x, rb.delete_random_edges(data.edge_index, budget, seed)[0], none
    if attack == "feature-noise":
        return rb.feature_noise(data.x, budget, seed), data.edge_index, none
    key = ("gradient", budget, seed)
    if key not in cache:  # the attack does not depend on the model being evaluated
        cache[key] = rb.gradient_attack(
            data.x, data.edge_index, data.y, data.train_mask, data.test_mask, budget, seed=seed
        )
    ei, info = cache[key]
    return data.x, ei, info["inserted"]


@torch.no_grad()
def evaluate(model, x, ei, data, inserted):
    with explain.capture(model) as cap:
        pred = model(x, ei).argmax(-1)
    acc = float((pred[data.test_mask] == data.y[data.test_mask]).float().mean())
    rec = cap["conv1"]
    ent = explain.entropy(rec)
    multi = ent["degree"] > 1
    on = rb.attention_on_edges(rec.edge_index, rec.weights, inserted, data.num_nodes)
    return {
        "acc": acc,
        "entropy": float(ent["normalized"][multi].mean()),
        "mass_inserted": on["mass"],
        "uniform_inserted": on["uniform"],
    }


def text_curves(args, device, progress):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import text_classification as tc

    model, vocab, cfg = tc.load_classifier(args.text_model, device)
    dev = tc.read_tsv(args.text_dev, cfg["labels"])  # class ids of the model's own label list
    enc = [vocab.encode(s, cfg["max_len"]) for s, _ in dev]
    labels = torch.tensor([y for _, y in dev])
    out = {}
    for name in ("token-dropout", "token-substitution"):
        out[name] = {}
        for rate in tqdm(args.text_rates, disable=not progress, desc=name):
            accs, ents = [], []
            for run in range(args.runs):
                correct, ent_sum, ent_n = 0, 0.0, 0
                for ids, _, y in tc.batches(enc, labels.tolist(), 256, shuffle=False):
                    seed = args.seed + run
                    if name == "token-dropout":
                        ids = rb.token_dropout(ids, rate, seed, pad_id=vocab.PAD, unk_id=vocab.UNK, protect=[vocab.CLS])
                    else:
                        ids = rb.token_substitution(
                            ids, rate, len(vocab), seed, pad_id=vocab.PAD, protect=[vocab.CLS], low=3
                        )
                    with explain.capture(model) as cap, torch.no_grad():
                        logits = model(ids.to(device), (ids == vocab.PAD).to(device))
                    correct += int((logits.argmax(-1).cpu() == y).sum())
                    e = explain.entropy(cap.records[0])
                    multi = e["degree"] > 1
                    ent_sum += float(e["normalized"][multi].sum())
                    ent_n += int(multi.sum()) * e["normalized"].size(1)
                accs.append(correct / len(enc))
                ents.append(ent_sum / max(ent_n, 1))
            s = summarize_runs(accs)
            out[name][str(rate)] = {"acc": s["mean"], "acc_std": s["std"], "entropy": sum(ents) / len(ents)}
            print(
                f"{name} {rate:.2f}: dev accuracy {s['mean']:.4f}, "
                f"attention entropy {out[name][str(rate)]['entropy']:.3f}"
            )
    return out


def plot(result, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    curves, attacks = result["curves"], result["config"]["attacks"]
    fig, axes = plt.subplots(2, len(attacks), figsize=(4.2 * len(attacks), 7.0), squeeze=False)
    for c, attack in enumerate(attacks):
        for model, per_attack in curves.items():
            pts = per_attack[attack]
            b = [float(k) for k in pts]
            axes[0][c].errorbar(
                b,
                [v["acc"] for v in pts.values()],
                yerr=[v["acc_std"] for v in pts.values()],
                marker="o",
                ms=3,
                capsize=2,
                label=model,
            )
            if attack in ("gradient", "random-insert"):  # share of attention relative to uniform attention's
                ratio = [
                    v["mass_inserted"] / v["uniform_inserted"] if v["uniform_inserted"] else float("nan")
                    for v in pts.values()
                ]
                axes[1][c].plot(b, ratio, marker="o", ms=3, label=model)
            else:
                axes[1][c].plot(b, [v["entropy"] for v in pts.values()], marker="o", ms=3, label=model)
        if attack in ("gradient", "random-insert"):
            axes[1][c].axhline(1.0, color="k", ls="--", lw=1, label="uniform attention")
            axes[1][c].set_ylabel("attention on inserted edges / uniform share")
        else:
            axes[1][c].set_ylabel("normalised attention entropy")
        axes[0][c].set_title(attack)
        axes[0][c].set_ylabel("test accuracy")
        for r in range(2):
            axes[r][c].set_xlabel(
                "budget" + (" (noise std / feature std)" if attack == "feature-noise" else " (fraction of edges)")
            )
            axes[r][c].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[1][0].legend(fontsize=8)
    fig.suptitle(f"{result['dataset']}: accuracy and attention under perturbation (evasion)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


@exits_on_checkpoint_error
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        data = load_graph(args)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    print(describe(data))
    data = data.to(device)
    ckpt = resume_from(args.checkpoint, config_of(args), args.resume, keys=("rows", "clean"))
    rows = ckpt["rows"] if ckpt else {}
    clean = ckpt["clean"] if ckpt else {}
    t0 = time.perf_counter()
    cache: dict = {}
    for run in range(args.runs):
        for kind in args.models:
            if all(f"{kind}|{run}|{a}|{b}" in rows for a in args.attacks for b in levels(args, a)):
                continue
            torch.manual_seed(args.seed + run)
            model = build(kind, data, args.prune_threshold).to(device)
            best = fit_node_classifier(model, data, args.epochs, args.patience, progress=progress)
            clean[f"{kind}|{run}"] = best["test_acc"]
            print(f"{kind} run {run}: clean test accuracy {best['test_acc']:.4f} (epoch {best['epoch']})")
            for attack in tqdm(args.attacks, disable=not progress, desc=kind, leave=False):
                for b in levels(args, attack):
                    x, ei, ins = perturb(attack, b, data, args.seed + run, cache)
                    rows[f"{kind}|{run}|{attack}|{b}"] = evaluate(model, x, ei, data, ins)
            atomic_save({"config": config_of(args), "rows": rows, "clean": clean}, args.checkpoint)

    curves = {}
    for kind in args.models:
        curves[kind] = {}
        for attack in args.attacks:
            curves[kind][attack] = {}
            for b in levels(args, attack):
                rs = [rows[f"{kind}|{run}|{attack}|{b}"] for run in range(args.runs)]
                s = summarize_runs([r["acc"] for r in rs])
                curves[kind][attack][str(b)] = {
                    "acc": s["mean"],
                    "acc_std": s["std"],
                    **{k: sum(r[k] for r in rs) / len(rs) for k in ("entropy", "mass_inserted", "uniform_inserted")},
                }
    main_attack = "gradient" if "gradient" in args.attacks else args.attacks[0]
    top = str(max(levels(args, main_attack)))
    per_run = [rows[f"{args.models[0]}|{run}|{main_attack}|{float(top)}"]["acc"] for run in range(args.runs)]
    s = summarize_runs(per_run)
    result = {
        "dataset": args.dataset,
        "model": args.models[0],
        "metric": f"test accuracy under {main_attack} attack, budget {top}",
        "mean": s["mean"],
        "std": s["std"],
        "runs": args.runs,
        "per_run": per_run,
        "clean": {k: summarize_runs([clean[f"{k}|{r}"] for r in range(args.runs)]) for k in args.models},
        "curves": curves,
        "config": config_of(args),
        "seconds": time.perf_counter() - t0,
        "machine": machine_info(),
        "device": str(device),
    }
    if args.text_model:
        try:
            result["text"] = text_curves(args, device, progress)
        except FileNotFoundError as e:
            raise SystemExit(f"error: {e}") from None
    atomic_write_json(result, args.out)
    png = Path(args.out).with_suffix(".png")
    plot(result, png)
    print(f"\naccuracy (mean over {args.runs} run(s)) by budget:")
    for attack in args.attacks:
        print(f"  {attack}: " + "  ".join(f"{b:>5}" for b in levels(args, attack)))
        for kind in args.models:
            print(
                f"    {kind:>10} "
                + "  ".join(f"{curves[kind][attack][str(b)]['acc']:.3f}" for b in levels(args, attack))
            )
    print(f"results: {args.out}, plot: {png}")
    return result


if __name__ == "__main__":
    main()
