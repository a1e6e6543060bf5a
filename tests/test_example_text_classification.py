import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import text_classification as tc  # noqa: E402
from interrupt import run_killed  # noqa: E402


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


def _args(tmp_path, *extra, write=None):
    """Arguments for a smoke run on a toy train/dev pair written by ``write`` (default: 0/1 labels)."""
    write = _tsv if write is None else write
    tmp_path.mkdir(parents=True, exist_ok=True)
    train, dev = write(tmp_path / "train.tsv", 240), write(tmp_path / "dev.tsv", 60, seed=1)
    return [
        "--train",
        train,
        "--dev",
        dev,
        "--smoke",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "res.json"),
        *extra,
    ]


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
        if calls["n"] == 2:  # the first run's second evaluation: one mid-run checkpoint is written
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


def _string_tsv(path: Path, n: int, seed: int = 0, classes=("LOC", "PER", "ORG", "MISC")):
    """Rows whose class is told by one keyword per class: labels are strings."""
    import random

    rng = random.Random(seed)
    cue = {
        "LOC": ["paris", "river"],
        "PER": ["alice", "doctor"],
        "ORG": ["company", "bank"],
        "MISC": ["festival", "award"],
    }
    filler = ["the", "a", "of", "near", "with", "today"]
    lines = ["sentence\tlabel"]
    for _ in range(n):
        y = rng.choice(classes)
        words = [rng.choice(cue[y])] + rng.sample(filler, 3)
        rng.shuffle(words)
        lines.append(" ".join(words) + f"\t{y}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _string_args(tmp_path, *extra):
    return _args(tmp_path, *extra, write=_string_tsv)


def test_label_mapping_is_sorted_and_keeps_integer_ids():
    assert tc.label_list([1, 0, 1]) == [0, 1]  # SST-2's 0/1 stay 0/1
    assert tc.label_list([10, 2, -1]) == [-1, 2, 10]  # numeric order, not text order
    assert tc.label_list(["pos", "neg", "neutral", "neg"]) == ["neg", "neutral", "pos"]
    assert tc.label_list(["b", 3, "a"]) == ["3", "a", "b"]  # mixed: all compared as text
    assert tc.encode_labels([1, 0], [0, 1], "f") == [1, 0]
    assert tc.encode_labels(["3", 3], ["3", "a"], "f") == [0, 0]
    with pytest.raises(ValueError, match=r"f: label 'x' \(row 2\) was not seen in the training data"):
        tc.encode_labels(["a", "x"], ["3", "a"], "f")


def test_read_tsv_labels_as_written_or_as_class_ids(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\nfine film\t1\nbad film\t0\n")
    assert tc.read_tsv(str(path)) == [("fine film", 1), ("bad film", 0)]
    path.write_text("label\tsentence\nLOC \tin paris\nPER\talice\n")
    assert tc.read_tsv(str(path)) == [("in paris", "LOC"), ("alice", "PER")]
    assert tc.read_tsv(str(path), labels=["LOC", "ORG", "PER"]) == [("in paris", 0), ("alice", 2)]


def test_string_labels_train_save_reload_and_predict(tmp_path):
    res = tc.main(_string_args(tmp_path, "--steps", "60", "--lr", "3e-3", "--patience", "0"))
    assert res["labels"] == ["LOC", "MISC", "ORG", "PER"]
    model, vocab, cfg = tc.load_classifier(str(tmp_path / "res.model.pt"))
    assert cfg["labels"] == ["LOC", "MISC", "ORG", "PER"]
    dev = tc.read_tsv(str(tmp_path / "dev.tsv"))
    predicted = tc.predict(model, vocab, cfg, [s for s, _ in dev])
    assert set(predicted) <= set(cfg["labels"])
    dev_acc = sum(p == y for p, (_, y) in zip(predicted, dev)) / len(dev)
    assert dev_acc == pytest.approx(res["per_run"][-1])  # the mapping saved is the one trained with
    assert dev_acc > 0.8  # one keyword tells the class: the toy task is learnt
    ids = tc.read_tsv(str(tmp_path / "dev.tsv"), cfg["labels"])
    enc = [vocab.encode(s, cfg["max_len"]) for s, _ in ids]
    assert tc.accuracy(model, enc, [y for _, y in ids], 64, "cpu") == pytest.approx(dev_acc)
    import torch

    saved = torch.load(tmp_path / "res.model.pt", weights_only=True)  # plain lists/strings only
    assert saved["labels"] == cfg["labels"] and saved["num_classes"] == 4


def test_integer_labels_beyond_0_1_map_in_numeric_order(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = ["sentence\tlabel"] + [f"word{k % 3} filler\t{[10, 2, 7][k % 3]}" for k in range(60)]
    (tmp_path / "t.tsv").write_text("\n".join(rows) + "\n")
    res = tc.main(
        [
            "--train",
            str(tmp_path / "t.tsv"),
            "--dev",
            str(tmp_path / "t.tsv"),
            "--smoke",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "res.json"),
            "--runs",
            "1",
        ]
    )
    assert res["labels"] == [2, 7, 10]
    model, vocab, cfg = tc.load_classifier(str(tmp_path / "res.model.pt"))
    assert set(tc.predict(model, vocab, cfg, ["word0 filler", "word1 filler"])) <= {2, 7, 10}


def test_label_not_seen_in_training_is_a_clear_error(tmp_path):
    args = _string_args(tmp_path)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nin paris\tLOC\nin the sky\tWEATHER\n")
    with pytest.raises(
        SystemExit,
        match=r"dev\.tsv: label 'WEATHER' \(row 2\) was not seen in the training data, "
        r"whose labels are 'LOC', 'MISC', 'ORG', 'PER'",
    ):
        tc.main(args)
    (tmp_path / "test.tsv").write_text("sentence\tlabel\nin paris\t3\n")
    _string_tsv(tmp_path / "dev.tsv", 20)
    with pytest.raises(SystemExit, match=r"test\.tsv: label 3 \(row 1\) was not seen"):
        tc.main(args + ["--test", str(tmp_path / "test.tsv")])


def test_old_model_files_without_labels_still_load(tmp_path):
    import torch

    tc.main(_args(tmp_path, "--runs", "1"))
    saved = torch.load(tmp_path / "res.model.pt", weights_only=True)
    del saved["labels"]
    torch.save(saved, tmp_path / "old.model.pt")
    model, vocab, cfg = tc.load_classifier(str(tmp_path / "old.model.pt"))
    assert cfg["labels"] == [0, 1]


def test_step_budget_scales_with_the_data():
    args = tc.parse_args([])
    assert tc.schedule(args, 67349) == (1053, 4212, 211)  # SST-2: four epochs' worth
    assert tc.schedule(args, 1000) == (16, 1500, 75)  # small data: at least --min-steps
    assert tc.schedule(tc.parse_args(["--epochs", "2"]), 1000) == (16, 32, 2)
    assert tc.schedule(tc.parse_args(["--steps", "10", "--eval-every", "3"]), 1000) == (16, 10, 3)
    with pytest.raises(SystemExit):
        tc.parse_args(["--steps", "10", "--epochs", "2"])


def test_early_stopping_keeps_the_best_dev_model(tmp_path, monkeypatch):
    import torch

    real, scores, seen = tc.accuracy, iter([0.5, 0.7, 0.6, 0.65, 0.9]), []  # best at the 2nd, stop at the 4th

    def scripted(model, *a, **k):
        real(model, *a, **k)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(tc, "accuracy", scripted)
    res = tc.main(_string_args(tmp_path, "--steps", "50", "--eval-every", "5", "--patience", "2", "--runs", "1"))
    assert res["budget_steps"] == 50 and res["steps_run"] == [20] and res["best_step"] == [10]
    assert res["per_run"] == [0.7] and len(seen) == 4
    ckpt = torch.load(tmp_path / "res.ckpt.pt", weights_only=True)
    assert ckpt["done"][0]["stopped_early"] and ckpt["done"][0]["history"]["dev_acc"] == [0.5, 0.7, 0.6, 0.65]
    assert ckpt["done"][0]["history"]["step"] == [5, 10, 15, 20]
    model, _, _ = tc.load_classifier(str(tmp_path / "res.model.pt"))
    for k, v in model.state_dict().items():  # the saved model is the one of step 10, not the last (step 20)
        assert torch.equal(v, seen[1][k]), k
    assert not all(torch.equal(v, seen[3][k]) for k, v in model.state_dict().items())


def test_patience_0_runs_the_whole_budget(tmp_path):
    res = tc.main(_string_args(tmp_path, "--steps", "12", "--eval-every", "5", "--patience", "0", "--runs", "1"))
    assert res["steps_run"] == [12]
    import torch

    ckpt = torch.load(tmp_path / "res.ckpt.pt", weights_only=True)
    assert ckpt["done"][0]["history"]["step"] == [5, 10, 12]  # and an evaluation at the end of the budget


@pytest.mark.parametrize("crash_at", [2, 4, 7])
def test_killed_mid_epoch_resumes_to_the_same_result(tmp_path, monkeypatch, crash_at):
    """Evaluations fall inside epochs (every 3 steps, 4 steps an epoch): a run killed at
    any of them continues from the checkpoint to exactly the uninterrupted result."""
    extra = ("--steps", "14", "--eval-every", "3", "--patience", "0", "--runs", "2", "--word-dropout", "0.2")
    full = tc.main(_string_args(tmp_path / "a", *extra))
    run_killed(monkeypatch, tc, "accuracy", crash_at, lambda: tc.main(_string_args(tmp_path / "b", *extra)))
    resumed = tc.main(_string_args(tmp_path / "b", *extra, "--resume"))
    assert resumed["per_run"] == full["per_run"] and resumed["best_step"] == full["best_step"]
    import torch

    a, b = (torch.load(tmp_path / d / "res.model.pt", weights_only=True)["model"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same weights, not only the same accuracy
    a, b = (torch.load(tmp_path / d / "res.ckpt.pt", weights_only=True)["done"] for d in "ab")
    assert [r["history"] for r in a] == [r["history"] for r in b]
