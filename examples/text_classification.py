#!/usr/bin/env python
"""Sentence classification with a small transformer built from graphattn layers.

Trained from scratch (no pretrained embeddings). Any TSV with a header and
``sentence<TAB>label`` columns works (GLUE's SST-2 layout):

    python examples/text_classification.py \\
        --train ../shared/data/text/sst2/train.tsv --dev ../shared/data/text/sst2/dev.tsv

Padding never becomes part of attention: each batch's ``key_padding_mask``
removes those edges from the graph. ``--pattern window`` swaps full attention
for a sliding window. Results (dev accuracy, mean +- std over ``--runs`` seeds)
go to ``--out`` as JSON with curves beside it; a checkpoint is written atomically
after every epoch and ``--resume`` continues from it.
"""
from __future__ import annotations

import argparse
import csv
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
from graphattn.experiment import (
    CheckpointError,
    add_run_arguments,
    atomic_save,
    atomic_write_json,
    load_checkpoint,
    machine_info,
    plot_curves,
    resolve_device,
    restore_training_state,
    resume_from,
    summarize_runs,
    training_state,
)
from graphattn.nn import GraphTransformerEncoderLayer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "sst2"
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str):
    return TOKEN.findall(text.lower())


def read_tsv(path: str):
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: give a TSV with a header and sentence<TAB>label columns")
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or "sentence" not in header or "label" not in header:
            raise ValueError(f"{p}: the header must name 'sentence' and 'label' columns, got {header}")
        si, li = header.index("sentence"), header.index("label")
        rows = [(r[si], int(r[li])) for r in reader if len(r) > max(si, li)]
    if not rows:
        raise ValueError(f"{p} has no rows")
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
            GraphTransformerEncoderLayer(dim, heads, ff, dropout, activation="gelu", batch_first=True,
                                         norm_first=True, pattern=pattern)
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
    """``(model, vocab, config)`` from the ``.model.pt`` file a run writes beside its results."""
    hint = "pass the <out>.model.pt that examples/text_classification.py writes (train one with it)"
    saved = load_checkpoint(path, hint=hint)  # weights_only=True: a crafted file cannot run code
    if saved is None:
        raise FileNotFoundError(f"{path} not found: train one with examples/text_classification.py (it writes "
                                f"<out>.model.pt)")
    missing = [k for k in ("model", "vocab", "num_classes", "config") if k not in saved]
    if missing:
        raise CheckpointError(f"{path} is not a model file written by examples/text_classification.py (it lacks "
                              f"{', '.join(missing)}); {hint}")
    c = saved["config"]
    pattern = None if c["pattern"] == "complete" else (
        lambda Lq, Lk: patterns.sliding_window(Lq, c["window"], c["window"]))
    vocab = Vocab.from_itos(saved["vocab"])
    model = Classifier(len(vocab), saved["num_classes"], c["dim"], c["heads"], c["layers"], c["ff"], c["dropout"],
                       c["max_len"], pattern, c.get("pool", "mean"))
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), vocab, c


def batches(encoded, labels, batch_size, shuffle, generator=None):
    """Length-bucketed batches: padded ids (B, L), padding mask, labels."""
    order = torch.randperm(len(encoded), generator=generator) if shuffle else torch.arange(len(encoded))
    chunk = batch_size * 50  # sort within chunks so batches hold similar lengths
    for c0 in range(0, len(order), chunk):
        idx = sorted(order[c0:c0 + chunk].tolist(), key=lambda i: len(encoded[i]))
        groups = [idx[b:b + batch_size] for b in range(0, len(idx), batch_size)]
        if shuffle:
            groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        for g in groups:
            L = max(len(encoded[i]) for i in g)
            ids = torch.zeros(len(g), L, dtype=torch.long)
            for r, i in enumerate(g):
                ids[r, :len(encoded[i])] = torch.tensor(encoded[i])
            yield ids, ids == Vocab.PAD, torch.tensor([labels[i] for i in g])


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
    p.add_argument("--dev", default=str(SHARED / "dev.tsv"))
    p.add_argument("--dataset", default=None, help="name for the results file (default: the train file's folder)")
    p.add_argument("--pattern", default="complete", choices=["complete", "window"],
                   help="full attention, or a sliding window of --window tokens each side")
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--ff", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--pool", default="mean-max", choices=["mean", "cls", "mean-max"],
                   help="sentence readout: mean of the tokens, the <cls> token, or mean and max concatenated")
    p.add_argument("--word-dropout", type=float, default=0.1, help="training tokens replaced by <unk>")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--vocab-size", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    add_run_arguments(p, "runs/text_classification/<dataset>-<pattern>.json",
                      "tiny model, first 300 training rows, 1 epoch")
    args = p.parse_args(argv)
    if args.smoke:
        args.dim, args.heads, args.ff, args.layers, args.epochs = 32, 2, 64, 1, 1
        args.runs = min(args.runs, 2)
    if args.dataset is None:
        args.dataset = Path(args.train).resolve().parent.name
    if args.out is None:
        args.out = f"runs/text_classification/{args.dataset}-{args.pattern}.json"
    args.checkpoint = str(Path(args.out).with_suffix(".ckpt.pt"))
    args.model_path = str(Path(args.out).with_suffix(".model.pt"))  # the last run's trained model
    return args


