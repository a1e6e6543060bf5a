import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import language_model as lm  # noqa: E402
from interrupt import run_killed  # noqa: E402


def _texts(folder: Path):
    import random

    rng = random.Random(0)
    words = ["a dog runs", "two men sit", "a girl in red", "people walk on the street", "the cat sleeps"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n in (("train.txt", 600), ("valid.txt", 80), ("test.txt", 80)):
        (folder / name).write_text("\n".join(rng.choice(words) + " ." for _ in range(n)) + "\n")
        paths.append(str(folder / name))
    return paths


def _args(tmp_path, *extra):
    train, valid, test = _texts(tmp_path / "data")
    return [
        "--train",
        train,
        "--valid",
        valid,
        "--test",
        test,
        "--smoke",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "res.json"),
        *extra,
    ]


def test_smoke_compares_every_variant(tmp_path):
    lm.main(_args(tmp_path, "--steps", "20", "--eval-every", "10"))
    saved = json.loads((tmp_path / "res.json").read_text())
    for key in ("dataset", "model", "metric", "mean", "std", "runs", "per_run"):
        assert key in saved
    assert set(saved["variants"]) == set(lm.VARIANTS)
    assert saved["model"] == "char-transformer-window"
    for v in saved["variants"].values():
        assert math.isfinite(v["mean"]) and 1.0 < v["mean"] < 40.0  # learned something (vocab ~25 chars)
    # equal compute: every variant saw the same number of tokens per step
    details = saved["details"]
    assert len({d["rows_per_step"] * d["context"] for d in details}) == 1
    assert saved["variants"]["window"]["keys_per_query"] == saved["variants"]["dilated"]["keys_per_query"]
    assert (tmp_path / "res.png").exists()


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    args = ["--variants", "window,linear", "--steps", "8", "--eval-every", "2"]
    full = lm.main(_args(tmp_path / "a", *args))
    # killed in the middle of the second variant (5 evaluations per variant)
    run_killed(monkeypatch, lm, "evaluate", 7, lambda: lm.main(_args(tmp_path / "b", *args)))
    resumed = lm.main(_args(tmp_path / "b", *args, "--resume"))
    assert resumed["variants"]["linear"]["per_run"] == full["variants"]["linear"]["per_run"]
    assert resumed["per_run"] == full["per_run"]


def test_bad_inputs(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        lm.main(["--train", str(tmp_path / "missing.txt"), "--smoke"])
    with pytest.raises(SystemExit):
        lm.parse_args(["--variants", "window,nope"])
    with pytest.raises(SystemExit):
        lm.parse_args(["--window", "300", "--context", "256"])


def test_sinusoidal_positions_and_learned_option(tmp_path):
    import torch

    pe = lm.sinusoidal(10, 8)
    assert (
        pe.shape == (10, 8)
        and torch.allclose(pe[0, 1::2], torch.ones(4))
        and torch.allclose(pe[0, 0::2], torch.zeros(4))
    )
    res = lm.main(_args(tmp_path, "--variants", "window", "--positions", "learned"))
    assert res["config"]["positions"] == "learned" and math.isfinite(res["mean"])
    with pytest.raises(SystemExit):
        lm.parse_args(["--positions", "rotary"])
