#!/usr/bin/env python
"""Sentence classification with a small transformer built from graphattn layers.

Trained from scratch (no pretrained embeddings). Any TSV with a header and
``sentence<TAB>label`` columns works (GLUE's SST-2 layout). Labels may be of any
kind: integers (``0``/``1``, ``1``..``5``) or strings (``positive``, ``LOC``). They
are mapped to class ids deterministically, from the training file's labels sorted
(numerically when every label is an integer, so SST-2's 0/1 stay 0/1; as text
otherwise), and that list is saved with the model; a dev/test label the training
file does not have is an error.

    python examples/text_classification.py \\
        --train ../shared/data/text/sst2/train.tsv --dev ../shared/data/text/sst2/dev.tsv

Training runs for a budget of optimiser steps (``--steps``; by default four
epochs' worth, at least 1500 steps, so a few thousand sentences get enough
updates), with a warm-up over the first ``--warmup`` of the steps and a cosine
decay after it. Dev accuracy is measured every ``--eval-every`` steps (by default
twenty times per budget); training stops early after ``--patience`` evaluations
without a better one, and the best dev model is the one kept, reported and saved.
``--test`` scores that model on a held-out file. ``--epochs N`` instead sets the
budget to N epochs.

Padding never becomes part of attention: each batch's ``key_padding_mask``
removes those edges from the graph. ``--pattern window`` swaps full attention
for a sliding window. Results (best dev accuracy, mean +- std over ``--runs``
seeds) go to ``--out`` as JSON with curves beside it; a checkpoint is written
atomically after every evaluation and ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from graphattn import patterns
from graphattn.train.experiment import (
    CheckpointError,
    add_run_arguments,
    atomic_save,
    atomic_write_json,
    check_heads_divide,
    check_outputs,
    exits_on_checkpoint_error,
    load_checkpoint,
    machine_info,
    nonnegative_float,
    nonnegative_int,
    plot_curves,
    positive_float,
    positive_int,
    probability,
    resolve_device,
    restore_training_state,
    restoring,
    resume_from,
    summarize_runs,
    training_state,
)
from graphattn.nn import GraphTransformerEncoderLayer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "sst2"
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
INTEGER = re.compile(r"[+-]?\d+")


def tokenize(text: str):
    return TOKEN.findall(text.lower())


def parse_label(text: str):
    """A label as written in the TSV: an ``int`` when it is an integer, else the stripped string."""
    text = text.strip()
    return int(text) if INTEGER.fullmatch(text) else text


def label_list(raw):
    """The sorted distinct labels (class id = position): numeric order when every
    label is an integer, text order otherwise (integers then compare as their text)."""
    raw = list(raw)
    if all(isinstance(y, int) for y in raw):
        return sorted(set(raw))
    return sorted({str(y) for y in raw})


def label_index(labels):
    """``{label: class id}`` for a list from :func:`label_list` (or a saved model)."""
    return {y: i for i, y in enumerate(labels)}


def encode_labels(raw, labels, where: str):
    """Class ids of ``raw`` labels; a label outside ``labels`` is a ``ValueError`` naming it."""
    index = label_index(labels)
    textual = not all(isinstance(y, int) for y in labels)
    ids = []
    for n, y in enumerate(raw):
        key = str(y) if textual else y
        if key not in index:
            shown = ", ".join(repr(v) for v in labels[:20]) + (", ..." if len(labels) > 20 else "")
            raise ValueError(
                f"{where}: label {y!r} (row {n + 1}) was not seen in the training data, whose labels are {shown}"
            )
        ids.append(index[key])
    return ids


def read_tsv(path: str, labels=None):
    """``[(sentence, label)]`` from a TSV with a header naming ``sentence`` and ``label``.

    Labels come back as written (``int`` for integers, ``str`` otherwise); with
    ``labels`` (a saved model's ``cfg["labels"]``) they come back as class ids, and a
    label outside that list is a ``ValueError``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: give a TSV with a header and sentence<TAB>label columns")
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or "sentence" not in header or "label" not in header:
            raise ValueError(f"{p}: the header must name 'sentence' and 'label' columns, got {header}")
        si, li = header.index("sentence"), header.index("label")
        rows = [(r[si], parse_label(r[li])) for r in reader if len(r) > max(si, li)]
    if not rows:
        raise ValueError(f"{p} has no rows")
    if labels is not None:
        ids = encode_labels([y for _, y in rows], labels, str(p))
        rows = [(s, i) for (s, _), i in zip(rows, ids)]
    return rows


class Vocab:
    PAD, UNK, CLS = 0, 1, 2

    def __init__(self, sentences, max_size: int, min_freq: int = 1):
        counts = Counter(tok for s in sentences for tok in tokenize(s))
        words = [w for w, c in counts.most_common(max_size) if c >= min_freq]
        self.itos = ["<pad>", "<unk>", "<cls>"] + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def from_itos(cls, itos):
        v = cls.__new__(cls)
        v.itos = list(itos)
        v.stoi = {w: i for i, w in enumerate(v.itos)}
        return v

    def encode(self, sentence: str, max_len: int):
        ids = [self.CLS] + [self.stoi.get(t, self.UNK) for t in tokenize(sentence)]
        return ids[:max_len]

    def __len__(self):
        return len(self.itos)


class Classifier(nn.Module):
    def __init__(self, vocab_size, num_classes, dim, heads, layers, ff, dropout, max_len, pattern, pool="mean"):
        super().__init__()
        if pool not in ("mean", "cls", "mean-max"):
            raise ValueError(f"pool must be 'mean', 'cls' or 'mean-max', got {pool!r}")
        self.pool = pool
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=Vocab.PAD)
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            GraphTransformerEncoderLayer(
                dim, heads, ff, dropout, activation="gelu", batch_first=True, norm_first=True, pattern=pattern
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(2 * dim if pool == "mean-max" else dim, num_classes)

    def forward(self, ids, pad_mask):
        x = self.embed(ids) + self.pos(torch.arange(ids.size(1), device=ids.device))
        x = self.drop(x)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad_mask)
        x = self.norm(x)
        if self.pool == "cls":
            return self.head(x[:, 0])
        keep = (~pad_mask).unsqueeze(-1).to(x.dtype)
        mean = (x * keep).sum(1) / keep.sum(1).clamp_min(1)  # mean over real tokens
        if self.pool == "mean":
            return self.head(mean)
        top = x.masked_fill(pad_mask.unsqueeze(-1), float("-inf")).amax(1)
        return self.head(torch.cat([mean, top], dim=-1))


