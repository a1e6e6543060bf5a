"""Trust on the file and command-line routes (issue 23): a checkpoint or saved model
that does not fit is a CheckpointError naming the file; outputs that cannot be written
are refused before any training; atomic writes keep file modes; every command-line
argument and every robustness / linear-attention parameter is checked against its
domain; each op's dtype errors name the argument at fault."""

import importlib
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graphattn import ops
from graphattn import robustness as rb
from graphattn.train import experiment
from graphattn.train.experiment import CheckpointError, atomic_save, atomic_write_json, output_problem

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
SCRIPTS = [
    "node_classification",
    "graph_classification",
    "link_prediction",
    "text_classification",
    "translation",
    "language_model",
    "robustness",
    "ogbn_arxiv",
    "ogbn_products",
]


def _run(*argv, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _usage_error(capsys, parse, argv) -> str:
    """``parse(argv)`` must be argparse's usage error (exit status 2); returns its message."""
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2, exc.value.code
    return capsys.readouterr().err


# ------------------------------------------------------------------ 1. checkpoints that do not fit
def test_restoring_a_state_that_does_not_fit_names_the_file(tmp_path):
    path = tmp_path / "run.ckpt.pt"
    other = torch.nn.Linear(4, 2)
    saved = experiment.training_state(other, torch.optim.Adam(other.parameters()), None, torch.Generator())
    atomic_save(saved, path)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(CheckpointError, match=r"run\.ckpt\.pt.*do not fit.*size mismatch for weight"):
        experiment.restore_training_state(experiment.load_checkpoint(path), model, opt, None, torch.Generator(), path)
    del saved["opt"]  # a missing part
    with pytest.raises(CheckpointError, match=r"run\.ckpt\.pt.*KeyError"):
        experiment.restore_training_state(saved, torch.nn.Linear(4, 2), opt, None, torch.Generator(), path)


def test_a_resumed_checkpoint_lacking_what_the_script_reads_is_a_checkpoint_error(tmp_path):
    atomic_save({"config": {"lr": 0.1}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"c\.pt cannot be used: it lacks done"):
        experiment.resume_from(tmp_path / "c.pt", {"lr": 0.1}, True, keys=("done",))


def test_node_classification_checkpoint_whose_weights_disagree_with_its_config(tmp_path):
    import node_classification as nc

    argv = ["--smoke", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "res.json"), "--resume"]
    args = nc.parse_args(argv)
    wrong = torch.nn.Linear(3, 2)  # the config says a GAT; the weights are something else
    atomic_save(
        {
            "config": nc.config_of(args),
            "done": [],
            "run": 0,
            "epoch": 3,
            "history": {},
            "model": wrong.state_dict(),
            "opt": torch.optim.Adam(wrong.parameters()).state_dict(),
            "stopper": {},
            "rng": torch.get_rng_state(),
        },
        args.checkpoint,
    )
    with pytest.raises(SystemExit, match=r"error: checkpoint .*res\.ckpt\.pt cannot be used: its contents do not fit"):
        nc.main(argv)


def test_saved_text_model_whose_parts_disagree_names_the_file(tmp_path):
    import text_classification as tc

    config = {
        "pattern": "complete",
        "window": 8,
        "dim": 16,
        "heads": 2,
        "layers": 1,
        "ff": 32,
        "dropout": 0.0,
        "max_len": 8,
        "pool": "mean",
    }
    vocab = ["<pad>", "<unk>", "<cls>", "good", "bad"]
    model = tc.Classifier(
        len(vocab), 2, **{k: config[k] for k in ("dim", "heads", "layers", "ff", "dropout", "max_len")}, pattern=None
    )
    good = {"model": model.state_dict(), "vocab": vocab, "num_classes": 2, "labels": [0, 1], "config": config}
    atomic_save(good, tmp_path / "ok.model.pt")
    tc.load_classifier(str(tmp_path / "ok.model.pt"))  # what a run writes loads
    for name, bad in [
        ("dim", {**good, "config": {**config, "dim": 32}}),  # config against weights
        ("vocab", {**good, "vocab": vocab + ["extra"]}),  # vocabulary against the embedding
        ("heads", {**good, "config": {**config, "heads": 3}}),  # a config no model has
        ("config", {**good, "config": {k: v for k, v in config.items() if k != "ff"}}),
    ]:
        atomic_save(bad, tmp_path / f"{name}.model.pt")
        with pytest.raises(CheckpointError, match=rf"{name}\.model\.pt cannot be used"):
            tc.load_classifier(str(tmp_path / f"{name}.model.pt"))


# ------------------------------------------------------------------ 2. outputs checked before training
def test_output_problem_names_what_is_wrong(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    assert output_problem(tmp_path / "new" / "deeper" / "res.json") is None  # folders are created
    assert output_problem(tmp_path / "dir", directory=True) is None
    assert "file.txt is not a directory" in output_problem(tmp_path / "file.txt" / "sub" / "res.json")
    assert output_problem(tmp_path / "dir") == "it is a directory"
    assert output_problem(tmp_path / "file.txt", directory=True) == "it exists and is not a directory"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert "not writable" in output_problem(locked / "res.json")
        finally:
            locked.chmod(0o700)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_refuses_an_unwritable_out_before_it_starts(name, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    parse = importlib.import_module(name).parse_args
    err = _usage_error(capsys, parse, ["--out", str(tmp_path / "file.txt" / "res.json")])
    assert "--out" in err and "cannot be written" in err and "file.txt is not a directory" in err
    (tmp_path / "res.json").mkdir()  # the results path is a folder
    assert "it is a directory" in _usage_error(capsys, parse, ["--out", str(tmp_path / "res.json")])


def test_scripts_check_their_other_outputs_too(tmp_path, capsys):
    import node_classification as nc
    import text_classification as tc
    import visualize_attention as va

    (tmp_path / "file.txt").write_text("x")
    err = _usage_error(
        capsys, nc.parse_args, ["--out", str(tmp_path / "r.json"), "--checkpoint", str(tmp_path / "file.txt" / "c.pt")]
    )
    assert "--checkpoint" in err
    (tmp_path / "r.model.pt").mkdir()
    assert "model" in _usage_error(capsys, tc.parse_args, ["--out", str(tmp_path / "r.json")])
    assert "--out-dir" in _usage_error(capsys, va.parse_args, ["--out-dir", str(tmp_path / "file.txt")])


def test_unwritable_out_fails_at_once_from_the_command_line(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    proc = _run(
        "examples/node_classification.py",
        "--smoke",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(tmp_path / "file.txt" / "res.json"),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot be written" in proc.stderr and "Traceback" not in proc.stderr
    assert "run 0" not in proc.stdout  # nothing was trained
    proc = _run("examples/node_classification.py", "--dropout", "1.5")  # and a bad value is one line too
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "argument --dropout: must be a finite number in [0, 1), got '1.5'" in proc.stderr


# ------------------------------------------------------------------ 3. file modes
@pytest.mark.parametrize("write", [lambda p: atomic_save({"a": 1}, p), lambda p: atomic_write_json({"a": 1}, p)])
def test_atomic_writes_keep_the_mode_a_plain_open_gives(tmp_path, write):
    old = os.umask(0o027)
    try:
        with open(tmp_path / "plain", "w"):
            pass
        write(tmp_path / "new")
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    (tmp_path / "shared").write_text("x")
    (tmp_path / "shared").chmod(0o644)
    write(tmp_path / "shared")  # an existing file keeps its mode
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o644
    (tmp_path / "shared").chmod(0o604)
    write(tmp_path / "shared")
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o604


# ------------------------------------------------------------------ 4. command-line arguments
def test_check_command_refuses_bad_arguments_in_one_line():
    for argv, message in [
        (["--backends", "cpux"], "argument --backends: unknown 'cpux'; choose from cpu"),
        (["--device", "gpu0"], "argument --device: 'gpu0' is not a device"),
    ]:
        proc = _run("-m", "graphattn.check", *argv)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert "self-check on" not in proc.stdout  # nothing ran


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backends", "cpu,typo"], "unknown 'typo'"),
        (["--backends", ","], "--backends"),
        (["--backends", "reference"], "unknown 'reference'"),
        (["--device", "cuda:x"], "--device"),
        (["--seed", "-1"], "--seed"),
        (["--dtype", "int8"], "--dtype"),
    ],
)
def test_check_arguments_outside_their_domain_are_usage_errors(argv, message, capsys):
    from graphattn import check

    assert message in _usage_error(capsys, check.main, argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_check_command_without_cuda_says_so(capsys):
    from graphattn import check

    assert "no CUDA GPU is available" in _usage_error(capsys, check.main, ["--device", "cuda"])


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("node_classification", ["--dropout", "1.0"], "--dropout"),
        ("node_classification", ["--heads", "0"], "--heads"),
        ("node_classification", ["--lr", "nan"], "--lr"),
        ("node_classification", ["--seed", "-3"], "--seed"),
        ("graph_classification", ["--attn-dropout", "-0.1"], "--attn-dropout"),
        ("graph_classification", ["--weight-decay", "inf"], "--weight-decay"),
        ("link_prediction", ["--val-ratio", "0"], "--val-ratio"),
        ("link_prediction", ["--dropout", "1.5"], "--dropout"),
        ("link_prediction", ["--runs", "0"], "--runs"),
        ("language_model", ["--main", "nope"], "--main"),
        ("language_model", ["--variants", "window", "--main", "linear"], "--main"),
        ("language_model", ["--dim", "30"], "multiple of --heads"),
        ("language_model", ["--variants", "window,typo"], "--variants"),
        ("text_classification", ["--label-smoothing", "1.5"], "--label-smoothing"),
        ("text_classification", ["--patience", "-1"], "--patience"),
        ("text_classification", ["--dim", "30"], "multiple of --heads"),
        ("translation", ["--max-len", "1"], "--max-len"),
        ("translation", ["--beam", "0"], "--beam"),
        ("translation", ["--warmup", "1"], "--warmup"),
        ("robustness", ["--budgets", "0,x"], "--budgets"),
        ("robustness", ["--noise-levels", "0,nan"], "--noise-levels"),
        ("robustness", ["--text-rates", "0,2"], "--text-rates"),
        ("robustness", ["--prune-threshold", "2"], "--prune-threshold"),
        ("robustness", ["--models", ""], "--models"),
        ("ogbn_arxiv", ["--num-neighbors", "0,5,5"], "--num-neighbors"),
        ("ogbn_arxiv", ["--input-dropout", "1"], "--input-dropout"),
        ("ogbn_products", ["--lr", "0"], "--lr"),
        ("visualize_attention", ["--sentences", "0"], "--sentences"),
        ("visualize_attention", ["--node", "-1"], "--node"),
    ],
)
def test_example_arguments_outside_their_domain_are_usage_errors(name, argv, message, tmp_path, capsys):
    parse = importlib.import_module(name).parse_args
    out = ["--out-dir", str(tmp_path)] if name == "visualize_attention" else ["--out", str(tmp_path / "r.json")]
    assert message in _usage_error(capsys, parse, out + argv)


# ------------------------------------------------------------------ 5. argument domains of the library
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(chunk=0), "chunk must be a positive integer"),
        (dict(chunk=-2), "chunk"),
        (dict(chunk=2.5), "chunk"),
        (dict(chunk=True), "chunk"),
        (dict(kdim=0), "kdim"),
        (dict(vdim=-1), "vdim"),
    ],
)
def test_linear_attention_layer_checks_its_constructor(kwargs, message):
    from graphattn.nn import LinearAttention

    with pytest.raises(ValueError, match=message):
        LinearAttention(8, 2, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(chunk=0, causal=True), ValueError, "chunk"),
        (dict(chunk=1.5), ValueError, "chunk"),
        (dict(eps=math.nan), ValueError, "eps"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=-1e-6), ValueError, "eps"),
        (dict(eps=math.inf), ValueError, "eps"),
        (dict(causal=1), TypeError, "causal"),
        (dict(return_weights="yes"), TypeError, "return_weights"),
    ],
)
def test_linear_attention_op_checks_its_arguments(kwargs, error, message):
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(error, match=message):
        ops.linear_attention(q, q, q, **kwargs)


