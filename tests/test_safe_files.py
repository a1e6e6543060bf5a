"""No file runs code: checkpoints and saved models load with ``weights_only=True``,
bad checkpoints give an error naming the file, every checkpoint the examples write
loads back that way, and OGB's files load through a scoped allow-list, not a patch
of ``torch.load``."""

import io
import math
import os
import pickle
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from graphattn.train import experiment
from graphattn.train.experiment import CheckpointError, atomic_save, load_checkpoint, resume_from

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))
SHARED = ROOT.parent / "shared" / "data"
ORIGINAL_TORCH_LOAD = torch.load


class _Payload:
    """Unpickling this runs ``os.system`` (writes the marker file): what a crafted
    checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > '{self.marker}'",)


class _ExecPayload(_Payload):
    """The same through ``builtins.exec``, a global that torch's weights-only unpickler
    refuses with an "add_safe_globals" hint, on which PyG's ``fs.torch_load`` retries
    with ``weights_only=False`` (``os``/``posix`` are refused outright)."""

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _crafted(path: Path, marker: Path, kind: str = "torch", payload=_Payload) -> Path:
    """A file that runs code (writes ``marker``) when unpickled without ``weights_only``:
    as ``torch.save`` writes it (zip), as a legacy torch pickle, or a bare pickle."""
    obj = {"config": {}, "done": [], "model": payload(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "torch":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


@pytest.mark.parametrize("payload", [_Payload, _ExecPayload])
@pytest.mark.parametrize("kind", ["torch", "legacy", "pickle"])
def test_crafted_checkpoint_does_not_run(tmp_path, kind, payload):
    marker = tmp_path / "marker"
    path = _crafted(tmp_path / "res.ckpt.pt", marker, kind, payload)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    msg = str(err.value)
    assert str(path) in msg and "delete it" in msg and "--resume" in msg
    assert "weights_only=False" not in msg  # torch's advice is not passed on
    assert isinstance(err.value, ValueError)
    with pytest.raises(CheckpointError):
        resume_from(path, {}, resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [_Payload, _ExecPayload])
def test_the_crafted_file_is_really_hostile(tmp_path, payload):
    """Control: the same bytes do run code when unpickled without ``weights_only``."""
    marker = tmp_path / "marker"
    path = _crafted(tmp_path / "x.pt", marker, payload=payload)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_crafted_checkpoint_under_resume_of_an_example(tmp_path):
    import node_classification as nc

    marker = tmp_path / "marker"
    _crafted(tmp_path / "res.ckpt.pt", marker)
    argv = ["--smoke", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "res.json"), "--resume"]
    with pytest.raises(SystemExit, match=r"error: checkpoint .*res\.ckpt\.pt.*delete it"):
        nc.main(argv)
    assert not marker.exists() and not (tmp_path / "res.json").exists()


def test_crafted_checkpoint_under_resume_through_resume_from(tmp_path):
    import text_classification as tc
    from test_example_text_classification import _args

    marker = tmp_path / "marker"
    _crafted(tmp_path / "res.ckpt.pt", marker)
    with pytest.raises(SystemExit, match=r"error: checkpoint .*res\.ckpt\.pt"):
        tc.main(_args(tmp_path, "--resume"))
    assert not marker.exists()


def test_crafted_text_model_does_not_run(tmp_path, monkeypatch):
    import text_classification as tc
    import visualize_attention as va
    from test_example_text_classification import _tsv

    marker = tmp_path / "marker"
    model = _crafted(tmp_path / "evil.model.pt", marker)
    with pytest.raises(CheckpointError, match=r"evil\.model\.pt.*text_classification\.py"):
        tc.load_classifier(str(model))
    dev = _tsv(tmp_path / "dev.tsv", 10)
    monkeypatch.setattr(va, "graph_pictures", lambda *a: {})  # (trains a graph model; not what is tested here)
    with pytest.raises(SystemExit, match=r"error: checkpoint .*evil\.model\.pt"):
        va.main(
            [
                "--smoke",
                "--out-dir",
                str(tmp_path / "vis"),
                "--text-model",
                str(model),
                "--text-dev",
                dev,
                "--device",
                "cpu",
            ]
        )
    assert not marker.exists()
    torch.save({"model": {}}, tmp_path / "other.pt")  # a checkpoint, but not a saved model
    with pytest.raises(CheckpointError, match=r"other\.pt is not a model file.*lacks vocab"):
        tc.load_classifier(str(tmp_path / "other.pt"))


def _real_checkpoint(path: Path) -> bytes:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    atomic_save(
        {"config": {"lr": 0.1}, "done": [], **experiment.training_state(model, opt, None, torch.Generator())}, path
    )
    return path.read_bytes()


@pytest.mark.parametrize("cut", [0, 10, 0.5, -30])
def test_truncated_or_empty_checkpoint_names_the_file(tmp_path, cut):
    path = tmp_path / "run.ckpt.pt"
    data = _real_checkpoint(path)
    assert load_checkpoint(path)["config"] == {"lr": 0.1}
    path.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(CheckpointError, match="empty" if cut == 0 else "truncated|corrupt") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "delete it" in str(err.value)


def test_truncated_checkpoint_under_resume_of_an_example(tmp_path):
    import node_classification as nc

    path = tmp_path / "res.ckpt.pt"
    path.write_bytes(_real_checkpoint(path)[:100])
    argv = ["--smoke", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "res.json"), "--resume"]
    with pytest.raises(SystemExit, match=r"error: checkpoint .*res\.ckpt\.pt cannot be used: it is truncated"):
        nc.main(argv)


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b'{"json": true}', "tensor", "list"])
def test_foreign_checkpoint_names_the_file(tmp_path, content):
    path = tmp_path / "foreign.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "list":
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"foreign\.pt cannot be used") as err:
        load_checkpoint(path)
    if content in ("tensor", "list"):
        assert "not a checkpoint dictionary" in str(err.value)


def test_checkpoint_of_another_configuration_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "c.pt"
    atomic_save({"config": {"lr": 0.1}}, path)
    assert resume_from(path, {"lr": 0.1}, resume=True) == {"config": {"lr": 0.1}}
    assert resume_from(path, {"lr": 0.2}, resume=False) is None
    with pytest.raises(CheckpointError, match="another configuration"):
        resume_from(path, {"lr": 0.2}, resume=True)
    assert load_checkpoint(tmp_path / "absent.pt") is None


def test_atomic_save_refuses_what_weights_only_cannot_load(tmp_path):
    import argparse

    import numpy as np

    for bad, where in (
        (np.float64(0.5), "\\['acc'\\]"),
        (argparse.Namespace(lr=1), "\\['acc'\\]"),
        ([1, (2, np.int64(3))], "\\['acc'\\]\\[1\\]\\[1\\]"),
    ):
        with pytest.raises(TypeError, match=f"{where} is a .*weights_only=True"):
            atomic_save({"acc": bad}, tmp_path / "c.pt")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file
    ok = {
        "a": [1, 2.5, None, "s", (True, b"x")],
        3: OrderedDict(t=torch.ones(2)),
        "size": torch.Size([2]),
        "dtype": torch.float16,
        "set": {1, 2},
        "p": torch.nn.Parameter(torch.zeros(1)),
    }
    atomic_save(ok, tmp_path / "c.pt")
    _assert_same(load_checkpoint(tmp_path / "c.pt"), ok)
    atomic_save({"acc": np.float64(0.5)}, tmp_path / "d.pt", plain=False)  # opting out still writes


# ---------------------------------------------------------------------------
# (c) every checkpoint and model file the examples write loads with weights_only=True


def _assert_same(a, b, where="obj"):
    if isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b.detach().cpu()), where
    elif isinstance(b, dict):
        assert isinstance(a, dict) and list(a) == list(b), where
        for k in b:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(b, float) and math.isnan(b):
        assert isinstance(a, float) and math.isnan(a), where
    else:
        assert type(a) is type(b) and a == b, where


@pytest.fixture
def record_saves(monkeypatch):
    """Wraps ``atomic_save`` in the given example modules: every file they write is
    read back with ``torch.load(weights_only=True)`` and compared with what was saved."""
    written = []

    def install(*modules):
        real = experiment.atomic_save

        def recording(obj, path, *a, **k):
            real(obj, path, *a, **k)
            back = torch.load(path, map_location="cpu", weights_only=True)
            _assert_same(back, obj, Path(path).name)
            written.append((Path(path).name, sorted(str(k) for k, v in obj.items() if v is not None)))

        for m in modules:
            monkeypatch.setattr(m, "atomic_save", recording)
        return written

    return install


def _mid_run(written, key):
    """At least one checkpoint written during a run (``key`` set: training state), and one after."""
    assert any(key in keys for _, keys in written), written
    assert any(key not in keys for _, keys in written), written


def test_node_classification_checkpoints_round_trip(tmp_path, record_saves):
    import node_classification as nc

    written = record_saves(nc)
    nc.main(
        [
            "--smoke",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r.json"),
            "--runs",
            "1",
            "--epochs",
            "4",
            "--checkpoint-every",
            "2",
        ]
    )
    assert {n for n, _ in written} == {"r.ckpt.pt"}
    assert any("opt" in k and "rng" in k for _, k in written)
    nc.main(
        [
            "--smoke",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r.json"),
            "--runs",
            "1",
            "--epochs",
            "4",
            "--checkpoint-every",
            "2",
            "--resume",
        ]
    )


def test_text_classification_checkpoint_and_model_round_trip(tmp_path, record_saves):
    import text_classification as tc
    from test_example_text_classification import _args

    written = record_saves(tc)
    tc.main(_args(tmp_path, "--epochs", "1", "--runs", "1"))
    assert {n for n, _ in written} == {"res.ckpt.pt", "res.model.pt"}
    _mid_run([w for w in written if w[0] == "res.ckpt.pt"], "sched")
    model, vocab, cfg = tc.load_classifier(str(tmp_path / "res.model.pt"))
    assert cfg["epochs"] == 1 and len(vocab) > 4


def test_language_model_checkpoints_round_trip(tmp_path, record_saves):
    import language_model as lm
    from test_example_language_model import _args

    written = record_saves(lm)
    lm.main(_args(tmp_path, "--variants", "window", "--steps", "4", "--eval-every", "2"))
    _mid_run(written, "partial")


def test_translation_checkpoints_round_trip(tmp_path, record_saves):
    pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    pytest.importorskip("tokenizers")
    import translation as tr
    from test_example_translation import _args

    written = record_saves(tr)
    tr.main(_args(tmp_path, "--epochs", "1"))
    _mid_run(written, "model")


def test_robustness_checkpoint_round_trips(tmp_path, record_saves):
    import robustness as ex

    written = record_saves(ex)
    ex.main(
        [
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
    )
    assert written and all(n == "r.ckpt.pt" for n, _ in written)


@pytest.mark.skipif(not (SHARED / "planetoid" / "Cora" / "raw").exists(), reason="no Cora in shared data")
def test_link_prediction_checkpoints_round_trip(tmp_path, record_saves, monkeypatch):
    import link_prediction as lp

    monkeypatch.setenv("GRAPHATTN_CACHE", str(tmp_path / "cache"))
    written = record_saves(lp)
    lp.main(
        [
            "--dataset",
            "Cora",
            "--root",
            str(SHARED / "planetoid"),
            "--smoke",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r.json"),
            "--epochs",
            "2",
            "--eval-every",
            "1",
        ]
    )
    _mid_run(written, "state")


def test_ogbn_checkpoints_round_trip(tmp_path, record_saves):
    pytest.importorskip("ogb")
    import ogbn_arxiv
    import ogbn_common
    from ogb_format import write_ogbn

    write_ogbn(tmp_path / "ogb", "ogbn-arxiv")
    written = record_saves(ogbn_common)
    ogbn_arxiv.main(
        [
            "--root",
            str(tmp_path / "ogb"),
            "--smoke",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "r.json"),
            "--epochs",
            "2",
        ]
    )
    _mid_run(written, "run_state")


# ---------------------------------------------------------------------------
# (d) OGB's files load through a scoped allow-list, with torch.load untouched


@pytest.fixture
def watch_loads(monkeypatch):
    """Records, for every ``torch.load`` that reaches the unpickler, whether ``torch.load``
    is still torch's own function at that moment, whether the weights-only unpickler
    is used, and the file. Patches torch's internal ``_load``/``_legacy_load`` (the
    test's spy), never ``torch.load``."""
    import inspect

    import torch._weights_only_unpickler as wo
    import torch.serialization as ser

    seen = []

    def spy(real):
        def inner(*args, **kwargs):
            frame, f = inspect.currentframe().f_back, None
            while frame is not None:
                if frame.f_code.co_name == "load" and frame.f_code.co_filename == ser.__file__:
                    f = frame.f_locals.get("f")
                    break
                frame = frame.f_back
            module = kwargs.get("pickle_module", args[2] if len(args) > 2 else None)
            seen.append({"file": str(f), "original": torch.load is ORIGINAL_TORCH_LOAD, "weights_only": module is wo})
            return real(*args, **kwargs)

        return inner

    monkeypatch.setattr(ser, "_load", spy(ser._load))
    monkeypatch.setattr(ser, "_legacy_load", spy(ser._legacy_load))
    return seen