def load_classifier(path: str, device="cpu"):
    """``(model, vocab, config)`` from the ``.model.pt`` file a run writes beside its results.

    ``config["labels"]`` is the label of each class id (the training file's labels,
    sorted); files written before labels were saved get ``[0, 1, ..., classes - 1]``."""
    hint = "pass the <out>.model.pt that examples/text_classification.py writes (train one with it)"
    saved = load_checkpoint(path, hint=hint)  # weights_only=True: a crafted file cannot run code
    if saved is None:
        raise FileNotFoundError(
            f"{path} not found: train one with examples/text_classification.py (it writes <out>.model.pt)"
        )
    missing = [k for k in ("model", "vocab", "num_classes", "config") if k not in saved]
    if missing:
        raise CheckpointError(
            f"{path} is not a model file written by examples/text_classification.py (it lacks "
            f"{', '.join(missing)}); {hint}"
        )
    with restoring(path, hint):  # a config that disagrees with the weights, or parts that disagree
        c = dict(saved["config"])
        labels = list(saved.get("labels") or range(saved["num_classes"]))
        if len(labels) != saved["num_classes"]:
            raise CheckpointError(f"{path}: {len(labels)} labels saved for {saved['num_classes']} classes; {hint}")
        c["labels"] = labels
        pattern = (
            None
            if c["pattern"] == "complete"
            else (lambda Lq, Lk: patterns.sliding_window(Lq, c["window"], c["window"]))
        )
        vocab = Vocab.from_itos(saved["vocab"])
        model = Classifier(
            len(vocab),
            saved["num_classes"],
            c["dim"],
            c["heads"],
            c["layers"],
            c["ff"],
            c["dropout"],
            c["max_len"],
            pattern,
            c.get("pool", "mean"),
        )
        model.load_state_dict(saved["model"])
    return model.to(device).eval(), vocab, c


@torch.no_grad()
def predict(model, vocab, config, sentences, device="cpu", batch_size=256):
    """The predicted label (as written in the training file) of each sentence."""
    model.eval()
    enc = [vocab.encode(s, config["max_len"]) for s in sentences]
    out = [None] * len(enc)
    for g in groups_of(enc, batch_size, None):
        ids, mask = _pad([enc[i] for i in g])
        for i, k in zip(g, model(ids.to(device), mask.to(device)).argmax(-1).tolist()):
            out[i] = config["labels"][k]
    return out