def test_linear_attention_op_names_the_tensor_of_the_wrong_dtype():
    q = torch.randn(1, 2, 5, 4)
    for i, name in enumerate(("query", "key", "value")):
        args = [q, q, q]
        args[i] = q.long()
        with pytest.raises(TypeError, match=f"^{name} must be a floating-point"):
            ops.linear_attention(*args)
        args[i] = q.double()
        with pytest.raises(TypeError, match=name):
            ops.linear_attention(*args)


EI = torch.tensor([[0, 1, 2, 3, 0, 2], [1, 2, 3, 0, 2, 1]])
IDS = torch.tensor([[2, 5, 6, 7, 0], [2, 8, 9, 0, 0]])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: rb.feature_noise(torch.randn(6, 3), math.nan), "scale"),
        (lambda: rb.feature_noise(torch.randn(6, 3), math.inf), "scale"),
        (lambda: rb.feature_noise(torch.randn(6, 3), 1.0, relative=False, seed=1.5), "seed"),
        (lambda: rb.feature_noise(torch.randn(1, 1), 1.0), "at least 2 elements"),
        (lambda: rb.feature_noise(torch.tensor([[1.0, math.nan]]), 1.0), "not finite"),
        (lambda: rb.feature_noise(torch.ones(4, 2, dtype=torch.long), 1.0), "floating-point"),
        (lambda: rb.insert_random_edges(EI, 6, math.nan), "budget"),
        (lambda: rb.insert_random_edges(EI, 6, math.inf), "budget"),
        (lambda: rb.insert_random_edges(EI, -6, 1), "num_nodes"),
        (lambda: rb.insert_random_edges(EI, 6, 1, seed=2**70), "seed"),
        (lambda: rb.delete_random_edges(EI, -0.5), "budget"),
        (lambda: rb.delete_random_edges(EI, 0.5, undirected=1), "undirected"),
        (lambda: rb.delete_random_edges(EI.tolist(), 0.5), "edge_index"),
        (lambda: rb.token_dropout(IDS, math.nan), "rate"),
        (lambda: rb.token_dropout(IDS, 0.5, unk_id=-1), "unk_id"),
        (lambda: rb.token_dropout(IDS.float(), 0.5), "ids"),
        (lambda: rb.token_substitution(IDS, 0.5, 10, low=10), "low"),
        (lambda: rb.token_substitution(IDS, 0.5, -1), "vocab_size"),
        (lambda: rb.attention_on_edges(EI, torch.rand(5, 1), EI[:, :1], 4), "weights"),
        (lambda: rb.attention_on_edges(EI, torch.rand(6, 1), EI[:, :1], -1), "num_nodes"),
    ],
)
def test_robustness_parameters_outside_their_domain_are_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_gradient_attack_checks_its_parameters():
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    m = torch.tensor([True, True, False, False])
    for kwargs, message in [
        (dict(steps=0), "steps"),
        (dict(lr=math.nan), "lr"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(surrogate_epochs=-1), "surrogate_epochs"),
        (dict(budget=7), "node pairs"),
    ]:
        kwargs = {"budget": 1, **kwargs}
        with pytest.raises(ValueError, match=message):
            rb.gradient_attack(x, EI, y, m, ~m, **kwargs)
    with pytest.raises(ValueError, match="y must be"):
        rb.gradient_attack(x, EI, y.float(), m, ~m, 1)


