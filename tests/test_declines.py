"""Declines are values: a backend that cannot run a call raises ``BackendDeclined`` (or,
when none can, ``NoBackendAccepts``) carrying the reasons; asking a backend builds
nothing (the CPU kernel is built by its ``prepare``, only before a call runs on it); the
build leaves ``PATH`` as it found it; environment switches follow one rule."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from graphattn import Graph, _env, ops
from graphattn.ops import _dispatch, cpu

ROOT = Path(__file__).resolve().parents[1]


def _in_subprocess(code: str, env: dict) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True, timeout=600
    )


def _graph() -> Graph:
    return Graph.from_edge_index(torch.tensor([[0, 1, 1], [1, 0, 1]]), 2)


def _gat(**kwargs):
    return ops.gat_attention(torch.randn(2, 1), torch.randn(2, 1), torch.randn(2, 1, 3), _graph(), **kwargs)


def _call(graph: Graph) -> dict:
    """A described GAT call on CPU (the keys the pipeline's ``describe_call`` gives)."""
    return dict(
        device=torch.device("cpu"),
        dtype=torch.float32,
        graph=graph,
        dropout=0.0,
        need_weights=False,
        has_edge_terms=False,
        has_edge_mask=False,
        heads=1,
        channels=3,
    )


@pytest.fixture
def throwaway():
    """Register test backends of ``gat`` (the registry is global): removed afterwards."""
    names = []

    def register(name, **kwargs):
        names.append(name)
        ops.register_backend("gat", name, _dispatch._REGISTRY["gat"]["reference"].fn, **kwargs)

    try:
        yield register
    finally:
        for name in names:
            _dispatch._REGISTRY["gat"].pop(name, None)


# ------------------------------------------------------------ the exceptions
def test_a_forced_backend_that_declines_raises_backend_declined_with_its_reason(throwaway):
    throwaway("test-decliner", decline=lambda **_: "never on a Tuesday", priority=-100)
    with pytest.raises(ops.BackendDeclined) as info:
        _gat(backend="test-decliner")
    e = info.value
    assert isinstance(e, RuntimeError)
    assert (e.op, e.backend, e.reason) == ("gat", "test-decliner", "never on a Tuesday")
    assert str(e) == (
        "backend 'test-decliner' cannot run 'gat' here: never on a Tuesday (device=cpu, dtype=torch.float32)"
    )
    again = pickle.loads(pickle.dumps(e))
    assert (type(again), str(again), again.reason) == (ops.BackendDeclined, str(e), e.reason)


def test_a_real_decline_is_a_backend_declined_too():
    C = cpu.MAX_BUFFERED_CHANNELS + 1  # the channel limit is known without the kernel
    x, att = torch.randn(2, 1, C), torch.randn(1, C)
    with pytest.raises(ops.BackendDeclined, match="cannot run 'gatv2' here: GATV2 with 1025 channels") as info:
        ops.gatv2_attention(x, x, att, _graph(), backend="cpu")
    assert info.value.reason.startswith("GATV2 with 1025 channels")


def test_a_call_no_backend_takes_raises_no_backend_accepts_with_every_reason(monkeypatch):
    only = _dispatch.Backend("only", _dispatch._REGISTRY["gat"]["reference"].fn, lambda **_: "not this one", 0)
    monkeypatch.setitem(_dispatch._REGISTRY, "gat", {"only": only})
    with pytest.raises(ops.NoBackendAccepts) as info:
        _gat()
    e = info.value
    assert isinstance(e, RuntimeError) and not isinstance(e, ops.BackendDeclined)
    assert (e.op, e.declined) == ("gat", {"only": "not this one"})
    assert str(e) == "no backend of 'gat' accepts this call: {'only': 'not this one'}"


def test_both_are_exported():
    assert {"BackendDeclined", "NoBackendAccepts"} <= set(ops.__all__)
    assert ops.BackendDeclined is _dispatch.BackendDeclined and ops.NoBackendAccepts is _dispatch.NoBackendAccepts


# ------------------------------------------------------------ prepare
def test_a_backend_whose_prepare_fails_is_skipped_and_why_not_says_why(throwaway):
    prepared, ran = [], []
    throwaway("test-unready", prepare=lambda: prepared.append(1) or "its toolchain is on holiday", priority=100)
    _dispatch._REGISTRY["gat"]["test-unready"].fn = lambda *a, **k: ran.append(1)
    throwaway("test-last", prepare=lambda: prepared.append("last") or None, priority=-100)
    assert ops.explain_dispatch("gat", **_call(_graph()))["test-unready"] is None  # explaining prepares nothing
    assert not prepared

    _gat()
    assert ops.last_backend("gat") not in ("test-unready", "test-last") and not ran
    assert ops.why_not("gat")["test-unready"] == "its toolchain is on holiday"
    assert prepared == [1]  # the chosen candidate's prepare only, never one below it
    with pytest.raises(ops.BackendDeclined, match="its toolchain is on holiday") as info:
        _gat(backend="test-unready")
    assert info.value.reason == "its toolchain is on holiday" and not ran


def test_a_backend_is_prepared_before_each_call_it_runs(throwaway):
    prepared = []
    throwaway("test-ready", prepare=lambda: prepared.append(1), priority=100)
    _gat()
    _gat(backend="test-ready")
    assert ops.last_backend("gat") == "test-ready" and prepared == [1, 1] and ops.why_not("gat") == {}


# ------------------------------------------------------------ the CPU kernel builds only to run
def test_explain_dispatch_does_not_build_the_cpu_kernel(tmp_path):
    proc = _in_subprocess(
        """
        import json, torch
        from graphattn import Graph, ops
        g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), 2)
        call = dict(device=torch.device("cpu"), dtype=torch.float32, graph=g, dropout=0.0, need_weights=False,
                    has_edge_terms=False, has_edge_mask=False, heads=2, channels=3)
        answers = ops.explain_dispatch("gat", **call)
        answers_es = ops.explain_dispatch("edge_softmax", device=call["device"], dtype=call["dtype"], graph=g)
        print(json.dumps({"gat": answers, "edge_softmax": answers_es, "loaded": ops.cpu._EXT is not None,
                          "known": ops.cpu.known_reason()}))
    """,
        {"TORCH_EXTENSIONS_DIR": str(tmp_path), "GRAPHATTN_DISABLE_CPU_KERNEL": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert not got["loaded"]
    assert list(tmp_path.iterdir()) == [], "explaining a call built something"
    assert "cpu" in got["gat"] and got["gat"]["cpu"] == got["known"] == got["edge_softmax"]["cpu"]


def test_the_cpu_decline_names_missing_tools_without_building_and_warns_once(monkeypatch):
    def no_build(*a, **k):
        raise AssertionError("the decline started a build")

    monkeypatch.setattr(cpu, "_EXT", None)
    monkeypatch.setattr(cpu, "_EXT_ERROR", None)
    monkeypatch.setattr(cpu, "_MISSING_TOOLS", "no C++ compiler 'c++' on PATH")
    monkeypatch.setattr(cpu, "_WARNED_MISSING_TOOLS", False)
    monkeypatch.setattr(cpu, "load_extension", no_build)
    monkeypatch.delenv("GRAPHATTN_DISABLE_CPU_KERNEL", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reason = ops.explain_dispatch("gat", **_call(_graph()))["cpu"]
        _gat()
        _gat()
    assert reason == "the native kernel could not be built (no C++ compiler 'c++' on PATH)"
    assert ops.last_backend("gat") == "reference" and ops.why_not("gat")["cpu"] == reason
    assert len([w for w in caught if "fused CPU kernel could not be built" in str(w.message)]) == 1
    with pytest.raises(ops.BackendDeclined, match="could not be built"):
        _gat(backend="cpu")


def test_the_cpu_kernel_build_leaves_path_as_it_was():
    """The build puts the venv's bin on PATH (where pip puts ninja) only while it runs. In
    the usual extensions cache, so a kernel the suite has built is only loaded again."""
    if cpu.known_reason() is not None:
        pytest.skip(cpu.known_reason())
    bindir = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != bindir)
    proc = _in_subprocess(
        """
        import json, os
        import torch.utils.cpp_extension as ext
        from graphattn.ops import cpu
        real, seen = ext.load, {}

        def spy(*args, **kwargs):
            seen["during"] = os.environ["PATH"]
            return real(*args, **kwargs)

        ext.load = spy
        before = os.environ["PATH"]
        cpu.load_extension()
        print(json.dumps({"before": before, "during": seen["during"], "after": os.environ["PATH"]}))
    """,
        {"PATH": path, "GRAPHATTN_KERNEL_CHECKS": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["after"] == got["before"] == path
    assert got["during"].split(os.pathsep)[0] == bindir


# ------------------------------------------------------------ environment switches
@pytest.mark.parametrize(
    "switch, variable",
    [
        (_env.kernel_checks, "GRAPHATTN_KERNEL_CHECKS"),
        (_env.cpu_kernel_disabled, "GRAPHATTN_DISABLE_CPU_KERNEL"),
        (_env.triton_interpret, "TRITON_INTERPRET"),
    ],
)
def test_a_switch_is_on_exactly_when_its_variable_is_1(monkeypatch, switch, variable):
    monkeypatch.delenv(variable, raising=False)
    assert not switch()
    for value, on in (("1", True), ("0", False), ("true", False), ("", False)):
        monkeypatch.setenv(variable, value)
        assert switch() is on, value


def test_disabling_the_cpu_kernel_is_read_at_each_call(monkeypatch):
    call = _call(_graph())
    monkeypatch.setenv("GRAPHATTN_DISABLE_CPU_KERNEL", "1")
    assert ops.explain_dispatch("gat", **call)["cpu"] == "turned off by GRAPHATTN_DISABLE_CPU_KERNEL=1"
    monkeypatch.delenv("GRAPHATTN_DISABLE_CPU_KERNEL")
    assert ops.explain_dispatch("gat", **call)["cpu"] == cpu.known_reason()


def test_kernel_checks_are_read_when_the_kernel_is_built(monkeypatch):
    monkeypatch.setenv("GRAPHATTN_KERNEL_CHECKS", "1")
    assert "-DGRAPHATTN_BOUNDS_CHECK" in cpu._cflags()
    monkeypatch.setenv("GRAPHATTN_KERNEL_CHECKS", "0")
    assert "-DGRAPHATTN_BOUNDS_CHECK" not in cpu._cflags()
