"""The Triton kernels through the installed Triton's real compiler, for an H100/H200
(sm_90), on a machine with no GPU (tests/triton_aot_worker.py). The interpreter tests
(test_triton.py) check the arithmetic; this checks that compiled Triton accepts the
kernels -- loop bounds, offsets, dtypes, every score kind -- before a GPU ever runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphattn.ops import triton_backend

pytestmark = pytest.mark.skipif(not triton_backend.is_available(), reason="triton not installed")

WORKER = Path(__file__).with_name("triton_aot_worker.py")


def _compile(*flags: str):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(WORKER.parents[1])  # this checkout's graphattn, not an installed one
    proc = subprocess.run([sys.executable, str(WORKER), *flags], capture_output=True, text=True, env=env, timeout=900)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, rows


def _check(proc, rows, expected: int):
    assert rows, f"the worker printed nothing (exit {proc.returncode}): {proc.stderr[-3000:]}"
    errors = [r for r in rows if "error" in r]
    assert not errors, "\n".join(f"{r['kernel']} {r['kind']} {r['dtype']}: {r['error']}" for r in errors)
    kernels = [r for r in rows if "kernel" in r]
    assert len(kernels) == expected and all(r["cubin_bytes"] > 0 for r in kernels)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_kernel_compiles_for_sm90():
    from graphattn.ops._fused import KINDS

    proc, rows = _compile()
    _check(proc, rows, expected=3 * len(KINDS) * 2 + 2)


@pytest.mark.slow
def test_every_kernel_dtype_and_flag_set_compiles_for_sm90():
    from graphattn.ops._fused import KINDS

    proc, rows = _compile("--full")
    _check(proc, rows, expected=3 * len(KINDS) * 4 * 2 + 2)
