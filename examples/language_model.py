#!/usr/bin/env python
"""Causal character language model: sparse attention patterns vs linear attention.

One small decoder-only transformer (graphattn encoder layers run causally) is
trained several times on the same text with the same budget, changing only the
attention:

- ``complete``: causal attention over the whole context (``--context`` tokens);
- ``complete-short``: causal attention over a context of ``2 * --window`` tokens: on
  average as many keys per query as the sparse patterns (equal attention compute);
- ``window``: causal sliding window, each token sees the ``--window`` tokens before it;
- ``dilated``: causal dilated window, ``--window`` edges per query spaced ``--dilation``
  apart (a receptive field ``--dilation`` times wider at the same cost);
- ``linear``: kernelised linear attention (:class:`graphattn.nn.LinearAttention`,
  same interface) over the whole context.

Every variant sees the same number of training tokens (steps x batch x context;
the short-context model gets proportionally more rows per batch) and reports
held-out perplexity per character (and bits per character) on text split into
chunks of its own context length:

    python examples/language_model.py                       # Multi30k English captions
    python examples/language_model.py --train a.txt --valid b.txt --test c.txt --variants window,linear

Results (the ``--main`` variant in the common keys, every variant under
``variants``) go to ``--out`` as JSON with validation curves beside it; checkpoints
are written atomically every ``--eval-every`` steps and ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from graphattn import patterns
from graphattn.train.experiment import (
    add_run_arguments,
    atomic_save,
    atomic_write_json,
    check_heads_divide,
    check_outputs,
    choice_list,
    exits_on_checkpoint_error,
    machine_info,
    nonnegative_float,
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
from graphattn.nn import GraphTransformerEncoderLayer, LinearAttention

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "multi30k" / "raw"
VARIANTS = ("complete", "complete-short", "window", "dilated", "linear")


def read_text(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: give plain-text (or .gz) files for --train/--valid/--test")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as fh:
        return fh.read()


class CharVocab:
    UNK = 0

    def __init__(self, text: str):
        self.itos = ["<unk>"] + sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.stoi.get(c, self.UNK) for c in text], dtype=torch.long)

    def __len__(self):
        return len(self.itos)


def attention_setup(variant: str, context: int, window: int, dilation: int):
    """(context length, pattern for the layers or None, linear attention?, edges per query)."""
    if variant == "complete":
        return context, None, False, (context + 1) / 2
    if variant == "complete-short":  # causal over 2w tokens: w + 1/2 keys per query on average
        return 2 * window, None, False, (2 * window + 1) / 2
    if variant == "window":
        return context, (lambda Lq, Lk: patterns.sliding_window(Lq, window, 0)), False, window + 1
    if variant == "dilated":
        return context, (lambda Lq, Lk: patterns.dilated(Lq, window, dilation, causal_only=True)), False, window + 1
    if variant == "linear":
        return context, None, True, (context + 1) / 2
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def sinusoidal(length: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine position codes (Vaswani et al.): the same for every context length."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class CharLM(nn.Module):
    """Decoder-only transformer. Positions are fixed sinusoids by default: learned absolute
    embeddings train each position separately, which handicaps the longer contexts in a
    short run and would confound the comparison of attention patterns."""

    def __init__(
        self,
        vocab: int,
        dim: int,
        heads: int,
        layers: int,
        ff: int,
        dropout: float,
        context: int,
        pattern=None,
        linear: bool = False,
        positions: str = "sinusoidal",
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        if positions == "learned":
            self.pos = nn.Embedding(context, dim)
        elif positions == "sinusoidal":
            self.register_buffer("pe", sinusoidal(context, dim), persistent=False)
            self.pos = lambda idx: self.pe[idx]
        else:
            raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {positions!r}")
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = GraphTransformerEncoderLayer(
                dim, heads, ff, dropout, activation="gelu", batch_first=True, norm_first=True, pattern=pattern
            )
            if linear:  # same call signature: the layer does not know the difference
                layer.self_attn = LinearAttention(dim, heads, batch_first=True)
            self.layers.append(layer)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        x = self.drop(self.embed(ids) + self.pos(torch.arange(ids.size(1), device=ids.device)))
        for layer in self.layers:
            x = layer(x, is_causal=True)
        return self.head(self.norm(x))


def sample_batch(data: torch.Tensor, rows: int, context: int, gen: torch.Generator):
    starts = torch.randint(0, data.numel() - context - 1, (rows,), generator=gen)
    idx = starts.unsqueeze(1) + torch.arange(context + 1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def evaluate(model, data: torch.Tensor, context: int, device, rows: int = 64) -> float:
    """Mean negative log-likelihood per character over non-overlapping chunks of ``context``."""
    model.eval()
    n = (data.numel() - 1) // context
    x = data[: n * context].view(n, context)
    y = data[1 : n * context + 1].view(n, context)
    total = 0.0
    for r in range(0, n, rows):
        logits = model(x[r : r + rows].to(device))
        total += F.cross_entropy(logits.flatten(0, 1), y[r : r + rows].flatten().to(device), reduction="sum").item()
    return total / max(n * context, 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default=str(SHARED / "train.en.gz"))
    p.add_argument("--valid", default=str(SHARED / "val.en.gz"))
    p.add_argument("--test", default=str(SHARED / "test_2016_flickr.en.gz"))
    p.add_argument("--dataset", default="multi30k-en-chars")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        type=choice_list(VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)}",
    )
    p.add_argument(
        "--main",
        default=None,
        choices=VARIANTS,
        help="variant reported in the results' common keys (default: window if run, else the first)",
    )
    p.add_argument("--context", type=positive_int, default=256)
    p.add_argument(
        "--window", type=positive_int, default=32, help="edges per query of the sparse patterns (minus self)"
    )
    p.add_argument("--dilation", type=positive_int, default=4)
    p.add_argument("--dim", type=positive_int, default=128)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--ff", type=positive_int, default=512)
    p.add_argument("--dropout", type=probability, default=0.1)
    p.add_argument("--positions", default="sinusoidal", choices=["sinusoidal", "learned"])
    p.add_argument("--steps", type=positive_int, default=400)
    p.add_argument("--batch-size", type=positive_int, default=16, help="rows of --context tokens per step")
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.01)
    p.add_argument("--eval-every", type=positive_int, default=100)
    add_run_arguments(p, "runs/language_model/<dataset>.json", "tiny model, 6 steps, first 20k characters")
    if p.parse_known_args(argv)[0].smoke:  # smoke sizes, unless given explicitly
        p.set_defaults(dim=32, heads=2, layers=1, ff=64, context=64, window=8, steps=6, eval_every=3, batch_size=4)
    args = p.parse_args(argv)
    if args.main is None:
        args.main = "window" if "window" in args.variants else args.variants[0]
    elif args.main not in args.variants:
        p.error(f"--main {args.main} is not among --variants ({', '.join(args.variants)})")
    check_heads_divide(p, args.dim, args.heads)
    if args.smoke:
        args.runs = min(args.runs, 2)
    if 2 * args.window > args.context:
        p.error(f"--window must be in [1, --context / 2], got {args.window}")
    if args.out is None:
        args.out = f"runs/language_model/{args.dataset}.json"
    args.checkpoint = str(Path(args.out).with_suffix(".ckpt.pt"))
    check_outputs(p, {"--out": args.out, "checkpoint": args.checkpoint, "plot": Path(args.out).with_suffix(".png")})
    return args


def config_of(args):
    keys = (
        "train",
        "valid",
        "test",
        "variants",
        "context",
        "window",
        "dilation",
        "dim",
        "heads",
        "layers",
        "ff",
        "dropout",
        "positions",
        "steps",
        "batch_size",
        "lr",
        "weight_decay",
        "eval_every",
        "runs",
        "seed",
        "smoke",
    )
    return {k: getattr(args, k) for k in keys}


def train_one(args, variant, run, data, vocab_size, device, progress, ckpt, save):
    """Train one (variant, run); ``save(state)`` persists progress. Returns the finished record."""
    context, pattern, linear, edges = attention_setup(variant, args.context, args.window, args.dilation)
    rows = args.batch_size * args.context // context  # equal tokens per step for every variant
    seed = args.seed + run
    torch.manual_seed(seed)
    model = CharLM(
        vocab_size, args.dim, args.heads, args.layers, args.ff, args.dropout, context, pattern, linear, args.positions
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm)))
        ),
    )
    gen = torch.Generator().manual_seed(seed)
    st = {"step": 0, "seconds": 0.0, "curve": {"step": [], "val_nll": [], "train_loss": []}, "loss_acc": [0.0, 0]}
    if ckpt is not None:
        with restoring(args.checkpoint):
            restore_training_state(ckpt, model, opt, sched, gen, args.checkpoint)
            st = ckpt["state"]
    bar = tqdm(total=args.steps, initial=st["step"], disable=not progress, desc=f"{variant} run {run}")
    while st["step"] < args.steps:
        t0 = time.perf_counter()
        model.train()
        x, y = sample_batch(data["train"], rows, context, gen)
        loss = F.cross_entropy(model(x.to(device)).flatten(0, 1), y.flatten().to(device))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        st["step"] += 1
        st["loss_acc"] = [st["loss_acc"][0] + loss.item(), st["loss_acc"][1] + 1]
        st["seconds"] += time.perf_counter() - t0
        bar.update(1)
        if st["step"] % args.eval_every == 0 or st["step"] == args.steps:
            val = evaluate(model, data["valid"], context, device)
            st["curve"]["step"].append(st["step"])
            st["curve"]["val_nll"].append(val)
            st["curve"]["train_loss"].append(st["loss_acc"][0] / max(st["loss_acc"][1], 1))
            st["loss_acc"] = [0.0, 0]
            bar.set_postfix(val_ppl=f"{math.exp(val):.3f}")
            save({**training_state(model, opt, sched, gen), "state": st})
    bar.close()
    test = evaluate(model, data["test"], context, device)
    val = st["curve"]["val_nll"][-1]
    return {
        "variant": variant,
        "seed": seed,
        "context": context,
        "keys_per_query": edges,
        "rows_per_step": rows,
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": st["seconds"],
        "ms_per_step": 1000 * st["seconds"] / max(st["step"], 1),
        "val_ppl": math.exp(val),
        "test_ppl": math.exp(test),
        "test_bpc": test / math.log(2),
        "curve": st["curve"],
    }


@exits_on_checkpoint_error
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        texts = {k: read_text(getattr(args, k)) for k in ("train", "valid", "test")}
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}")
    if args.smoke:
        texts = {k: v[:20000] for k, v in texts.items()}
    vocab = CharVocab(texts["train"])
    data = {k: vocab.encode(v) for k, v in texts.items()}
    for k, d in data.items():
        if d.numel() <= args.context + 1:
            raise SystemExit(
                f"error: --{k} text has {d.numel()} characters; it needs more than --context ({args.context}) + 1"
            )
    print(
        f"{args.dataset}: {data['train'].numel():,} train / {data['valid'].numel():,} valid / "
        f"{data['test'].numel():,} test characters, vocabulary {len(vocab)}; variants {', '.join(args.variants)}"
    )

    ckpt = resume_from(args.checkpoint, config_of(args), args.resume, keys=("done",))
    done = ckpt["done"] if ckpt else []
    t0 = time.perf_counter()
    jobs = [(v, r) for r in range(args.runs) for v in args.variants]
    for variant, run in jobs[len(done) :]:
        with restoring(args.checkpoint):
            partial = ckpt["partial"] if ckpt is not None and ckpt.get("partial_job") == [variant, run] else None

        def save(state, job=(variant, run)):
            atomic_save(
                {"config": config_of(args), "done": done, "partial_job": list(job), "partial": state}, args.checkpoint
            )

        rec = train_one(args, variant, run, data, len(vocab), device, progress, partial, save)
        print(
            f"{variant:>14} run {run}: test ppl {rec['test_ppl']:.3f} ({rec['test_bpc']:.3f} bpc), val ppl "
            f"{rec['val_ppl']:.3f}, {rec['keys_per_query']:.0f} keys/query, {rec['ms_per_step']:.0f} ms/step"
        )
        done.append(rec)
        atomic_save({"config": config_of(args), "done": done, "partial_job": None}, args.checkpoint)
        ckpt = None

    variants = {}
    for v in args.variants:
        recs = [r for r in done if r["variant"] == v]
        s = summarize_runs([r["test_ppl"] for r in recs])
        variants[v] = {
            "mean": s["mean"],
            "std": s["std"],
            "per_run": [r["test_ppl"] for r in recs],
            "bpc": summarize_runs([r["test_bpc"] for r in recs])["mean"],
            "context": recs[0]["context"],
            "keys_per_query": recs[0]["keys_per_query"],
            "ms_per_step": summarize_runs([r["ms_per_step"] for r in recs])["mean"],
            "params": recs[0]["params"],
        }
    main_v = variants[args.main]
    result = {
        "dataset": args.dataset,
        "model": f"char-transformer-{args.main}",
        "metric": "test perplexity per char",
        "mean": main_v["mean"],
        "std": main_v["std"],
        "runs": len(main_v["per_run"]),
        "per_run": main_v["per_run"],
        "variants": variants,
        "details": done,
        "config": config_of(args),
        "seconds": time.perf_counter() - t0,
        "machine": machine_info(),
        "device": str(device),
    }
    atomic_write_json(result, args.out)
    plot_curves(
        {"val_nll": [r["curve"]["val_nll"] for r in done], "train_loss": [r["curve"]["train_loss"] for r in done]},
        Path(args.out).with_suffix(".png"),
        title=f"{args.dataset}: attention variants",
        xlabel=f"evaluation (every {args.eval_every} steps)",
        labels=[f"{r['variant']} (seed {r['seed']})" for r in done],
    )
    print(f"\n{'variant':>14} {'context':>8} {'keys/q':>8} {'test ppl':>9} {'bpc':>6} {'ms/step':>8}")
    for v, s in variants.items():
        print(
            f"{v:>14} {s['context']:>8} {s['keys_per_query']:>8.0f} {s['mean']:>9.3f} {s['bpc']:>6.3f} "
            f"{s['ms_per_step']:>8.0f}"
        )
    print(f"results: {args.out}")
    return result


if __name__ == "__main__":
    main()
