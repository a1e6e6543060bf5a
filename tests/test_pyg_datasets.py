"""examples/node_classification.py on any torch_geometric.datasets node class, read offline.

The data are written here in PyG's on-disk layouts (HeterophilousGraphDataset's .npz with
per-split mask rows, Amazon's CSR .npz without masks), so PyG's own classes process them."""

import json
import shutil
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import node_classification as nc  # noqa: E402

from graphattn.train.models import node_metric  # noqa: E402
from graphattn.train.pyg_datasets import random_class_split  # noqa: E402

SHARED_MINESWEEPER = Path("/work/shared/data/heterophilous/minesweeper")
QUICK = ["--no-progress", "--device", "cpu", "--epochs", "4", "--patience", "4", "--hidden", "4", "--heads", "2"]


def _labels_and_features(n, classes, rng):
    y = rng.integers(0, classes, n)
    x = np.eye(classes, dtype=np.float32)[y] + rng.normal(0, 0.5, (n, classes)).astype(np.float32)
    return x, y.astype(np.int64)


def write_heterophilous(root, name="minesweeper", n=60, classes=2, splits=3):
    """``root/<name>/raw/<name>.npz`` as HeterophilousGraphDataset reads it; split s puts a
    different half of the nodes in train."""
    rng = np.random.default_rng(0)
    x, y = _labels_and_features(n, classes, rng)
    edges = np.stack([np.arange(n), (np.arange(n) + 1) % n], axis=1).astype(np.int64)
    masks = {k: np.zeros((splits, n), dtype=bool) for k in ("train_masks", "val_masks", "test_masks")}
    for s in range(splits):
        perm = np.random.default_rng(100 + s).permutation(n)
        masks["train_masks"][s, perm[: n // 2]] = True
        masks["val_masks"][s, perm[n // 2 : 3 * n // 4]] = True
        masks["test_masks"][s, perm[3 * n // 4 :]] = True
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True)
    np.savez(raw / f"{name}.npz", node_features=x, node_labels=y, edges=edges, **masks)
    return masks


def write_amazon(root, name="computers", per_class=60, classes=3):
    """``root/<Name>/raw/amazon_electronics_<name>.npz``: CSR features and adjacency, labels, no masks."""
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    n = per_class * classes
    y = np.repeat(np.arange(classes), per_class)
    attr = sp.csr_matrix((rng.random((n, 8)) < 0.3) | (np.arange(8)[None, :] % classes == y[:, None]))
    src = np.arange(n)
    adj = sp.csr_matrix((np.ones(n), (src, (src + 1) % n)), shape=(n, n))
    raw = Path(root) / name.capitalize() / "raw"
    raw.mkdir(parents=True)
    np.savez(
        raw / f"amazon_electronics_{name}.npz",
        attr_data=attr.data.astype(np.float32),
        attr_indices=attr.indices,
        attr_indptr=attr.indptr,
        attr_shape=attr.shape,
        adj_data=adj.data,
        adj_indices=adj.indices,
        adj_indptr=adj.indptr,
        adj_shape=adj.shape,
        labels=y,
    )
    return y


def _run(tmp_path, dataset, *extra):
    return nc.main(
        ["--dataset", dataset, "--root", str(tmp_path / "data"), "--out", str(tmp_path / "res.json"), *QUICK, *extra]
    )


def test_run_r_trains_and_tests_on_mask_column_r_mod_s(tmp_path, monkeypatch):
    masks = write_heterophilous(tmp_path / "data", splits=3)
    seen, real_step = [], nc.node_classifier_step

    def recording_step(model, data, graph, opt):
        seen.append((data.train_mask.clone(), data.test_mask.clone()))
        return real_step(model, data, graph, opt)

    monkeypatch.setattr(nc, "node_classifier_step", recording_step)
    res = _run(tmp_path, "HeterophilousGraphDataset:Minesweeper", "--runs", "4", "--epochs", "1")
    assert res["split_columns"] == [{"train": c, "val": c, "test": c} for c in (0, 1, 2, 0)]
    assert "r mod S" in res["split"]
    for run, (train, test) in enumerate(seen):
        assert torch.equal(train, torch.from_numpy(masks["train_masks"][run % 3]))
        assert torch.equal(test, torch.from_numpy(masks["test_masks"][run % 3]))


def test_two_classes_report_rocauc_and_the_results_json_says_so(tmp_path):
    write_heterophilous(tmp_path / "data")
    res = _run(tmp_path, "heterophilousgraphdataset:minesweeper", "--runs", "2")
    saved = json.loads((tmp_path / "res.json").read_text())
    assert saved["metric"] == res["metric"] == "test_rocauc"
    assert len(saved["val_rocauc"]) == 2 and "val_acc" not in saved
    assert all(0.0 <= v <= 1.0 for v in saved["per_run"])
    assert saved["dataset"] == "HeterophilousGraphDataset:minesweeper"


def test_more_classes_report_accuracy_and_metric_overrides(tmp_path, capsys):
    write_heterophilous(tmp_path / "data", name="roman_empire", classes=3)
    assert _run(tmp_path, "HeterophilousGraphDataset:Roman-empire")["metric"] == "test_accuracy"
    with pytest.raises(SystemExit, match="rocauc needs a two-class dataset"):
        _run(tmp_path, "HeterophilousGraphDataset:roman_empire", "--metric", "rocauc")
    write_heterophilous(tmp_path / "data", name="tolokers", classes=2)
    res = _run(tmp_path, "HeterophilousGraphDataset:Tolokers", "--metric", "accuracy")
    assert res["metric"] == "test_accuracy" and "val_acc" in res


def test_a_dataset_without_masks_gets_a_seeded_20_30_per_class_split(tmp_path, monkeypatch):
    y = torch.from_numpy(write_amazon(tmp_path / "data"))
    seen, real_step = [], nc.node_classifier_step

    def recording_step(model, data, graph, opt):
        seen.append({k: data[f"{k}_mask"].clone() for k in ("train", "val", "test")})
        return real_step(model, data, graph, opt)

    monkeypatch.setattr(nc, "node_classifier_step", recording_step)
    res = _run(tmp_path, "Amazon:Computers", "--runs", "2", "--epochs", "1", "--seed", "7")
    assert res["metric"] == "test_accuracy" and "Shchur" in res["split"]
    assert res["split_columns"] == [{"random_seed": 7}, {"random_seed": 8}]
    for run, masks in enumerate(seen):
        assert [int(masks["train"][y == c].sum()) for c in range(3)] == [20, 20, 20]
        assert [int(masks["val"][y == c].sum()) for c in range(3)] == [30, 30, 30]
        assert not (masks["train"] & masks["test"]).any() and int(masks["test"].sum()) == 30
        assert torch.equal(masks["train"], random_class_split(y, 3, 7 + run)["train"])
    assert not torch.equal(seen[0]["train"], seen[1]["train"])


def test_missing_raw_files_name_the_files_and_folder_and_nothing_is_written(tmp_path):
    missing = tmp_path / "data"
    with pytest.raises(SystemExit, match=r"Computers/raw lacks amazon_electronics_computers\.npz"):
        _run(tmp_path, "Amazon:Computers")
    with pytest.raises(SystemExit, match=r"data/raw lacks data\.json"):
        _run(tmp_path, "WikiCS")
    with pytest.raises(SystemExit, match=r"minesweeper/raw lacks minesweeper\.npz"):
        _run(tmp_path, "HeterophilousGraphDataset:Minesweeper")
    assert not missing.exists()


def test_unknown_classes_and_names_are_usage_errors(tmp_path, capsys):
    for dataset, message in (
        ("NoSuchDataset", "not a dataset class"),
        ("Amazon", "needs a name"),
        ("WikiCS:big", "takes no name"),
    ):
        with pytest.raises(SystemExit):
            _run(tmp_path, dataset)
        assert message in capsys.readouterr().err


def test_a_read_only_dataset_folder_is_copied_to_the_cache(tmp_path, monkeypatch):
    write_heterophilous(tmp_path / "data")
    monkeypatch.setenv("GRAPHATTN_CACHE", str(tmp_path / "cache"))
    for path in [tmp_path / "data", *(tmp_path / "data").rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        res = _run(tmp_path, "HeterophilousGraphDataset:Minesweeper", "--runs", "1", "--epochs", "1")
        assert not (tmp_path / "data" / "minesweeper" / "processed").exists()
        assert list((tmp_path / "cache").rglob("minesweeper/processed/data.pt"))
        assert res["metric"] == "test_rocauc"
    finally:
        for path in [tmp_path / "data", *(tmp_path / "data").rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_config_file_flags_with_command_line_overrides(tmp_path):
    write_heterophilous(tmp_path / "data")
    config = tmp_path / "run.json"
    config.write_text(
        json.dumps(
            {
                "dataset": "HeterophilousGraphDataset:Minesweeper",
                "root": str(tmp_path / "data"),
                "runs": 3,
                "hidden": 3,
                "weight-decay": 0.001,
                "no_progress": True,
            }
        )
    )
    args = nc.parse_args(["--config", str(config), "--runs", "1", "--out", str(tmp_path / "r.json")])
    assert (args.dataset, args.runs, args.hidden, args.weight_decay, args.no_progress) == (
        "HeterophilousGraphDataset:Minesweeper",
        1,
        3,
        0.001,
        True,
    )
    res = nc.main(
        ["--config", str(config), "--runs", "1", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "r.json")]
    )
    assert res["runs"] == 1 and res["config"]["hidden"] == 3


@pytest.mark.parametrize(
    "config, message",
    [
        ({"hiden": 8}, "unknown key 'hiden'"),
        ({"hidden": "many"}, "'hidden': must be an integer"),
        ({"hidden": 0}, "'hidden': must be an integer >= 1"),
        ({"dropout": 1.5}, "'dropout': must be a finite number in [0, 1)"),
        ({"model": "gcn"}, "'model': 'gcn' is not one of gat, gatv2, dot"),
        ({"smoke": "yes"}, "'smoke' is a switch"),
        ({"lr": [0.1]}, "'lr' takes a number or a string"),
        ([1, 2], "must hold a JSON object"),
    ],
)
def test_config_file_errors_name_the_key(tmp_path, capsys, config, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exc:
        nc.parse_args(["--config", str(path), "--out", str(tmp_path / "r.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err, err


def test_node_rocauc_matches_brute_force_pairs_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = torch.randint(0, 4, (40, 2), generator=g).float()  # many tied logit differences
        y = torch.randint(0, 2, (40,), generator=g)
        y[:2] = torch.tensor([0, 1])
        score = out[:, 1] - out[:, 0]
        pos, neg = score[y == 1], score[y == 0]
        pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
        assert node_metric(out, y, "rocauc") == pytest.approx(float(pairs.mean()), abs=1e-12)
    assert node_metric(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 0]), "rocauc") == 1.0
    with pytest.raises(ValueError, match="two classes"):
        node_metric(torch.zeros(3, 3), torch.tensor([0, 1, 2]), "rocauc")


@pytest.mark.skipif(not (SHARED_MINESWEEPER / "raw" / "minesweeper.npz").exists(), reason="shared Minesweeper absent")
def test_real_minesweeper_one_epoch(tmp_path):
    shutil.copytree(SHARED_MINESWEEPER, tmp_path / "data" / "minesweeper", copy_function=shutil.copyfile)
    for path in [tmp_path / "data", *(tmp_path / "data").rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    t0 = time.perf_counter()
    res = nc.main(
        [
            "--dataset",
            "HeterophilousGraphDataset:Minesweeper",
            "--root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "res.json"),
            "--no-progress",
            "--device",
            "cpu",
            "--runs",
            "1",
            "--epochs",
            "2",
        ]
    )
    print(f"Minesweeper, 2 epochs: test ROC-AUC {res['per_run'][0]:.4f} in {time.perf_counter() - t0:.1f} s")
    assert res["metric"] == "test_rocauc" and res["split_columns"] == [{"train": 0, "val": 0, "test": 0}]
    assert 0.0 < res["per_run"][0] < 1.0
    assert (tmp_path / "data" / "minesweeper" / "processed" / "data.pt").exists()