def _check_loads(seen, expect):
    assert all(s["original"] for s in seen), seen
    for s in seen:  # only PyG's marker files (a pickled string, checked first) are read without weights_only
        assert s["weights_only"] or Path(s["file"]).name in ("pre_transform.pt", "pre_filter.pt"), s
    names = {Path(s["file"]).name for s in seen if s["weights_only"]}
    assert expect <= names, names


def test_ogb_node_loader_needs_no_patch(tmp_path, monkeypatch, watch_loads):
    pytest.importorskip("ogb")
    from ogb_format import write_ogbn

    from graphattn.train.datasets import contextual_sbm, load_ogb_node

    monkeypatch.setenv("GRAPHATTN_CACHE", str(tmp_path / "cache"))
    write_ogbn(tmp_path, "ogbn-arxiv")
    g = contextual_sbm(
        num_nodes=400, num_classes=5, num_features=16, train_per_class=40, num_val=80, num_test=100, seed=0
    )  # what write_ogbn wrote
    before = set(torch.serialization.get_safe_globals())
    for _ in range(2):  # processes on the first call, loads processed/ on the second
        data = load_ogb_node(str(tmp_path), "ogbn-arxiv")
        assert torch.load is ORIGINAL_TORCH_LOAD
        assert set(torch.serialization.get_safe_globals()) == before  # the allow-list is gone again
        assert data.num_nodes == 400 and torch.equal(data.y, g.y)
        torch.testing.assert_close(data.x, g.x, atol=1e-5, rtol=0)
        for ours, theirs in (("train_mask", "train_mask"), ("val_mask", "val_mask"), ("test_mask", "test_mask")):
            assert torch.equal(data[ours], g[theirs])
        assert torch.equal(data.split_idx["train"], g.train_mask.nonzero().view(-1))
        src, dst = data.edge_index
        assert set(zip(src.tolist(), dst.tolist())) == set(zip(*g.edge_index.tolist()))
    _check_loads(watch_loads, {"geometric_data_processed.pt"})