def groups_of(encoded, batch_size, generator=None):
    """Index groups of length-bucketed batches (shuffled when a generator is given)."""
    order = torch.randperm(len(encoded), generator=generator) if generator is not None else torch.arange(len(encoded))
    chunk = batch_size * 50  # sort within chunks so batches hold similar lengths
    out = []
    for c0 in range(0, len(order), chunk):
        idx = sorted(order[c0 : c0 + chunk].tolist(), key=lambda i: len(encoded[i]))
        groups = [idx[b : b + batch_size] for b in range(0, len(idx), batch_size)]
        if generator is not None:
            groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        out.extend(groups)
    return out


def _pad(seqs):
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
    return ids, ids == Vocab.PAD


def batches(encoded, labels, batch_size, shuffle, generator=None):
    """Length-bucketed batches: padded ids (B, L), padding mask, labels."""
    if shuffle and generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
    for g in groups_of(encoded, batch_size, generator if shuffle else None):
        ids, mask = _pad([encoded[i] for i in g])
        yield ids, mask, torch.tensor([labels[i] for i in g])


@torch.no_grad()
def accuracy(model, encoded, labels, batch_size, device):
    model.eval()
    correct = 0
    for ids, mask, y in batches(encoded, labels, batch_size, shuffle=False):
        correct += int((model(ids.to(device), mask.to(device)).argmax(-1).cpu() == y).sum())
    return correct / len(encoded)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default=str(SHARED / "train.tsv"))
    p.add_argument(
        "--dev",
        default=str(SHARED / "dev.tsv"),
        help="labelled TSV for early stopping and model selection (the reported dev accuracy)",
    )
    p.add_argument("--test", default=None, help="optional labelled TSV scored once with the kept (best dev) model")
    p.add_argument("--dataset", default=None, help="name for the results file (default: the train file's folder)")
    p.add_argument(
        "--pattern",
        default="complete",
        choices=["complete", "window"],
        help="full attention, or a sliding window of --window tokens each side",
    )
    p.add_argument("--window", type=positive_int, default=8)
    p.add_argument("--dim", type=positive_int, default=128)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--ff", type=positive_int, default=256)
    p.add_argument("--dropout", type=probability, default=0.2)
    p.add_argument("--max-len", type=positive_int, default=64)
    p.add_argument(
        "--pool",
        default="mean-max",
        choices=["mean", "cls", "mean-max"],
        help="sentence readout: mean of the tokens, the <cls> token, or mean and max concatenated",
    )
    p.add_argument("--word-dropout", type=probability, default=0.1, help="training tokens replaced by <unk>")
    p.add_argument("--label-smoothing", type=probability, default=0.1)
    p.add_argument("--vocab-size", type=positive_int, default=20000)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="optimiser-step budget (default: 4 epochs' worth, at least --min-steps)",
    )
    budget.add_argument(
        "--epochs", type=positive_int, default=None, help="budget of this many epochs instead of --steps"
    )
    p.add_argument("--min-steps", type=positive_int, default=1500, help="smallest automatic step budget (small data)")
    p.add_argument("--warmup", type=probability, default=0.1, help="share of the budget spent warming up the rate")
    p.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        help="steps between dev evaluations (default: budget / 20, at least 1)",
    )
    p.add_argument(
        "--patience",
        type=nonnegative_int,
        default=5,
        help="stop after this many evaluations without a better dev accuracy (0: never stop early)",
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.01)
    add_run_arguments(
        p,
        "runs/text_classification/<dataset>-<pattern>.json",
        "tiny model, first 300 training rows, 1 epoch unless --steps/--epochs say otherwise",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.dim, args.heads, args.ff, args.layers = 32, 2, 64, 1
        if args.steps is None and args.epochs is None:
            args.epochs = 1
        args.runs = min(args.runs, 2)
    if args.dataset is None:
        args.dataset = Path(args.train).resolve().parent.name
    if args.out is None:
        args.out = f"runs/text_classification/{args.dataset}-{args.pattern}.json"
    args.checkpoint = str(Path(args.out).with_suffix(".ckpt.pt"))
    args.model_path = str(Path(args.out).with_suffix(".model.pt"))  # the last run's trained model
    check_heads_divide(p, args.dim, args.heads)
    check_outputs(
        p,
        {
            "--out": args.out,
            "checkpoint": args.checkpoint,
            "model": args.model_path,
            "plot": Path(args.out).with_suffix(".png"),
        },
    )
    return args


def config_of(args):
    keys = (
        "train",
        "dev",
        "test",
        "pattern",
        "window",
        "dim",
        "heads",
        "layers",
        "ff",
        "dropout",
        "max_len",
        "pool",
        "word_dropout",
        "label_smoothing",
        "vocab_size",
        "steps",
        "epochs",
        "min_steps",
        "warmup",
        "eval_every",
        "patience",
        "batch_size",
        "lr",
        "weight_decay",
        "runs",
        "seed",
        "smoke",
    )
    return {k: getattr(args, k) for k in keys}


def schedule(args, num_train: int):
    """``(steps per epoch, step budget, steps between evaluations)`` for ``num_train`` sentences."""
    per_epoch = max(1, math.ceil(num_train / args.batch_size))
    if args.steps is not None:
        budget = args.steps
    elif args.epochs is not None:
        budget = args.epochs * per_epoch
    else:
        budget = max(args.min_steps, 4 * per_epoch)
    every = args.eval_every if args.eval_every is not None else max(1, math.ceil(budget / 20))
    return per_epoch, budget, min(every, budget)


def epoch_groups(encoded, batch_size, seed: int, epoch: int):
    """An epoch's batches, a function of (seed, epoch) alone: a resumed run rebuilds the same ones."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return groups_of(encoded, batch_size, gen)


@exits_on_checkpoint_error
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        train = read_tsv(args.train)
        if args.smoke:
            train = train[:300]
        labels = label_list(y for _, y in train)
        y_train = encode_labels([y for _, y in train], labels, args.train)
        dev = read_tsv(args.dev, labels)
        test = read_tsv(args.test, labels) if args.test else None
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    vocab = Vocab([s for s, _ in train], args.vocab_size)
    enc_train = [vocab.encode(s, args.max_len) for s, _ in train]
    enc_dev = [vocab.encode(s, args.max_len) for s, _ in dev]
    y_dev = [y for _, y in dev]
    num_classes = len(labels)
    per_epoch, budget, every = schedule(args, len(enc_train))
    pattern = (
        None if args.pattern == "complete" else (lambda Lq, Lk: patterns.sliding_window(Lq, args.window, args.window))
    )
    shown = ", ".join(map(str, labels[:10])) + (", ..." if len(labels) > 10 else "")
    print(
        f"{args.dataset}: {len(train)} train / {len(dev)} dev"
        + (f" / {len(test)} test" if test else "")
        + f" sentences, vocabulary {len(vocab)}, {num_classes} classes ({shown}), pattern {args.pattern}; "
        f"{budget} steps ({budget / per_epoch:.1f} epochs), dev every {every}, patience {args.patience}"
    )

    ckpt = resume_from(args.checkpoint, config_of(args), args.resume, keys=("done",))
    done = ckpt["done"] if ckpt else []
    t0 = time.perf_counter()
    while len(done) < args.runs:
        run = len(done)
        seed = args.seed + run
        torch.manual_seed(seed)
        model = Classifier(
            len(vocab),
            num_classes,
            args.dim,
            args.heads,
            args.layers,
            args.ff,
            args.dropout,
            args.max_len,
            pattern,
            args.pool,
        ).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=args.lr, total_steps=budget, pct_start=max(args.warmup, 1e-6)
        )
        gen = torch.Generator().manual_seed(seed)  # word dropout
        state = {
            "step": 0,
            "history": {"step": [], "train_loss": [], "dev_acc": []},
            "best": -1.0,
            "best_step": 0,
            "bad": 0,
            "stopped": False,
            "best_model": None,
            "seconds": 0.0,
        }
        if ckpt is not None and ckpt.get("run") == run:
            with restoring(args.checkpoint):
                state = ckpt["state"]
                if state["best_model"] is not None:  # the kept weights must fit too (loaded when the run ends)
                    model.load_state_dict(state["best_model"])
                restore_training_state(ckpt, model, opt, sched, gen, args.checkpoint)
        t_run = time.perf_counter() - state["seconds"]
        bar = tqdm(total=budget, initial=state["step"], disable=not progress, desc=f"run {run}")
        total, n = 0.0, 0
        while state["step"] < budget and not state["stopped"]:
            epoch, pos = divmod(state["step"], per_epoch)
            groups = epoch_groups(enc_train, args.batch_size, seed, epoch)[pos:]
            for g in groups:
                model.train()
                ids, mask = _pad([enc_train[i] for i in g])
                y = torch.tensor([y_train[i] for i in g])
                ids, mask, y = ids.to(device), mask.to(device), y.to(device)
                if args.word_dropout > 0:  # replace random real tokens by <unk> (regularises the embeddings)
                    hit = (torch.rand(ids.shape, generator=gen) < args.word_dropout).to(device)
                    ids = ids.masked_fill(hit & (ids > Vocab.CLS), Vocab.UNK)
                loss = F.cross_entropy(model(ids, mask), y, label_smoothing=args.label_smoothing)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                state["step"] += 1
                total, n = total + loss.item() * len(y), n + len(y)
                bar.update(1)
                if state["step"] % every == 0 or state["step"] == budget:
                    acc = accuracy(model, enc_dev, y_dev, 256, device)
                    h = state["history"]
                    h["step"].append(state["step"])
                    h["train_loss"].append(total / max(n, 1))
                    h["dev_acc"].append(acc)
                    total, n = 0.0, 0
                    if acc > state["best"]:
                        state["best"], state["best_step"], state["bad"] = acc, state["step"], 0
                        state["best_model"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    else:
                        state["bad"] += 1
                        state["stopped"] = 0 < args.patience <= state["bad"]
                    print(
                        f"run {run} step {state['step']}/{budget} (epoch {state['step'] / per_epoch:.1f}): "
                        f"train loss {h['train_loss'][-1]:.4f}, dev accuracy {acc:.4f}, best {state['best']:.4f} "
                        f"at step {state['best_step']}" + (", stopping early" if state["stopped"] else "")
                    )
                    state["seconds"] = time.perf_counter() - t_run
                    atomic_save(
                        {
                            "config": config_of(args),
                            "done": done,
                            "run": run,
                            "state": state,
                            **training_state(model, opt, sched, gen),
                        },
                        args.checkpoint,
                    )
                    if state["stopped"]:
                        break
                if state["step"] >= budget:
                    break
        bar.close()
        model.load_state_dict(state["best_model"])  # the kept model: the best dev evaluation
        record = {
            "seed": seed,
            "dev_acc": state["best"],
            "best_step": state["best_step"],
            "steps": state["step"],
            "stopped_early": state["stopped"],
            "seconds": state["seconds"],
            "history": state["history"],
        }
        if test is not None:
            record["test_acc"] = accuracy(
                model, [vocab.encode(s, args.max_len) for s, _ in test], [y for _, y in test], 256, device
            )
            print(f"run {run}: test accuracy {record['test_acc']:.4f} (model of step {state['best_step']})")
        atomic_save(
            {
                "model": model.state_dict(),
                "vocab": vocab.itos,
                "num_classes": num_classes,
                "labels": list(labels),
                "config": config_of(args),
            },
            args.model_path,
        )
        done.append(record)
        atomic_save({"config": config_of(args), "done": done, "run": None}, args.checkpoint)
        ckpt = None

    per_run = [r["dev_acc"] for r in done]
    summary = summarize_runs(per_run)
    result = {
        "dataset": args.dataset,
        "model": f"transformer-{args.pattern}",
        "metric": "dev_accuracy",
        "mean": summary["mean"],
        "std": summary["std"],
        "runs": len(per_run),
        "per_run": per_run,
        "selection": "best dev evaluation (early stopping)",
        "labels": list(labels),
        "train_size": len(train),
        "dev_size": len(dev),
        "budget_steps": budget,
        "eval_every": every,
        "best_step": [r["best_step"] for r in done],
        "steps_run": [r["steps"] for r in done],
        "config": config_of(args),
        "seconds": time.perf_counter() - t0,
        "machine": machine_info(),
        "device": str(device),
    }
    if test is not None:
        t = [r["test_acc"] for r in done]
        ts = summarize_runs(t)
        result.update({"test_mean": ts["mean"], "test_std": ts["std"], "test_per_run": t, "test_size": len(test)})
    atomic_write_json(result, args.out)
    plot_curves(
        {k: [r["history"][k] for r in done] for k in ("train_loss", "dev_acc")},
        Path(args.out).with_suffix(".png"),
        title=f"{args.dataset}, transformer ({args.pattern})",
        xlabel=f"evaluation (every {every} steps)",
    )
    line = (
        f"{args.dataset}: dev accuracy {100 * summary['mean']:.2f} +- {100 * summary['std']:.2f} over "
        f"{len(per_run)} run(s)"
    )
    if test is not None:
        line += f", test accuracy {100 * result['test_mean']:.2f} +- {100 * result['test_std']:.2f}"
    print(f"{line}; results: {args.out}")
    return result


if __name__ == "__main__":
    main()
