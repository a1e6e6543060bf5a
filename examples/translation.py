#!/usr/bin/env python
"""Machine translation (Multi30k en->de) with an encoder-decoder built from graphattn layers.

Trained from scratch on the 29,000 training pairs; a joint BPE vocabulary (HF
``tokenizers``) is learned from the training text on the fly. The encoder runs
self-attention over the complete graph of each sentence, the decoder causal
self-attention (a triangular graph) and cross-attention (a complete bipartite
graph to the source); padding never becomes a node. Test translations are
decoded greedily and with beam search and scored with sacrebleu (BLEU, chrF,
detokenised, cased, against the raw references) and rouge-score (ROUGE-L F1):

    python examples/translation.py                      # ../shared/data/text/multi30k/raw
    python examples/translation.py --data DIR --src en --tgt de --epochs 12

``DIR`` holds ``{train,val,<test>}.{src,tgt}.gz`` (or uncompressed) line-aligned
files. Results go to ``--out`` as JSON (greedy and beam scores, sample
translations) with loss curves beside it; a checkpoint is written atomically
after every epoch and ``--resume`` continues from it.
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

from graphattn.train.experiment import (
    add_run_arguments,
    atomic_save,
    atomic_write_json,
    bounded,
    check_heads_divide,
    check_outputs,
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
from graphattn.nn import GraphTransformerDecoderLayer, GraphTransformerEncoderLayer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "multi30k" / "raw"
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
PAD, UNK, BOS, EOS = range(4)


def read_lines(folder: Path, split: str, lang: str):
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
        p = folder / name
        if p.exists():
            opener = gzip.open if p.suffix == ".gz" else open
            with opener(p, "rt", encoding="utf-8") as fh:
                return [line.rstrip("\n") for line in fh]
    raise FileNotFoundError(
        f"{folder}/{split}.{lang}[.gz] not found: --data must hold line-aligned "
        f"{{train,val,test}}.{{src,tgt}} files (Multi30k's raw/ layout)"
    )


def read_pairs(folder: Path, split: str, src: str, tgt: str):
    s, t = read_lines(folder, split, src), read_lines(folder, split, tgt)
    if len(s) != len(t):
        raise ValueError(f"{folder}/{split}: {len(s)} {src} lines but {len(t)} {tgt} lines; files must be aligned")
    return s, t


def train_tokenizer(lines, vocab_size: int):
    """Joint BPE over both languages. Metaspace keeps word boundaries, so decoding
    gives back the original spacing (sacrebleu scores detokenised text)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def encode(tok, lines, max_len: int):
    return [ids[: max_len - 1] for ids in (e.ids for e in tok.encode_batch(lines))]