@pytest.mark.skipif(not (SHARED / "ogb" / "ogbl_ddi" / "raw").exists(), reason="no ogbl-ddi in shared data")
def test_ogb_link_loader_reads_numpy_splits_through_the_allow_list(tmp_path, monkeypatch, watch_loads):
    pytest.importorskip("ogb")
    from graphattn.train.datasets import load_ogb_link

    monkeypatch.setenv("GRAPHATTN_CACHE", str(tmp_path / "cache"))
    shutil.copytree(SHARED / "ogb" / "ogbl_ddi", tmp_path / "ogbl_ddi", copy_function=shutil.copyfile)
    split = tmp_path / "ogbl_ddi" / "split" / "target"
    numpy_allowed = ("numpy.core.multiarray._reconstruct", "numpy.ndarray")
    data, edges = load_ogb_link(str(tmp_path), "ogbl-ddi")
    loads = list(watch_loads)
    assert torch.load is ORIGINAL_TORCH_LOAD
    names = {
        f"{g.__module__}.{g.__qualname__}" if not isinstance(g, tuple) else g[1]
        for g in torch.serialization.get_safe_globals()
    }
    assert not names & set(numpy_allowed)  # not left allowed process-wide
    assert data.num_nodes == 4267 and data.edge_index.shape == (2, 2135822)
    for key, n, neg in (("train", 1067911, None), ("valid", 133489, 101882), ("test", 133489, 95599)):
        assert edges[key]["edge"].shape == (n, 2) and edges[key]["edge"].dtype == torch.int64
        if neg is not None:
            assert edges[key]["edge_neg"].shape == (neg, 2)
            # the same numbers as the file read without any safety (it is OGB's own file)
            raw = torch.load(split / f"{key}.pt", weights_only=False)
            assert torch.equal(edges[key]["edge_neg"], torch.from_numpy(raw["edge_neg"]))
            assert torch.equal(edges[key]["edge"], torch.from_numpy(raw["edge"]))
    _check_loads(loads, {"valid.pt", "test.pt", "train.pt", "geometric_data_processed.pt"})
    # outside the loader, the same numpy split files are refused again
    with pytest.raises(pickle.UnpicklingError):
        torch.load(split / "valid.pt")


