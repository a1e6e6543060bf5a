import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))
import link_prediction as lp  # noqa: E402
from launch import torchrun  # noqa: E402
from interrupt import run_killed  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
needs_cora = pytest.mark.skipif(not (SHARED / "planetoid" / "Cora" / "raw").exists(), reason="no Cora in shared data")
needs_ddi = pytest.mark.skipif(not (SHARED / "ogb" / "ogbl_ddi" / "raw").exists(), reason="no ogbl-ddi in shared data")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRAPHATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _cora(out, *extra):
    return [
        "--dataset",
        "Cora",
        "--root",
        str(SHARED / "planetoid"),
        "--smoke",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


@needs_cora
@pytest.mark.parametrize("model,decoder", [("gat", "dot"), ("gatv2", "mlp"), ("dot", "dot")])
def test_cora_smoke_learns_and_writes_results(tmp_path, model, decoder):
    res = lp.main(_cora(tmp_path / "r.json", "--model", model, "--decoder", decoder, "--epochs", "20"))
    saved = json.loads((tmp_path / "r.json").read_text())
    for key in ("dataset", "model", "metric", "mean", "std", "runs", "per_run", "test_ap", "val_auc"):
        assert key in saved
    assert saved["metric"] == "test_auc" and saved["model"] == model
    assert res["mean"] > 0.7, res  # random scores give 0.5
    assert (tmp_path / "r.png").stat().st_size > 1000


@needs_cora
def test_cora_split_is_disjoint_and_negatives_are_non_edges():
    args = lp.parse_args(["--dataset", "Cora", "--root", str(SHARED / "planetoid")])
    data = lp.load_data(args, 0)
    n = data.num_nodes
    key = lambda e: set((torch.minimum(e[0], e[1]) * n + torch.maximum(e[0], e[1])).tolist())  # noqa: E731
    train, val, test = key(data.train_pos), key(data.val_pos), key(data.test_pos)
    assert not (train & val) and not (train & test) and not (val & test)
    every = train | val | test
    assert not (key(data.val_neg) & every) and not (key(data.test_neg) & every)
    assert len(every) == 5278  # Cora's undirected edges
    msg = key(data.message)
    assert msg == train  # held-out edges never carry messages


@needs_cora
def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    extra = ("--runs", "2", "--epochs", "8")
    full = lp.main(_cora(tmp_path / "a.json", *extra))
    # killed in the second run, after its first checkpoint
    run_killed(monkeypatch, lp, "evaluate", 6, lambda: lp.main(_cora(tmp_path / "b.json", *extra)))
    resumed = lp.main(_cora(tmp_path / "b.json", "--resume", *extra))
    assert resumed["per_run"] == full["per_run"] and resumed["test_ap"] == full["test_ap"]
    with pytest.raises(SystemExit, match="another configuration"):
        lp.main(_cora(tmp_path / "b.json", "--resume", "--runs", "2", "--epochs", "9"))


@needs_ddi
def test_ddi_smoke_with_ogb_split_and_evaluator(tmp_path):
    res = lp.main(
        [
            "--dataset",
            "ogbl-ddi",
            "--root",
            str(SHARED / "ogb"),
            "--smoke",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert res["dataset"] == "ogbl-ddi" and res["metric"] == "test_hits@20"
    assert 0.0 <= res["mean"] <= 1.0 and "test_hits@10" in res and "val_hits@30" in res
    assert not list((SHARED / "ogb" / "ogbl_ddi").glob("processed"))  # shared data untouched


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        lp.parse_args(["--dataset", "Nope"])
    with pytest.raises(SystemExit, match="Cora/raw"):
        lp.main(["--dataset", "Cora", "--root", str(tmp_path), "--out", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit, match="ogbl_ddi"):
        lp.main(["--dataset", "ogbl-ddi", "--root", str(tmp_path), "--out", str(tmp_path / "r.json")])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):  # argparse reports the bad --device and exits
            lp.main(["--device", "cuda", "--out", str(tmp_path / "r.json")])
        assert "argument --device: --device cuda was asked for but no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lp.parse_args(["--val-ratio", "0.6", "--test-ratio", "0.5"])


def test_link_predictor_shapes_and_checks():
    from graphattn.train.models import LinkPredictor

    ei = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    m = LinkPredictor("gat", None, hidden=4, heads=2, num_nodes=5, decoder="mlp", decoder_hidden=3)
    z = m.encode(None, ei)
    assert z.shape == (5, 8) and m.decode(z, torch.tensor([[0, 1], [2, 3]])).shape == (2,)
    with pytest.raises(ValueError, match="num_nodes"):
        LinkPredictor("gat", None)
    with pytest.raises(ValueError, match="decoder"):
        LinkPredictor("gat", 4, decoder="cosine")


@needs_cora
def test_two_processes_agree_with_one(tmp_path):
    """torchrun, 2 CPU processes: each scores half of every batch's pairs; with the dot
    decoder the losses, scores and chosen epoch equal the single-process run's."""
    common = [
        "--dataset",
        "Cora",
        "--root",
        SHARED / "planetoid",
        "--smoke",
        "--no-progress",
        "--device",
        "cpu",
        "--epochs",
        "6",
        "--decoder",
        "dot",
    ]
    single = lp.main([str(a) for a in common] + ["--out", str(tmp_path / "one.json")])
    torchrun("link_prediction.py", common + ["--out", tmp_path / "two.json"])
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2
    assert two["per_run"] == pytest.approx(single["per_run"], abs=1e-6)
    assert two["history"][0]["train_loss"] == pytest.approx(single["history"][0]["train_loss"], rel=1e-5)


@needs_cora
def test_disjoint_supervision_edges_carry_no_messages(monkeypatch):
    args = lp.parse_args(
        [
            "--dataset",
            "Cora",
            "--root",
            str(SHARED / "planetoid"),
            "--smoke",
            "--disjoint-ratio",
            "0.3",
            "--device",
            "cpu",
        ]
    )
    data = lp.load_data(args, 0)
    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x, graph, pos, neg):
            seen.setdefault("pos", []).append(pos)
            seen["graph"] = graph
            return self.model(x, graph, pos, neg)

    model = lp.new_model(args, data, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    from graphattn.train.distributed import DistInfo

    lp.train_epoch(args, Recorder(model), opt, data, None, torch.Generator().manual_seed(0), DistInfo())
    n = data.num_nodes
    pos = torch.cat(seen["pos"], dim=1)
    assert pos.size(1) == int(0.3 * data.train_pos.size(1))
    msg = seen["graph"].edge_index
    msg_keys = set((msg[0] * n + msg[1]).tolist())
    assert not msg_keys & set((pos[0] * n + pos[1]).tolist()) and not msg_keys & set((pos[1] * n + pos[0]).tolist())
    assert len(msg_keys) == 2 * (data.train_pos.size(1) - pos.size(1))