def _op_calls():
    """``(op, input name, call(inputs) -> output, inputs)`` for every tensor input of every op."""
    n, e, h, c = 4, EI.size(1), 2, 3
    r = torch.randn
    specs = {
        "edge_softmax": (lambda t: ops.edge_softmax(t["scores"], EI[1], num_nodes=n), dict(scores=r(e, h))),
        "gat": (
            lambda t: ops.gat_attention(
                t["score_src"], t["score_dst"], t["value"], EI, edge_score=t["edge_score"], edge_mask=t["edge_mask"]
            ),
            dict(score_src=r(n, h), score_dst=r(n, h), value=r(n, h, c), edge_score=r(e, h), edge_mask=r(e)),
        ),
        "gatv2": (
            lambda t: ops.gatv2_attention(
                t["x_src"],
                t["x_dst"],
                t["att"],
                EI,
                value=t["value"],
                edge_feat=t["edge_feat"],
                edge_mask=t["edge_mask"],
            ),
            dict(
                x_src=r(n, h, c), x_dst=r(n, h, c), att=r(h, c), value=r(n, h, c), edge_feat=r(e, h, c), edge_mask=r(e)
            ),
        ),
        "dot_product": (
            lambda t: ops.dot_product_attention(
                t["query"],
                t["key"],
                t["value"],
                EI,
                edge_key=t["edge_key"],
                edge_value=t["edge_value"],
                edge_bias=t["edge_bias"],
                edge_mask=t["edge_mask"],
            ),
            dict(
                query=r(n, h, c),
                key=r(n, h, c),
                value=r(n, h, c),
                edge_key=r(e, h, c),
                edge_value=r(e, h, c),
                edge_bias=r(e, h),
                edge_mask=r(e),
            ),
        ),
        "score_attention": (
            lambda t: ops.score_attention(t["scores"], t["value"], EI, edge_mask=t["edge_mask"]),
            dict(scores=r(e, h), value=r(n, h, c), edge_mask=r(e)),
        ),
    }
    return [
        pytest.param(call, inputs, name, id=f"{op}-{name}") for op, (call, inputs) in specs.items() for name in inputs
    ]


@pytest.mark.parametrize("call, inputs, name", _op_calls())
@pytest.mark.parametrize("wrong", [torch.int64, torch.float64])
def test_every_op_names_the_input_of_the_wrong_dtype(call, inputs, name, wrong):
    call(inputs)  # as given, the call runs
    if wrong == torch.float64 and len(inputs) == 1:
        return  # a single input has no other dtype to disagree with
    bad = {**inputs, name: inputs[name].to(wrong)}
    with pytest.raises(TypeError) as err:
        call(bad)
    text = str(err.value)
    if wrong == torch.int64:
        assert text.startswith(f"{name} must be"), text
    else:
        assert name in text and "float64" in text, text
