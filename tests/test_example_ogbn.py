"""The OGB node-classification examples end to end, through ogb's own dataset
classes, on small datasets the tests write in OGB's on-disk layout."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))
import ogbn_arxiv  # noqa: E402
import ogbn_common  # noqa: E402
import ogbn_products  # noqa: E402
from launch import torchrun  # noqa: E402
from ogb_format import write_ogbn  # noqa: E402

pytest.importorskip("ogb")


@pytest.fixture(scope="module")
def ogb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ogb")
    write_ogbn(root, "ogbn-arxiv")
    write_ogbn(root, "ogbn-products")
    return root


def _args(root, out, *extra):
    return ["--root", str(root), "--smoke", "--no-progress", "--device", "cpu", "--out", str(out), *extra]


def test_arxiv_full_graph_learns_and_writes_results(ogb_root, tmp_path):
    res = ogbn_arxiv.main(_args(ogb_root, tmp_path / "r.json", "--epochs", "40", "--dropout", "0.2", "--runs", "2"))
    saved = json.loads((tmp_path / "r.json").read_text())
    for key in ("dataset", "model", "metric", "mean", "std", "runs", "per_run"):
        assert key in saved
    assert saved["dataset"] == "ogbn-arxiv" and saved["runs"] == 2 and saved["metric"] == "test_accuracy"
    # 5 real classes among OGB's 40 outputs: chance is ~0.2 on the written data
    assert res["mean"] > 0.3, res["per_run"]
    assert (tmp_path / "r.png").stat().st_size > 1000


@pytest.mark.parametrize("eval_mode", ["full", "sampled"])
def test_products_sampled_with_graphattn_sampler(ogb_root, tmp_path, eval_mode):
    res = ogbn_products.main(
        _args(
            ogb_root,
            tmp_path / "r.json",
            "--sampler",
            "graphattn",
            "--epochs",
            "30",
            "--dropout",
            "0.2",
            "--eval-mode",
            eval_mode,
        )
    )
    assert res["mode"] == "sampled" and res["mean"] > 0.25, res["per_run"]


def test_products_full_graph_mode(ogb_root, tmp_path):
    res = ogbn_products.main(_args(ogb_root, tmp_path / "r.json", "--mode", "full", "--epochs", "2"))
    assert res["mode"] == "full" and res["runs"] == 1
    assert res["mean"] == pytest.approx(res["per_run"][0]) and 0.0 <= res["mean"] <= 1.0
    assert len(res["history"][0]["train_loss"]) == 2  # one entry per epoch


def test_pyg_sampler_without_compiled_backend_says_what_to_install(ogb_root, tmp_path):
    from graphattn.train.sampling import neighbor_loader_available

    if neighbor_loader_available():
        res = ogbn_products.main(_args(ogb_root, tmp_path / "r.json", "--epochs", "2"))
        assert res["runs"] == 1
    else:
        with pytest.raises(SystemExit, match="pyg-lib.*torch-sparse.*--sampler graphattn"):
            ogbn_products.main(_args(ogb_root, tmp_path / "r.json"))


def test_killed_run_resumes_to_the_same_result(ogb_root, tmp_path, monkeypatch):
    extra = ("--epochs", "6", "--dropout", "0.2", "--sampler", "graphattn", "--mode", "sampled")
    full = ogbn_arxiv.main(_args(ogb_root, tmp_path / "a.json", *extra))
    real, calls = ogbn_common.evaluate, {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ogbn_common, "evaluate", crashing)
    with pytest.raises(KeyboardInterrupt):
        ogbn_arxiv.main(_args(ogb_root, tmp_path / "b.json", *extra))
    assert not (tmp_path / "b.json").exists()
    monkeypatch.setattr(ogbn_common, "evaluate", real)
    resumed = ogbn_arxiv.main(_args(ogb_root, tmp_path / "b.json", "--resume", *extra))
    assert resumed["per_run"] == full["per_run"]
    assert resumed["history"] == full["history"]


def test_clear_errors(ogb_root, tmp_path, capsys):
    with pytest.raises(SystemExit, match="ogbn_arxiv"):
        ogbn_arxiv.main(_args(tmp_path / "empty", tmp_path / "r.json"))
    with pytest.raises(SystemExit):
        ogbn_arxiv.parse_args(["--num-neighbors", "5,5"])  # one fan-out per layer (3)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):  # argparse reports the bad --device and exits
            ogbn_arxiv.main(_args(ogb_root, tmp_path / "r.json", "--device", "cuda"))
        assert "argument --device: --device cuda was asked for but no CUDA GPU" in capsys.readouterr().err


def test_two_processes_agree_with_one(ogb_root, tmp_path):
    """torchrun with 2 CPU processes (gloo): full-graph data parallelism gives the
    single-process losses and accuracies."""
    common = [
        "--root",
        str(ogb_root),
        "--smoke",
        "--no-progress",
        "--device",
        "cpu",
        "--epochs",
        "5",
        "--dropout",
        "0.2",
    ]
    single = ogbn_arxiv.main(common + ["--out", str(tmp_path / "one.json")])
    torchrun("ogbn_arxiv.py", common + ["--out", tmp_path / "two.json"])
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2
    assert two["per_run"] == pytest.approx(single["per_run"], abs=1e-9)
    assert two["history"][0]["train_loss"] == pytest.approx(single["history"][0]["train_loss"], rel=1e-4)
    assert two["history"][0]["val_acc"] == pytest.approx(single["history"][0]["val_acc"], abs=1e-9)


def test_sampled_shards_partition_each_epochs_training_nodes(ogb_root, monkeypatch):
    """Under torchrun each rank trains on its own shard of one shared permutation."""
    from types import SimpleNamespace

    from graphattn.train.datasets import load_ogb_node
    from graphattn.train.distributed import DistInfo

    args = ogbn_products.parse_args(["--root", str(ogb_root), "--smoke", "--sampler", "graphattn"])
    data = load_ogb_node(args.root, args.name)
    data.cpu_graph = SimpleNamespace(edge_index=data.edge_index, num_nodes=data.num_nodes)
    seen = {}

    def recording(args_, graph, nodes, gen, shuffle):
        seen[rank] = nodes.clone()
        return iter(())

    monkeypatch.setattr(ogbn_common, "make_batches", recording)
    monkeypatch.setattr(ogbn_common, "all_reduce_sum", lambda value, info: value)  # no process group here
    for rank in (0, 1):
        ogbn_common.train_epoch(args, torch.nn.Identity(), None, data, None, DistInfo(rank=rank, world_size=2), 42)
    both = torch.cat([seen[0], seen[1]])
    assert both.numel() == data.split_idx["train"].numel()
    assert torch.equal(both.sort().values, data.split_idx["train"].sort().values)
