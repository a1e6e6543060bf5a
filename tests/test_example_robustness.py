import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import robustness as ex  # noqa: E402
import visualize_attention as va  # noqa: E402
from test_example_text_classification import _tsv  # noqa: E402


def test_robustness_smoke_writes_curves_and_plot(tmp_path):
    res = ex.main(
        [
            "--smoke",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r.json"),
            "--models",
            "gat,gat-prune",
            "--attacks",
            "gradient,random-insert",
        ]
    )
    saved = json.loads((tmp_path / "r.json").read_text())
    for key in ("dataset", "model", "metric", "mean", "std", "runs", "per_run"):
        assert key in saved
    curve = saved["curves"]["gat"]["random-insert"]
    assert set(curve) == {"0.0", "0.2"}
    assert curve["0.0"]["mass_inserted"] == 0.0 and curve["0.2"]["mass_inserted"] > 0.0
    assert 0.0 < curve["0.2"]["uniform_inserted"] < 1.0
    assert res["clean"]["gat"]["mean"] == pytest.approx(curve["0.0"]["acc"])  # budget 0 is the clean graph
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_robustness_resume_skips_finished_models(tmp_path, monkeypatch):
    args = [
        "--smoke",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "r.json"),
        "--models",
        "gat",
        "--attacks",
        "random-delete",
    ]
    first = ex.main(args)
    monkeypatch.setattr(ex, "fit_node_classifier", lambda *a, **k: pytest.fail("retrained a finished model"))
    again = ex.main(args + ["--resume"])
    assert again["curves"] == first["curves"]


def test_robustness_text_curves(tmp_path):
    import text_classification as tc

    train, dev = _tsv(tmp_path / "train.tsv", 200), _tsv(tmp_path / "dev.tsv", 40, seed=1)
    tc.main(["--train", train, "--dev", dev, "--smoke", "--no-progress", "--out", str(tmp_path / "tc.json")])
    res = ex.main(
        [
            "--smoke",
            "--no-progress",
            "--out",
            str(tmp_path / "r.json"),
            "--models",
            "dot",
            "--attacks",
            "feature-noise",
            "--text-model",
            str(tmp_path / "tc.model.pt"),
            "--text-dev",
            dev,
        ]
    )
    for name in ("token-dropout", "token-substitution"):
        assert set(res["text"][name]) == {"0.0", "0.3"}
        assert 0.0 <= res["text"][name]["0.3"]["acc"] <= 1.0


def test_robustness_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        ex.parse_args(["--models", "gat,gcn"])
    with pytest.raises(SystemExit, match="not found"):
        ex.main(["--root", str(tmp_path), "--out", str(tmp_path / "r.json")])


def test_visualize_attention_smoke_writes_pictures_and_exports(tmp_path):
    train, dev = _tsv(tmp_path / "train.tsv", 200), _tsv(tmp_path / "dev.tsv", 20, seed=1)
    out = tmp_path / "vis"
    summary = va.main(["--smoke", "--out-dir", str(out), "--text-train", train, "--text-dev", dev])
    node = summary["graph"]["node"]
    for name in (
        f"cora_neighbourhood_{node}.png",
        "cora_entropy.png",
        "sst2_heatmap_0.png",
        "sst2_heads_0.png",
        "sst2_rollout_0.png",
    ):
        assert (out / name).stat().st_size > 1000, name
    import networkx as nx

    g = nx.read_graphml(out / "cora_conv1.graphml")
    assert all("attention" in d for _, _, d in g.edges(data=True))
    assert (out / "cora_conv1.csv").read_text().startswith("source,target,head_0")
    assert 0.0 < summary["graph"]["conv1"]["mean_normalized_entropy"] <= 1.0
    assert json.loads((out / "summary.json").read_text())["graph"]["node"] == node
