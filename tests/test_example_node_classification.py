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
    assert saved == json.loads(json.dumps(res))
    # Five balanced classes: chance is 0.2; sixty epochs learn the graph (0.72-0.94 seen).
    assert min(saved["per_run"]) > 0.4, saved["per_run"]
    assert saved["mean"] == pytest.approx(sum(saved["per_run"]) / 2)
    assert all(1 <= e <= 60 for e in saved["epochs"]) and len(saved["val_acc"]) == 2
    assert (tmp_path / "res.png").stat().st_size > 1000
    assert (tmp_path / "res.ckpt.pt").exists()


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    full = nc.main(_args(tmp_path / "a"))
    real_eval, calls = nc.evaluate_node_classifier, {"n": 0}

    def crashing_eval(*a, **k):
        calls["n"] += 1
        if calls["n"] == 85:  # mid-way through the second run, past a checkpoint
            raise KeyboardInterrupt
        return real_eval(*a, **k)

    monkeypatch.setattr(nc, "evaluate_node_classifier", crashing_eval)
    with pytest.raises(KeyboardInterrupt):
        nc.main(_args(tmp_path / "b"))
    assert not (tmp_path / "b" / "res.json").exists()
    monkeypatch.setattr(nc, "evaluate_node_classifier", real_eval)
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
    assert min(res["per_run"]) > 1 / 7  # seven classes; sixty epochs of GAT on Cora are far above chance


def test_early_stopping_is_the_gat_papers_rule():
    from graphattn.train.models import EarlyStopping

    stopper = EarlyStopping(patience=2)
    assert stopper.step(0, val_acc=0.5, val_loss=1.0, test_acc=0.4)  # both improve: kept
    assert not stopper.step(1, val_acc=0.6, val_loss=1.1)  # accuracy only: patience resets, not kept
    assert stopper.bad_epochs == 0 and stopper.best["epoch"] == 0
    assert not stopper.step(2, val_acc=0.55, val_loss=1.05)  # neither beats its best
    assert not stopper.stop
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert not restored.step(3, val_acc=0.59, val_loss=1.2)
    assert restored.stop and restored.best == {"epoch": 0, "val_acc": 0.5, "val_loss": 1.0, "test_acc": 0.4}
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(0)


def test_fit_node_classifier_keeps_the_epoch_the_rule_keeps():
    from graphattn.train.datasets import contextual_sbm
    from graphattn.train.models import NodeClassifier, evaluate_node_classifier, fit_node_classifier

    torch.manual_seed(0)
    data = contextual_sbm(num_nodes=600, num_val=200, num_test=300, seed=1234)
    model = NodeClassifier("gat", data.x.size(1), data.num_classes, 8, 8, 1, 0.6)
    best = fit_node_classifier(model, data, epochs=60, patience=20)
    after = evaluate_node_classifier(model, data, data.edge_index)
    assert after["val_acc"] == best["val_acc"] and after["test_acc"] == best["test_acc"]
    assert after["val_loss"] == pytest.approx(best["val_loss"])
    assert best["test_acc"] > 0.4
