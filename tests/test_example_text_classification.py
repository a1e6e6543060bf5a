import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import text_classification as tc  # noqa: E402


def _tsv(path: Path, n: int, seed: int = 0):
    import random

    rng = random.Random(seed)
    good, bad = ["great", "lovely", "moving", "fine"], ["dull", "awful", "boring", "weak"]
    lines = ["sentence\tlabel"]
    for _ in range(n):
        y = rng.randint(0, 1)
        words = rng.sample(good if y else bad, 2) + ["film", "the"]
        rng.shuffle(words)
        lines.append(" ".join(words) + f" .\t{y}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _args(tmp_path, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    train, dev = _tsv(tmp_path / "train.tsv", 240), _tsv(tmp_path / "dev.tsv", 60, seed=1)
    return ["--train", train, "--dev", dev, "--smoke", "--no-progress", "--device", "cpu",
            "--out", str(tmp_path / "res.json"), *extra]


@pytest.mark.parametrize("pattern", ["complete", "window"])
def test_smoke_learns_the_toy_task_and_writes_results(tmp_path, pattern):
    res = tc.main(_args(tmp_path, "--pattern", pattern, "--epochs", "1", "--lr", "3e-3"))
    saved = json.loads((tmp_path / "res.json").read_text())
    for key in ("dataset", "model", "metric", "mean", "std", "runs", "per_run"):
        assert key in saved
    assert saved["per_run"] == res["per_run"] and saved["metric"] == "dev_accuracy"
    assert (tmp_path / "res.png").exists() and (tmp_path / "res.ckpt.pt").exists()


def test_resume_after_a_finished_run_reproduces_results(tmp_path):
    first = tc.main(_args(tmp_path, "--runs", "2"))
    again = tc.main(_args(tmp_path, "--runs", "2", "--resume"))
    assert again["per_run"] == first["per_run"]


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    full = tc.main(_args(tmp_path / "a", "--runs", "2"))
    real, calls = tc.accuracy, {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # second run's evaluation: the first run is checkpointed
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tc, "accuracy", crash)
    with pytest.raises(KeyboardInterrupt):
        tc.main(_args(tmp_path / "b", "--runs", "2"))
    monkeypatch.setattr(tc, "accuracy", real)
    resumed = tc.main(_args(tmp_path / "b", "--runs", "2", "--resume"))
    assert resumed["per_run"] == full["per_run"]


def test_bad_inputs(tmp_path):
    (tmp_path / "bad.tsv").write_text("text\ttarget\nhello\t1\n")
    with pytest.raises(SystemExit, match="sentence"):
        tc.main(["--train", str(tmp_path / "bad.tsv"), "--dev", str(tmp_path / "bad.tsv"), "--smoke"])
    with pytest.raises(SystemExit, match="not found"):
        tc.main(["--train", str(tmp_path / "missing.tsv"), "--smoke"])


@pytest.mark.parametrize("pool", ["mean", "cls", "mean-max"])
def test_readouts_and_saved_model_round_trip(tmp_path, pool):
    import torch

    res = tc.main(_args(tmp_path, "--pool", pool, "--word-dropout", "0.2", "--label-smoothing", "0.1"))
    model, vocab, cfg = tc.load_classifier(str(tmp_path / "res.model.pt"))
    assert cfg["pool"] == pool and model.pool == pool
    dev = tc.read_tsv(str(tmp_path / "dev.tsv"))
    enc = [vocab.encode(s, cfg["max_len"]) for s, _ in dev]
    acc = tc.accuracy(model, enc, [y for _, y in dev], 64, torch.device("cpu"))
    assert acc == pytest.approx(res["per_run"][-1])  # the saved model is the one that was scored


def test_missing_saved_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_classification.py"):
        tc.load_classifier(str(tmp_path / "none.model.pt"))