@pytest.mark.parametrize(
    "target", ["split/time/split_dict.pt", "processed/geometric_data_processed.pt", "processed/pre_transform.pt"]
)
def test_crafted_file_in_an_ogb_folder_does_not_run(tmp_path, monkeypatch, target):
    pytest.importorskip("ogb")
    from ogb_format import write_ogbn

    from graphattn.train.datasets import load_ogb_node

    monkeypatch.setenv("GRAPHATTN_CACHE", str(tmp_path / "cache"))
    folder = write_ogbn(tmp_path, "ogbn-arxiv")
    load_ogb_node(str(tmp_path), "ogbn-arxiv")  # writes processed/
    marker = tmp_path / "marker"
    _crafted(folder / target, marker, payload=_ExecPayload)
    with pytest.raises(ValueError, match="could run code") as err:
        load_ogb_node(str(tmp_path), "ogbn-arxiv")
    assert not marker.exists()
    assert str(folder) in str(err.value) and "delete" in str(err.value).lower()
    assert torch.load is ORIGINAL_TORCH_LOAD


def test_legacy_numpy_pickle_needs_exactly_the_listed_classes(tmp_path):
    """The allow-list rebuilds an int64 numpy array (what OGB's split files hold) and
    nothing else: another dtype's class or a function is still refused."""
    import numpy as np

    from graphattn.train.datasets import _ogb_files_allowed, _ogb_safe_globals

    entries = _ogb_safe_globals()
    names = sorted(g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in entries)
    assert names == sorted(
        [
            "numpy.core.multiarray._reconstruct",
            "numpy.ndarray",
            "numpy.dtype",
            f"{type(np.dtype(np.int64)).__module__}.{type(np.dtype(np.int64)).__qualname__}",
            "torch_geometric.data.data.Data",
            "torch_geometric.data.data.DataEdgeAttr",
            "torch_geometric.data.data.DataTensorAttr",
            "torch_geometric.data.storage.GlobalStorage",
        ]
    )
    buf = io.BytesIO()
    torch.save({"edge": np.arange(6, dtype=np.int64).reshape(3, 2)}, buf, _use_new_zipfile_serialization=False)
    # as numpy 1.x wrote OGB's files: the rebuild function under its old module name
    (tmp_path / "ok.pt").write_bytes(buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    torch.save({"edge": np.zeros(3, dtype=np.float32)}, tmp_path / "f32.pt")
    with _ogb_files_allowed(tmp_path, "test"):
        assert torch.load(tmp_path / "ok.pt")["edge"].tolist() == [[0, 1], [2, 3], [4, 5]]
        assert torch.load is ORIGINAL_TORCH_LOAD
    with pytest.raises(ValueError, match="Float32DType|float32|not unpickled"):
        with _ogb_files_allowed(tmp_path, "test"):
            torch.load(tmp_path / "f32.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "ok.pt")  # outside the block


@pytest.mark.skipif(not (SHARED / "planetoid" / "Cora" / "raw").exists(), reason="no Cora in shared data")
@pytest.mark.parametrize("target", ["data.pt", "pre_transform.pt"])
def test_crafted_file_in_planetoid_processed_does_not_run(tmp_path, monkeypatch, target):
    """PyG itself reads these with weights_only=False (the markers) or falls back to it
    (the data file); the loader checks them safely first."""
    from graphattn.train.datasets import load_planetoid

    monkeypatch.setenv("GRAPHATTN_CACHE", str(tmp_path / "cache"))
    shutil.copytree(SHARED / "planetoid" / "Cora" / "raw", tmp_path / "Cora" / "raw", copy_function=shutil.copyfile)
    assert load_planetoid(str(tmp_path), "Cora").num_nodes == 2708  # writes processed/
    assert load_planetoid(str(tmp_path), "Cora").num_nodes == 2708  # reads it back, passing the check
    marker = tmp_path / "marker"
    _crafted(tmp_path / "Cora" / "processed" / target, marker, payload=_ExecPayload)  # PyG alone would run it
    with pytest.raises(ValueError, match=rf"Cora/processed/{target} is not a file PyG writes.*Delete"):
        load_planetoid(str(tmp_path), "Cora")
    assert not marker.exists()
