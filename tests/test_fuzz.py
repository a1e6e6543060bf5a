"""The hostile-input fuzz suite (tests/fuzz_worker.py) across backends, each batch of
cases in a subprocess: a case that crashed the process (a segfault in a kernel) fails
this test and names the case, instead of killing the test run."""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphattn.ops import cpu as cpu_backend
from graphattn.ops import triton_backend

ROOT = Path(__file__).resolve().parents[1]


def _fuzz(start: int, count: int, backends: str, **env) -> list:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz_worker.py"), str(start), str(count), backends],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    started = [line for line in proc.stderr.splitlines() if line.startswith("start ")]
    assert proc.returncode == 0, (
        f"the fuzz worker died (exit {proc.returncode}) during case "
        f"{started[-1] if started else '?'}:\n{proc.stderr[-3000:]}"
    )
    verdicts = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(verdicts) == count
    failures = [f"{v['case']}: {v['why']}" for v in verdicts if v["verdict"] == "fail"]
    assert not failures, "\n".join(failures[:10])
    return verdicts


def _check_coverage(verdicts):
    """The suite must actually exercise both outcomes and every class of hostile input."""
    outcome = collections.Counter(v["verdict"] for v in verdicts)
    assert outcome["raise"] >= len(verdicts) // 5 and outcome["agree"] >= len(verdicts) // 5, outcome
    returned = collections.Counter(v["case"]["special"] for v in verdicts if v["verdict"] == "agree")
    for special in ("nan", "inf", "-inf", "all_-inf"):
        assert returned[special] > 0, f"no case with {special} values ran to completion: {returned}"
    raised = {v["case"]["graph"] for v in verdicts if v["verdict"] == "raise"}
    assert {"out_of_range_src", "out_of_range_dst", "negative", "huge_nodes"} <= raised, raised
    raised_wrong = {v["case"]["wrong"] for v in verdicts if v["verdict"] == "raise"}
    assert {"rows", "heads", "rank", "dtype", "int"} <= raised_wrong, raised_wrong


needs_cpu = pytest.mark.skipif(not cpu_backend.is_available(), reason="fused CPU kernel not built here")


@needs_cpu
def test_fuzz_reference_and_cpu_kernel():
    _check_coverage(_fuzz(0, 600, "reference,cpu"))


@needs_cpu
def test_fuzz_bounds_checked_kernel():
    """The same cases on a kernel built to check every index it reads: validation that
    let an out-of-range index through would show here as a kernel error, a failure."""
    _check_coverage(_fuzz(600, 300, "reference,cpu", GRAPHATTN_KERNEL_CHECKS="1"))


@pytest.mark.skipif(
    not triton_backend.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="triton not installed or not interpreting",
)
def test_fuzz_triton_interpreter():
    verdicts = _fuzz(1000, 160, "reference,triton", TRITON_INTERPRET="1")
    assert collections.Counter(v["verdict"] for v in verdicts)["agree"] > 20