class Translator(nn.Module):
    """Pre-norm transformer; source, target and output embeddings are one matrix."""

    def __init__(
        self, vocab: int, dim: int, heads: int, enc_layers: int, dec_layers: int, ff: int, dropout: float, max_len: int
    ):
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)
        self.pos = nn.Embedding(max_len + 1, dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        kw = dict(dim_feedforward=ff, dropout=dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.ModuleList(GraphTransformerEncoderLayer(dim, heads, **kw) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(GraphTransformerDecoderLayer(dim, heads, **kw) for _ in range(dec_layers))
        self.enc_norm = nn.LayerNorm(dim)
        self.dec_norm = nn.LayerNorm(dim)

    def _embed(self, ids):
        pos = torch.arange(ids.size(1), device=ids.device)
        return self.drop(self.embed(ids) * math.sqrt(self.dim) + self.pos(pos))

    def encode(self, src, src_pad):
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, src_key_padding_mask=src_pad)
        return self.enc_norm(x)

    def features(self, tgt_in, memory, src_pad, tgt_pad=None):
        """Decoder states for every target position (causal self-attention)."""
        x = self._embed(tgt_in)
        for layer in self.decoder:
            x = layer(x, memory, tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad, tgt_is_causal=True)
        return self.dec_norm(x)

    def logits(self, h):
        return F.linear(h, self.embed.weight)

    def decode(self, tgt_in, memory, src_pad):
        """Logits for the next token after ``tgt_in`` (no padding in ``tgt_in``)."""
        return self.logits(self.features(tgt_in, memory, src_pad)[:, -1])

    def loss(self, src, src_pad, tgt_in, tgt_pad, tgt_out, label_smoothing=0.0, reduction="mean"):
        """Cross-entropy over the real target tokens only (no logits for padding)."""
        h = self.features(tgt_in, self.encode(src, src_pad), src_pad, tgt_pad)
        real = tgt_out != PAD
        return F.cross_entropy(
            self.logits(h[real]), tgt_out[real], label_smoothing=label_smoothing, reduction=reduction
        )


def pad_batch(seqs, prefix=(), suffix=()):
    L = max(len(s) for s in seqs) + len(prefix) + len(suffix)
    out = torch.full((len(seqs), L), PAD, dtype=torch.long)
    for r, s in enumerate(seqs):
        row = list(prefix) + list(s) + list(suffix)
        out[r, : len(row)] = torch.tensor(row)
    return out


def batches(src, tgt, max_tokens: int, shuffle: bool, generator=None):
    """Batches of pairs of similar length holding about ``max_tokens`` source+target tokens."""
    order = torch.randperm(len(src), generator=generator).tolist() if shuffle else list(range(len(src)))
    chunk = 4096
    groups = []
    for c0 in range(0, len(order), chunk):
        idx = sorted(order[c0 : c0 + chunk], key=lambda i: (len(src[i]), len(tgt[i])))
        cur, longest = [], 0
        for i in idx:
            longest = max(longest, len(src[i]) + len(tgt[i]) + 2)
            if cur and longest * (len(cur) + 1) > max_tokens:
                groups.append(cur)
                cur, longest = [], len(src[i]) + len(tgt[i]) + 2
            cur.append(i)
        if cur:
            groups.append(cur)
    if shuffle:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    return groups


def make_batch(src, tgt, group, device):
    s = pad_batch([src[i] for i in group], suffix=(EOS,))
    t_in = pad_batch([tgt[i] for i in group], prefix=(BOS,))
    t_out = pad_batch([tgt[i] for i in group], suffix=(EOS,))
    return s.to(device), (s == PAD).to(device), t_in.to(device), (t_in == PAD).to(device), t_out.to(device)


@torch.no_grad()
def eval_loss(model, src, tgt, max_tokens, device):
    model.eval()
    total, n = 0.0, 0
    for g in batches(src, tgt, max_tokens, shuffle=False):
        s, sp, ti, tp, to = make_batch(src, tgt, g, device)
        total += model.loss(s, sp, ti, tp, to, reduction="sum").item()
        n += int((to != PAD).sum())
    return total / max(n, 1)


def _finish(seqs):
    out = []
    for row in seqs.tolist():
        row = row[1:]
        out.append(row[: row.index(EOS)] if EOS in row else row)
    return out


@torch.no_grad()
def greedy(model, src_ids, max_extra: int, device):
    s = pad_batch(src_ids, suffix=(EOS,)).to(device)
    sp = s == PAD
    memory = model.encode(s, sp)
    ys = torch.full((s.size(0), 1), BOS, dtype=torch.long, device=device)
    done = torch.zeros(s.size(0), dtype=torch.bool, device=device)
    for _ in range(s.size(1) + max_extra):
        nxt = model.decode(ys, memory, sp).argmax(-1)
        nxt = nxt.masked_fill(done, EOS)
        ys = torch.cat([ys, nxt.unsqueeze(1)], dim=1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    return _finish(ys)


@torch.no_grad()
def beam_search(model, src_ids, beam: int, max_extra: int, device, alpha: float = 0.6):
    """Batched beam search; hypotheses ranked by log-probability / ((5 + len) / 6) ** alpha (GNMT)."""
    B = len(src_ids)
    s = pad_batch(src_ids, suffix=(EOS,)).to(device)
    sp = s == PAD
    memory = model.encode(s, sp).repeat_interleave(beam, 0)
    sp = sp.repeat_interleave(beam, 0)
    ys = torch.full((B * beam, 1), BOS, dtype=torch.long, device=device)
    scores = torch.full((B, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0
    done = torch.zeros(B * beam, dtype=torch.bool, device=device)
    lengths = torch.zeros(B * beam, device=device)
    base = (torch.arange(B, device=device) * beam).unsqueeze(1)
    for _ in range(s.size(1) + max_extra):
        logp = model.decode(ys, memory, sp).float().log_softmax(-1)
        V = logp.size(-1)
        logp[done] = float("-inf")
        logp[done, EOS] = 0.0  # a finished hypothesis stays as it is
        cand = (scores.view(-1, 1) + logp).view(B, beam * V)
        scores, idx = cand.topk(beam, dim=-1)
        src_beam = (base + idx // V).view(-1)
        tok = (idx % V).view(-1)
        ys = torch.cat([ys[src_beam], tok.unsqueeze(1)], dim=1)
        lengths = lengths[src_beam] + (~done[src_beam]).float()
        done = done[src_beam] | (tok == EOS)
        if bool(done.all()):
            break
    norm = scores / ((5.0 + lengths.view(B, beam)) / 6.0) ** alpha
    best = norm.argmax(-1) + base.squeeze(1)
    return _finish(ys[best])


def translate(model, tok, src_ids, mode: str, beam: int, batch_size: int, device, progress: bool):
    model.eval()
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    out = [None] * len(src_ids)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for ch in tqdm(chunks, disable=not progress, desc=f"decode ({mode})"):
        ids = [src_ids[i] for i in ch]
        hyp = greedy(model, ids, 10, device) if mode == "greedy" else beam_search(model, ids, beam, 10, device)
        for i, h in zip(ch, hyp):
            out[i] = tok.decode(h)
    return out


def score(hyps, refs):
    import sacrebleu
    from rouge_score import rouge_scorer

    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    chrf = sacrebleu.corpus_chrf(hyps, [refs])
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rl = sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / max(len(refs), 1)
    return {"bleu": bleu.score, "chrf": chrf.score, "rougeL": 100 * rl, "bleu_signature": str(bleu)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED), help="folder with {train,val,<test>}.{src,tgt}[.gz]")
    p.add_argument("--src", default="en")
    p.add_argument("--tgt", default="de")
    p.add_argument("--test-split", default="test_2016_flickr")
    p.add_argument("--dataset", default="multi30k")
    p.add_argument("--vocab-size", type=bounded(int, len(SPECIALS) + 1), default=6000, help="joint BPE vocabulary")
    p.add_argument("--dim", type=positive_int, default=256)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--enc-layers", type=positive_int, default=3)
    p.add_argument("--dec-layers", type=positive_int, default=3)
    p.add_argument("--ff", type=positive_int, default=512)
    p.add_argument("--dropout", type=probability, default=0.1)
    p.add_argument("--label-smoothing", type=probability, default=0.1)
    p.add_argument("--max-len", type=bounded(int, 2), default=100, help="tokens kept per sentence (with </s>)")
    p.add_argument("--epochs", type=positive_int, default=8)
    p.add_argument(
        "--max-tokens", type=positive_int, default=6000, help="source+target tokens per batch (with padding)"
    )
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--warmup", type=probability, default=0.08, help="fraction of the steps spent warming up")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.01)
    p.add_argument("--beam", type=positive_int, default=5)
    p.add_argument("--decode-batch", type=positive_int, default=128)
    add_run_arguments(
        p, "runs/translation/<dataset>-<src>-<tgt>.json", "tiny model, 200 training pairs, 1 epoch, 20 test sentences"
    )
    if p.parse_known_args(argv)[0].smoke:  # smoke sizes, unless given explicitly
        p.set_defaults(dim=32, heads=2, ff=64, enc_layers=1, dec_layers=1, epochs=1, vocab_size=300, beam=2)
    args = p.parse_args(argv)
    if args.smoke:
        args.runs = min(args.runs, 2)
    if args.out is None:
        args.out = f"runs/translation/{args.dataset}-{args.src}-{args.tgt}.json"
    args.checkpoint = str(Path(args.out).with_suffix(".ckpt.pt"))
    check_heads_divide(p, args.dim, args.heads)
    check_outputs(p, {"--out": args.out, "checkpoint": args.checkpoint, "plot": Path(args.out).with_suffix(".png")})
    return args


def config_of(args):
    keys = (
        "data",
        "src",
        "tgt",
        "test_split",
        "vocab_size",
        "dim",
        "heads",
        "enc_layers",
        "dec_layers",
        "ff",
        "dropout",
        "label_smoothing",
        "max_len",
        "epochs",
        "max_tokens",
        "lr",
        "warmup",
        "weight_decay",
        "beam",
        "runs",
        "seed",
        "smoke",
    )
    return {k: getattr(args, k) for k in keys}


def lr_at(step: int, total: int, warmup: float) -> float:
    w = max(1, int(total * warmup))
    return (step + 1) / w if step < w else max(0.0, (total - step) / max(1, total - w))


@exits_on_checkpoint_error
def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    folder = Path(args.data)
    try:
        train_s, train_t = read_pairs(folder, "train", args.src, args.tgt)
        val_s, val_t = read_pairs(folder, "val", args.src, args.tgt)
        test_s, test_t = read_pairs(folder, args.test_split, args.src, args.tgt)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    if args.smoke:
        train_s, train_t, val_s, val_t = train_s[:200], train_t[:200], val_s[:50], val_t[:50]
        test_s, test_t = test_s[:20], test_t[:20]
    print(
        f"{args.dataset} {args.src}->{args.tgt}: {len(train_s)} train / {len(val_s)} val / {len(test_s)} "
        f"{args.test_split} pairs"
    )

    ckpt = resume_from(args.checkpoint, config_of(args), args.resume, keys=("done", "tokenizer"))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(ckpt["tokenizer"]) if ckpt else train_tokenizer(train_s + train_t, args.vocab_size)
    enc = {
        name: encode(tok, lines, args.max_len)
        for name, lines in (
            ("train_s", train_s),
            ("train_t", train_t),
            ("val_s", val_s),
            ("val_t", val_t),
            ("test_s", test_s),
        )
    }
    done = ckpt["done"] if ckpt else []
    t0 = time.perf_counter()
    while len(done) < args.runs:
        run = len(done)
        torch.manual_seed(args.seed + run)
        model = Translator(
            tok.get_vocab_size(),
            args.dim,
            args.heads,
            args.enc_layers,
            args.dec_layers,
            args.ff,
            args.dropout,
            args.max_len,
        ).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
        gen = torch.Generator().manual_seed(args.seed + run)
        steps_per_epoch = len(batches(enc["train_s"], enc["train_t"], args.max_tokens, False))
        total = args.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, args.warmup))
        state = {"epoch": 0, "history": {"train_loss": [], "val_loss": []}, "seconds": 0.0}
        if ckpt is not None and ckpt.get("run") == run:
            with restoring(args.checkpoint):
                restore_training_state(ckpt, model, opt, sched, gen, args.checkpoint)
                state = ckpt["state"]
        for epoch in range(state["epoch"], args.epochs):
            te = time.perf_counter()
            model.train()
            tot, n = 0.0, 0
            groups = batches(enc["train_s"], enc["train_t"], args.max_tokens, True, gen)
            bar = tqdm(groups, disable=not progress, desc=f"run {run} ep {epoch}")
            for g in bar:
                s, sp, ti, tp, to = make_batch(enc["train_s"], enc["train_t"], g, device)
                loss = model.loss(s, sp, ti, tp, to, label_smoothing=args.label_smoothing)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                k = int((to != PAD).sum())
                tot, n = tot + loss.item() * k, n + k
                bar.set_postfix(loss=f"{tot / n:.3f}")
            vl = eval_loss(model, enc["val_s"], enc["val_t"], args.max_tokens, device)
            state["epoch"] = epoch + 1
            state["history"]["train_loss"].append(tot / max(n, 1))
            state["history"]["val_loss"].append(vl)
            state["seconds"] += time.perf_counter() - te
            print(
                f"run {run} epoch {epoch}: train loss {tot / max(n, 1):.3f} (smoothed), val loss {vl:.3f} "
                f"(ppl {math.exp(vl):.2f}), {state['seconds'] / 60:.1f} min"
            )
            atomic_save(
                {
                    "config": config_of(args),
                    "tokenizer": tok.to_str(),
                    "done": done,
                    "run": run,
                    "state": state,
                    **training_state(model, opt, sched, gen),
                },
                args.checkpoint,
            )
        result = {"seed": args.seed + run, "train_seconds": state["seconds"], "history": state["history"]}
        for mode in ("greedy", "beam"):
            td = time.perf_counter()
            hyps = translate(model, tok, enc["test_s"], mode, args.beam, args.decode_batch, device, progress)
            result[mode] = score(hyps, test_t)
            result[mode]["seconds"] = time.perf_counter() - td
            result[mode]["samples"] = [
                {"src": s, "ref": r, "hyp": h} for s, r, h in zip(test_s[:5], test_t[:5], hyps[:5])
            ]
            print(
                f"run {run} {args.test_split} {mode}: BLEU {result[mode]['bleu']:.2f}, chrF "
                f"{result[mode]['chrf']:.2f}, ROUGE-L {result[mode]['rougeL']:.2f}"
            )
        done.append(result)
        atomic_save({"config": config_of(args), "tokenizer": tok.to_str(), "done": done, "run": None}, args.checkpoint)
        ckpt = None

    per_run = [r["beam"]["bleu"] for r in done]
    summary = summarize_runs(per_run)
    out = {
        "dataset": f"{args.dataset}-{args.src}-{args.tgt}/{args.test_split}",
        "model": "transformer-graphattn",
        "metric": f"BLEU (beam {args.beam})",
        "mean": summary["mean"],
        "std": summary["std"],
        "runs": len(per_run),
        "per_run": per_run,
        "greedy_bleu": summarize_runs([r["greedy"]["bleu"] for r in done]),
        "chrf": summarize_runs([r["beam"]["chrf"] for r in done]),
        "rougeL": summarize_runs([r["beam"]["rougeL"] for r in done]),
        "details": done,
        "config": config_of(args),
        "seconds": time.perf_counter() - t0,
        "machine": machine_info(),
        "device": str(device),
    }
    atomic_write_json(out, args.out)
    plot_curves(
        {k: [r["history"][k] for r in done] for k in ("train_loss", "val_loss")},
        Path(args.out).with_suffix(".png"),
        title=f"{args.dataset} {args.src}->{args.tgt}",
    )
    print(
        f"{out['dataset']}: BLEU {summary['mean']:.2f} +- {summary['std']:.2f} (beam {args.beam}), greedy "
        f"{out['greedy_bleu']['mean']:.2f}, chrF {out['chrf']['mean']:.2f}, ROUGE-L {out['rougeL']['mean']:.2f} "
        f"over {len(per_run)} run(s); results: {args.out}"
    )
    return out


if __name__ == "__main__":
    main()