def config_of(args):
    keys = ("train", "dev", "pattern", "window", "dim", "heads", "layers", "ff", "dropout", "max_len", "pool",
            "word_dropout", "label_smoothing", "vocab_size",
            "epochs", "batch_size", "lr", "weight_decay", "runs", "seed", "smoke")
    return {k: getattr(args, k) for k in keys}


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        train, dev = read_tsv(args.train), read_tsv(args.dev)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    if args.smoke:
        train = train[:300]
    vocab = Vocab([s for s, _ in train], args.vocab_size)
    enc_train = [vocab.encode(s, args.max_len) for s, _ in train]
    enc_dev = [vocab.encode(s, args.max_len) for s, _ in dev]
    y_train, y_dev = [y for _, y in train], [y for _, y in dev]
    num_classes = max(y_train + y_dev) + 1
    pattern = None if args.pattern == "complete" else (
        lambda Lq, Lk: patterns.sliding_window(Lq, args.window, args.window))
    print(f"{args.dataset}: {len(train)} train / {len(dev)} dev sentences, vocabulary {len(vocab)}, "
          f"{num_classes} classes, pattern {args.pattern}")

    try:
        ckpt = resume_from(args.checkpoint, config_of(args), args.resume)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    done = ckpt["done"] if ckpt else []
    t0 = time.perf_counter()
    while len(done) < args.runs:
        run = len(done)
        torch.manual_seed(args.seed + run)
        model = Classifier(len(vocab), num_classes, args.dim, args.heads, args.layers, args.ff, args.dropout,
                           args.max_len, pattern, args.pool).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        steps = args.epochs * ((len(enc_train) + args.batch_size - 1) // args.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(steps, 1), pct_start=0.1)
        gen = torch.Generator().manual_seed(args.seed + run)
        state = {"epoch": 0, "history": {"train_loss": [], "dev_acc": []}, "best": -1.0}
        if ckpt is not None and ckpt.get("run") == run:
            restore_training_state(ckpt, model, opt, sched, gen)
            state = ckpt["state"]
        for epoch in range(state["epoch"], args.epochs):
            model.train()
            total, n = 0.0, 0
            bar = tqdm(batches(enc_train, y_train, args.batch_size, True, gen), disable=not progress,
                       total=(len(enc_train) + args.batch_size - 1) // args.batch_size, desc=f"run {run} ep {epoch}")
            for ids, mask, y in bar:
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
                total, n = total + loss.item() * len(y), n + len(y)
                bar.set_postfix(loss=f"{total / n:.3f}")
            acc = accuracy(model, enc_dev, y_dev, 256, device)
            state["epoch"] = epoch + 1
            state["history"]["train_loss"].append(total / max(n, 1))
            state["history"]["dev_acc"].append(acc)
            state["best"] = max(state["best"], acc)
            print(f"run {run} epoch {epoch}: train loss {total / max(n, 1):.4f}, dev accuracy {acc:.4f}")
            atomic_save({"config": config_of(args), "done": done, "run": run, "state": state,
                         **training_state(model, opt, sched, gen)}, args.checkpoint)
        atomic_save({"model": model.state_dict(), "vocab": vocab.itos, "num_classes": num_classes,
                     "config": config_of(args)}, args.model_path)
        done.append({"seed": args.seed + run, "dev_acc": state["history"]["dev_acc"][-1],
                     "history": state["history"]})
        atomic_save({"config": config_of(args), "done": done, "run": None}, args.checkpoint)
        ckpt = None

    per_run = [r["dev_acc"] for r in done]
    summary = summarize_runs(per_run)
    result = {"dataset": args.dataset, "model": f"transformer-{args.pattern}", "metric": "dev_accuracy",
              "mean": summary["mean"], "std": summary["std"], "runs": len(per_run), "per_run": per_run,
              "config": config_of(args), "seconds": time.perf_counter() - t0, "machine": machine_info(),
              "device": str(device)}
    atomic_write_json(result, args.out)
    plot_curves({k: [r["history"][k] for r in done] for k in ("train_loss", "dev_acc")},
                Path(args.out).with_suffix(".png"), title=f"{args.dataset}, transformer ({args.pattern})")
    print(f"{args.dataset}: dev accuracy {100 * summary['mean']:.2f} +- {100 * summary['std']:.2f} over "
          f"{len(per_run)} run(s); results: {args.out}")
    return result


if __name__ == "__main__":
    main()
