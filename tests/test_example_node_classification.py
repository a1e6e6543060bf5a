import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import node_classification as nc  # noqa: E402

SHARED_PLANETOID = ROOT.parent / "shared" / "data" / "planetoid"


def _args(tmp_path, *extra):
    return ["--smoke", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "res.json"), *extra]


@pytest.mark.parametrize("model", ["gat", "gatv2", "dot"])
def test_smoke_writes_results_and_curves(tmp_path, model):
    res = nc.main(_args(tmp_path, "--model", model))
    saved = json.loads((tmp_path / "res.json").read_text())
    for key in ("dataset", "model", "metric", "mean", "std", "runs", "per_run"):
        assert key in saved
    assert saved["runs"] == 2 and len(saved["per_run"]) == 2 and saved["model"] == model
    assert 0.0 <= saved["mean"] <= 1.0 and saved == json.loads(json.dumps(res))
    assert (tmp_path / "res.png").stat().st_size > 1000
    assert (tmp_path / "res.ckpt.pt").exists()


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    full = nc.main(_args(tmp_path / "a"))
    real_eval, calls = nc.evaluate, {"n": 0}

    def crashing_eval(*a, **k):
        calls["n"] += 1
        if calls["n"] == 19:  # mid-way through the second run, past a checkpoint
            raise KeyboardInterrupt
        return real_eval(*a, **k)

    monkeypatch.setattr(nc, "evaluate", crashing_eval)
    with pytest.raises(KeyboardInterrupt):
        nc.main(_args(tmp_path / "b"))
    assert not (tmp_path / "b" / "res.json").exists()
    monkeypatch.setattr(nc, "evaluate", real_eval)
    resumed = nc.main(_args(tmp_path / "b", "--resume"))
    assert resumed["per_run"] == full["per_run"]
    assert json.loads((tmp_path / "b" / "res.json").read_text())["per_run"] == full["per_run"]


def test_resume_refuses_a_different_configuration(tmp_path):
    nc.main(_args(tmp_path))
    with pytest.raises(SystemExit, match="different configuration"):
        nc.main(_args(tmp_path, "--resume", "--lr", "0.01"))


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        nc.main(_args(tmp_path, "--dataset", "Nope"))
    with pytest.raises(SystemExit, match="Cora/raw"):
        nc.main(_args(tmp_path, "--dataset", "Cora", "--root", str(tmp_path / "missing")))
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):  # argparse reports the bad --device and exits
            nc.main(_args(tmp_path, "--device", "cuda"))
        assert "argument --device: --device cuda was asked for but no CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_PLANETOID / "Cora" / "raw").exists(), reason="shared Cora not present")
def test_cora_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHATTN_CACHE", str(tmp_path / "cache"))
    res = nc.main(_args(tmp_path, "--dataset", "cora", "--root", str(SHARED_PLANETOID)))
    assert res["dataset"] == "Cora" and res["runs"] == 2
