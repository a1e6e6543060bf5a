import gzip
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import translation as tr  # noqa: E402

pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")
pytest.importorskip("tokenizers")

LEX = {
    "a": "ein",
    "dog": "Hund",
    "man": "Mann",
    "runs": "rennt",
    "sleeps": "schläft",
    "red": "roter",
    "big": "großer",
    "cat": "Katze",
    "sits": "sitzt",
}


def _corpus(folder: Path, gz: bool = True):
    """A toy word-for-word language pair in Multi30k's raw layout."""
    import random

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 300), ("val", 40), ("test_2016_flickr", 30)):
        src, tgt = [], []
        for _ in range(n):
            s = [
                "a",
                rng.choice(["red", "big"]),
                rng.choice(["dog", "man", "cat"]),
                rng.choice(["runs", "sleeps", "sits"]),
            ]
            src.append(" ".join(s) + ".")
            tgt.append(" ".join(LEX[w] for w in s) + ".")
        for lang, lines in (("en", src), ("de", tgt)):
            text = "\n".join(lines) + "\n"
            if gz:
                with gzip.open(folder / f"{split}.{lang}.gz", "wt", encoding="utf-8") as fh:
                    fh.write(text)
            else:
                (folder / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return str(folder)


def _args(tmp_path, *extra, gz=True):
    return [
        "--data",
        _corpus(tmp_path / "data", gz),
        "--smoke",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "res.json"),
        *extra,
    ]


def test_smoke_writes_scores_for_greedy_and_beam(tmp_path):
    res = tr.main(_args(tmp_path, "--epochs", "3", "--lr", "3e-3", gz=False))
    saved = json.loads((tmp_path / "res.json").read_text())
    for key in ("dataset", "model", "metric", "mean", "std", "runs", "per_run"):
        assert key in saved
    d = saved["details"][0]
    for mode in ("greedy", "beam"):
        assert {"bleu", "chrf", "rougeL"} <= set(d[mode])
        assert len(d[mode]["samples"]) == 5
    assert saved["per_run"] == res["per_run"] and (tmp_path / "res.png").exists()


def test_beam_of_one_equals_greedy(tmp_path):
    import torch

    torch.manual_seed(0)
    model = tr.Translator(50, 16, 2, 1, 1, 32, 0.0, 20).eval()
    src = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    assert tr.beam_search(model, src, 1, 5, "cpu", alpha=0.0) == tr.greedy(model, src, 5, "cpu")


def test_beam_finds_sequences_at_least_as_likely_as_greedy(tmp_path):
    import torch

    torch.manual_seed(1)
    model = tr.Translator(30, 16, 2, 1, 1, 32, 0.0, 20).eval()
    src = [[5, 6, 7, 8, 9], [10, 11, 12]]

    def logprob(i, hyp):
        s = tr.pad_batch([src[i]], suffix=(tr.EOS,))
        mem = model.encode(s, s == tr.PAD)
        ys = torch.tensor([[tr.BOS] + hyp + [tr.EOS]])
        lp = model.logits(model.features(ys[:, :-1], mem, s == tr.PAD)).log_softmax(-1)
        return float(lp[0].gather(1, ys[0, 1:, None]).sum())

    with torch.no_grad():
        g = tr.greedy(model, src, 6, "cpu")
        b = tr.beam_search(model, src, 4, 6, "cpu", alpha=0.0)
        for i in range(len(src)):
            if len(g[i]) < len(src[i]) + 6 and len(b[i]) < len(src[i]) + 6:  # both finished with EOS
                assert logprob(i, b[i]) >= logprob(i, g[i]) - 1e-5


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    full = tr.main(_args(tmp_path / "a", "--epochs", "2"))
    real, calls = tr.eval_loss, {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # after epoch 0 was checkpointed
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr, "eval_loss", crash)
    with pytest.raises(KeyboardInterrupt):
        tr.main(_args(tmp_path / "b", "--epochs", "2"))
    monkeypatch.setattr(tr, "eval_loss", real)
    resumed = tr.main(_args(tmp_path / "b", "--epochs", "2", "--resume"))
    assert resumed["per_run"] == full["per_run"]
    assert resumed["details"][0]["history"] == full["details"][0]["history"]


def test_bad_inputs(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        tr.main(["--data", str(tmp_path), "--smoke"])
    folder = Path(_corpus(tmp_path / "d"))
    with gzip.open(folder / "val.de.gz", "wt") as fh:
        fh.write("nur eine Zeile\n")
    with pytest.raises(SystemExit, match="aligned"):
        tr.main(["--data", str(folder), "--smoke", "--out", str(tmp_path / "r.json")])
