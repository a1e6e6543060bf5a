"""The self-check (python -m graphattn.check) and the gradient of returned weights on
every backend, which the self-check found missing on the fused ones."""

import os
import subprocess
import sys

import pytest
import torch

from graphattn import check, ops
from graphattn.ops import _dispatch


def test_self_check_runs_every_backend_on_cpu_and_reports_each():
    # Triton under the interpreter (which the suite turns on) takes minutes here; tests/test_triton.py covers it.
    rows = check.run_checks(torch.device("cpu"), torch.float64, backends=["cpu", "dense", "flex", "scatter"])
    by_backend = {(r["op"], r["backend"], r["graph"]): r for r in rows}
    for op in ("edge_softmax", "gat", "gatv2", "dot_product"):
        if ops.cpu.unavailable_reason() is None:
            assert by_backend[(op, "cpu", "random")]["status"] == "ok", by_backend[(op, "cpu", "random")]
    assert by_backend[("dot_product", "dense", "pattern")]["status"] == "ok"
    assert by_backend[("dot_product", "dense", "random")]["status"].startswith("declined: ")
    assert not any(r["backend"] == "triton" for r in rows)
    table = check.format_table(rows, torch.device("cpu"), torch.float64)
    assert "0 disagree or fail" in table


def test_self_check_command_exits_zero_and_prints_the_table():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as a user runs it: no interpreter
    proc = subprocess.run(
        [sys.executable, "-m", "graphattn.check", "--device", "cpu", "--dtype", "float64"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "graphattn self-check on cpu" in proc.stdout and "agree with reference" in proc.stdout
    if not torch.cuda.is_available():  # without a GPU (and the interpreter) Triton says why it cannot run
        assert "declined: it runs on CUDA tensors" in proc.stdout


def test_a_wrong_backend_is_reported_and_fails_the_check(monkeypatch):
    reference = _dispatch._REGISTRY["gat"]["reference"]

    def off_by_one_percent(*args, **kwargs):
        out, alpha = reference.fn(*args, **kwargs)
        return out * 1.01, alpha

    monkeypatch.setitem(
        _dispatch._REGISTRY["gat"],
        "broken",
        _dispatch.Backend("broken", off_by_one_percent, _dispatch._accept_all, -100),
    )
    row = check.check_case(
        "gat",
        "broken",
        check.random_graph(50, 300, torch.device("cpu"), torch.Generator().manual_seed(0)),
        torch.float64,
        torch.device("cpu"),
        0,
    )
    assert row["status"] == "MISMATCH" and row["max_abs_diff"] > 1e-3


@pytest.mark.parametrize("op", ["gat", "gatv2", "dot_product"])
def test_returned_weights_have_the_reference_gradient_on_every_backend(op):
    graph = check.random_graph(40, 200, torch.device("cpu"), torch.Generator().manual_seed(1))
    call, tensors = check.op_inputs(op, graph, torch.float64, torch.device("cpu"), torch.Generator().manual_seed(2))
    target = torch.rand(graph.num_edges, check.HEADS, dtype=torch.float64)

    def weight_loss_grads(backend):
        _, alpha = call(backend, *tensors)
        return torch.autograd.grad((alpha * target).sum(), tensors, allow_unused=True)

    expected = weight_loss_grads("reference")
    for backend in ops.available_backends(op):
        try:
            got = weight_loss_grads(backend)
        except ops.BackendDeclined:
            continue
        for g, r in zip(got, expected):
            if r is None:  # values do not enter the weights
                assert g is None or not bool(g.abs().sum())
            else:
                torch.testing.assert_close(g, r)
    with torch.no_grad():  # no gradient wanted: the kernel's own weights, nothing recomputed
        _, alpha = call(None, *tensors)
        assert not alpha.requires_grad


def test_every_op_has_check_inputs_from_its_record_and_an_unknown_op_is_refused():
    from graphattn.ops import _dispatch, _inputs, functional

    assert tuple(functional.RECORDS) == tuple(spec.op for spec in _inputs.FUSED)
    assert _dispatch.OPS == ("edge_softmax",) + tuple(functional.RECORDS)
    graph = check.random_graph(20, 60, torch.device("cpu"), torch.Generator().manual_seed(0))
    for op in _dispatch.OPS:
        call, tensors = check.op_inputs(op, graph, torch.float64, torch.device("cpu"), torch.Generator().manual_seed(1))
        outs = call("reference", *tensors)
        assert outs[0].shape[0] in (graph.num_edges, graph.num_dst)
        if op in functional.RECORDS:  # every node input of the record is given, weights returned
            declared = [a for a in functional.RECORDS[op].spec.tensors if a.rows != "edge"]
            assert len(tensors) == len(declared) and outs[1].shape == (graph.num_edges, check.HEADS)
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        check.op_inputs("nope", graph, torch.float64, torch.device("cpu"), torch.Generator())
