"""benchmarks/gpu_first_contact.py: its dry run (the same steps, tiny, on CPU) records every
step with rc 0, the versions, and check tables that compared backends with the reference;
a step that hangs (a grandchild included) is ended at its timeout and the others still run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_first_contact.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_first_contact  # noqa: E402


def test_dry_run_records_every_step(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "check-float32: start" in proc.stderr  # progress lines per step
    found = list(tmp_path.glob("gpu-first-contact-*.json"))
    assert len(found) == 1
    report = json.loads(found[0].read_text())
    assert report["dry_run"] is True and report["ok"] is True
    steps = report["steps"]
    assert set(steps) == {"environment", "check-float32", "check-float64", "benchmark", "products"}
    for name, step in steps.items():
        assert step["rc"] == 0 and not step["timed_out"], (name, step.get("stderr_tail"))
        assert step["wall_s"] >= 0 and "stdout_tail" in step and "stderr_tail" in step
    envinfo = report["environment"]
    for key in ("torch", "triton", "torch_geometric", "numpy", "graphattn", "python"):
        assert envinfo.get(key) and not str(envinfo[key]).startswith("unavailable"), key
    for dtype in ("float32", "float64"):
        check = steps[f"check-{dtype}"]["check"]
        assert check["summary"]["agree"] >= 1 and check["summary"]["disagree_or_fail"] == 0
        assert "cpu" in check["backends_compared_with_reference"]
        compared = [r for r in check["rows"] if r["status"] == "ok"]
        assert compared and all(r["max_diff"] is not None and r["max_diff"] < 1e-3 for r in compared)
        assert {r["op"] for r in compared} >= {"edge_softmax", "gat", "gatv2", "dot_product"}
    bench = steps["benchmark"]
    assert bench["results_json"] and Path(bench["results_json"]).parent == tmp_path
    cases = bench["results"]["cases"]
    assert cases and all(c["graphattn"]["time_ms"] for c in cases) and "pyg" in cases[0]
    products = steps["products"]["result"]
    assert products["nodes"] == gpu_first_contact.DRY_NODES
    assert products["edge_index"]["dtype"] == "torch.int64"
    # the user's path: both directions of each random pair, no self-loops built in (the layers add them)
    assert products["directed_edges"] == 2 * products["undirected_edges"]
    assert len(products["steps"]) == 2 and all(s["loss_finite"] for s in products["steps"])
    assert report["notes"]  # what the dry run stands in for is said


def test_a_hanging_step_is_ended_with_its_children():
    hang = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    hang += "print('started', flush=True); time.sleep(60)"
    t0 = time.perf_counter()
    rec = gpu_first_contact.run_step("hang", [sys.executable, "-c", hang], 2.0, dict(os.environ))
    assert time.perf_counter() - t0 < 20  # the grandchild holding the pipes does not keep it waiting
    assert rec["timed_out"] and rec["rc"] != 0 and rec["timeout_s"] == 2.0
