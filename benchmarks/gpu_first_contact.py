#!/usr/bin/env python
"""A GPU first contact in one command: graphattn's self-check, the GPU benchmark against
its peers and an ogbn-products-size training step, recorded in one JSON.

    python benchmarks/gpu_first_contact.py             # on a CUDA machine: at most 8 minutes
    python benchmarks/gpu_first_contact.py --dry-run   # the same steps, tiny, on CPU (under a minute)

Made for a CUDA machine with no network and its own torch (>= 2.11), Triton (>= 3.6) and
PyG. Every step runs in its own subprocess (its own session, so a hung grandchild goes
too) with its own timeout, so a failure or a hang costs that step and no other; each
records its return code, wall time and the tail of its stdout and stderr. The steps:

  environment     device name and capability, driver and CUDA versions, package versions
  check-<dtype>   python -m graphattn.check --device cuda --dtype D, D = float32, bfloat16,
                  float16: every backend against the reference (outputs and gradients)
  benchmark       python benchmarks/run.py gpu --quick: graphattn against eager and compiled
                  PyG, SDPA and compiled flex_attention, its JSON written to --out
  products        3 graphattn GATConv layers (products_scale.py's widths; that script is
                  CPU-only) on a random graph of ogbn-products' size (2,449,029 nodes,
                  61,859,140 undirected edges), on the user's path: an unsorted int64
                  edge_index built on the GPU, a Graph from it, default layer arguments
                  (self-loops added by the layers): two forward+backward+Adam steps (the
                  first builds the kernels), their times and the whole child's peak
                  torch.cuda.max_memory_allocated, graph build included

The timeouts (seconds, GPU run) add up to under 8 minutes, and the run as a whole is held
to --budget (480 s) as well: a step gets what its table entry says or what is left,
whichever is less. --timeout-scale multiplies the table (not the budget).

--dry-run: the same steps on CPU with Triton's interpreter (TRITON_INTERPRET=1 in the
children's environment): the check in float32 and float64 with the cpu and dense backends
(the interpreter takes minutes over the check's graphs, so triton is left out, and the
JSON says so), run.py's cpu suite with --quick --only kind=edge_softmax (its gpu suite
needs CUDA), and the products step at 2,000 nodes.

Writes <out>/gpu-first-contact-<date>.json (atomically) and exits 1 if any step failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
RESULTS = ROOT / "benchmarks" / "results"
TAIL = 4000  # characters of stdout / stderr kept per step
BUDGET_S = 480.0

# step -> timeout in seconds (GPU run, dry run); the GPU column adds up to 460 s.
TIMEOUTS = {
    "environment": (20, 60),
    "check-float32": (75, 90),
    "check-bfloat16": (55, 90),
    "check-float16": (55, 90),
    "check-float64": (55, 90),
    "benchmark": (185, 120),
    "products": (70, 60),
}
PRODUCTS_NODES, PRODUCTS_UNDIRECTED_EDGES = 2_449_029, 61_859_140
DRY_NODES = 2_000


def log(msg: str) -> None:
    print(f"[gpu-first-contact {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------- children
def environment_child() -> dict:
    """Versions and the device, printed as JSON by a child (so a CUDA init that hangs costs one step)."""
    import platform

    import numpy
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_runtime": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    for name in ("triton", "torch_geometric", "graphattn"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 -- recorded, not raised
            info[name] = f"unavailable: {type(e).__name__}: {e}"
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
        info["capability"] = list(torch.cuda.get_device_capability(0))
        info["device_count"] = torch.cuda.device_count()
        info["total_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        try:
            info["cudnn"] = torch.backends.cudnn.version()
        except Exception:  # noqa: BLE001
            info["cudnn"] = None
        info["cuda_driver_api"] = _driver_api_version()
        info["driver"] = _nvidia_smi_driver()
    return info


def _driver_api_version():
    """The CUDA version the driver supports (cuDriverGetVersion, e.g. 12040 -> "12.4")."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            return f"{v.value // 1000}.{v.value % 1000 // 10}"
    except OSError:
        pass
    return None


def _nvidia_smi_driver():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _user_gat(features: int, classes: int):
    """products_scale.py's 3-layer GAT (4 x 32 hidden, one head out, ELU) as a user writes it:
    every GATConv with its default arguments (imported here: the parent never imports torch)."""
    import torch
    import torch.nn.functional as F

    from graphattn.nn import GATConv

    class UserGAT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            heads, hidden = 4, 32
            self.convs = torch.nn.ModuleList(
                [
                    GATConv(features, hidden, heads=heads),
                    GATConv(heads * hidden, hidden, heads=heads),
                    GATConv(heads * hidden, classes, heads=1, concat=False),
                ]
            )

        def forward(self, x, graph):
            for conv in self.convs[:-1]:
                x = F.elu(conv(x, graph))
            return self.convs[-1](x, graph)

    return UserGAT()


def products_child(device: str, nodes: int, edges: int, steps: int = 2) -> dict:
    """Products-size GAT training steps on ``device``, on the path a user takes: a random, unsorted
    ``edge_index`` without self-loops, a ``Graph`` built from it (the ``edge_index`` then dropped),
    ``GATConv`` with its default arguments (self-loops added by the layer), peak memory over the
    whole child (graph build included). Sizes and widths are benchmarks/products_scale.py's."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from products_scale import CLASSES, FEATURES, pyg_estimate_gib

    from graphattn import Graph, ops

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    res = {"device": str(dev), "nodes": nodes, "undirected_edges": edges, "features": FEATURES, "classes": CLASSES}
    res["model"] = (
        "3 x graphattn GATConv with default arguments (add_self_loops=True), 4 heads x 32 channels (concat) "
        "hidden, 1 head out, ELU, Adam"
    )
    res["path"] = "user: unsorted edge_index without self-loops, default layer arguments, peak including the build"
    t = time.perf_counter()
    gen = torch.Generator(device=dev).manual_seed(0)
    src = torch.randint(0, nodes, (edges,), generator=gen, device=dev)
    dst = torch.randint(0, nodes - 1, (edges,), generator=gen, device=dev)
    dst += (dst >= src).long()  # no self-loop among the random pairs
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])  # int64, unsorted, both directions
    del src, dst
    res["edge_index"] = {"dtype": str(edge_index.dtype), "shape": list(edge_index.shape)}
    graph = Graph.from_edge_index(edge_index, nodes)
    del edge_index
    sync()
    res["graph_build_s"] = time.perf_counter() - t
    res["directed_edges"] = graph.num_edges
    if cuda:
        res["graph_build_max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30

    x = torch.randn(nodes, FEATURES, generator=gen, device=dev)
    y = torch.randint(0, CLASSES, (nodes,), generator=gen, device=dev)
    train = torch.rand(nodes, generator=gen, device=dev) < 0.08
    model = _user_gat(FEATURES, CLASSES).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    res["steps"] = []
    for i in range(steps):
        sync()
        t0 = time.perf_counter()
        out = model(x, graph)
        loss = F.cross_entropy(out[train], y[train])
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        step = {
            "step": i,
            "note": "first call: includes building the kernels" if i == 0 else "warm",
            "forward_s": t1 - t0,
            "backward_s": t2 - t1,
            "optimizer_s": t3 - t2,
            "step_s": t3 - t0,
            "loss": float(loss.detach()),
            "loss_finite": bool(torch.isfinite(loss.detach())),
        }
        if cuda:  # never reset: the peak so far, graph build included
            step["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["steps"].append(step)
        del out, loss
    res["gat_backend"] = ops.last_backend("gat")
    res["gat_declined"] = ops.why_not("gat")
    res["pyg_estimated_peak_gib"] = pyg_estimate_gib(graph.num_edges + nodes, [(4, 32), (4, 32), (1, CLASSES)])
    if cuda:
        res["max_memory_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return res


# ----------------------------------------------------------------------- parent
def run_step(name: str, cmd, timeout: float, env: dict) -> dict:
    """Run ``cmd`` in its own session; on timeout the whole process group is ended."""
    log(f"{name}: start (timeout {timeout:.0f} s): {' '.join(map(str, cmd))}")
    t0 = time.perf_counter()
    rec = {"command": [str(c) for c in cmd], "timeout_s": round(timeout, 1), "timed_out": False}
    try:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as e:
        rec.update(rc=None, wall_s=0.0, stdout_tail="", stderr_tail=f"could not start: {e}")
        log(f"{name}: could not start: {e}")
        return rec
    try:
        out, err = proc.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        rec["timed_out"] = True
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)  # the step's own session: its children go with it
            except ProcessLookupError:
                pass
            try:
                out, err = proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                out, err = "", ""
    rec["rc"] = proc.returncode
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    rec["stdout_tail"] = (out or "")[-TAIL:]
    rec["stderr_tail"] = (err or "")[-TAIL:]
    rec["_stdout"] = out or ""
    status = "TIMED OUT" if rec["timed_out"] else ("ok" if rec["rc"] == 0 else f"FAILED rc={rec['rc']}")
    log(f"{name}: {status} in {rec['wall_s']:.1f} s")
    return rec


CHECK_ROW = re.compile(r"^(\S+)\s+(random|pattern)\s+(\S+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(.+)$")
CHECK_SUMMARY = re.compile(r"(\d+) case\(s\) agree with reference, (\d+) disagree or fail, (\d+) declined")


def parse_check(stdout: str) -> dict:
    """The check's table as rows: which backend was compared with the reference, and how closely."""
    rows = []
    for line in stdout.splitlines():
        m = CHECK_ROW.match(line.strip())
        if not m:
            continue
        op, graph, backend, edges, ms, diff, status = m.groups()
        row = {"op": op, "graph": graph, "backend": backend, "edges": int(edges), "status": status.strip()}
        for key, v in (("first_ms", ms), ("max_diff", diff)):
            try:
                row[key] = float(v)
            except ValueError:
                row[key] = None
        rows.append(row)
    m = CHECK_SUMMARY.search(stdout)
    summary = dict(zip(("agree", "disagree_or_fail", "declined"), map(int, m.groups()))) if m else None
    compared = sorted({r["backend"] for r in rows if r["max_diff"] is not None})
    return {"rows": rows, "summary": summary, "backends_compared_with_reference": compared}


def last_json(stdout: str):
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/gpu_first_contact.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, Triton interpreted (< 1 minute)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every step's timeout (default 1)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all steps together (default 480)")
    p.add_argument("--child-env", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-products", nargs=3, metavar=("DEVICE", "NODES", "EDGES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_env:
        print(json.dumps(environment_child()))
        return 0
    if args.child_products:
        device, nodes, edges = args.child_products
        print(json.dumps(products_child(device, int(nodes), int(edges))))
        return 0

    dry = args.dry_run
    started = time.perf_counter()
    stamp = dt.datetime.now(dt.timezone.utc)
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if dry:
        env["TRITON_INTERPRET"] = "1"
    py = sys.executable
    device = "cpu" if dry else "cuda"
    dtypes = ["float32", "float64"] if dry else ["float32", "bfloat16", "float16"]
    plan = [("environment", [py, HERE, "--child-env"], None)]
    for d in dtypes:
        cmd = [py, "-m", "graphattn.check", "--device", device, "--dtype", d]
        if dry:
            cmd += ["--backends", "cpu,dense"]
        plan.append((f"check-{d}", cmd, None))
    if dry:
        bench = [py, ROOT / "benchmarks" / "run.py", "cpu", "--quick", "--only", "kind=edge_softmax"]
    else:
        bench = [py, ROOT / "benchmarks" / "run.py", "gpu", "--quick"]
    plan.append(("benchmark", bench + ["--out", out_dir], None))
    nodes = DRY_NODES if dry else PRODUCTS_NODES
    edges = round(PRODUCTS_UNDIRECTED_EDGES * nodes / PRODUCTS_NODES)
    plan.append(("products", [py, HERE, "--child-products", device, nodes, edges], None))

    notes = []
    if dry:
        notes += [
            "dry run: CPU, TRITON_INTERPRET=1 in the children's environment",
            "dry run: the check ran with --backends cpu,dense (triton under the interpreter takes minutes "
            "over the check's graphs)",
            "dry run: benchmarks/run.py's gpu suite needs CUDA, so its cpu suite ran with --quick "
            "--only kind=edge_softmax",
            f"dry run: the products step at {nodes:,} nodes and {edges:,} undirected edges",
        ]
    else:
        notes.append(
            "benchmarks/products_scale.py has no device option (it measures CPU RSS), so the products step "
            "is this script's own GPU version of its model"
        )
    steps = {}
    for name, cmd, _ in plan:
        left = args.budget - (time.perf_counter() - started)
        timeout = min(TIMEOUTS[name][1 if dry else 0] * args.timeout_scale, left)
        if timeout < 1:
            steps[name] = {"command": [str(c) for c in cmd], "rc": None, "skipped": "the budget was spent"}
            log(f"{name}: skipped, the budget was spent")
            continue
        bench_start = time.time()
        rec = run_step(name, cmd, timeout, env)
        stdout = rec.pop("_stdout")
        if name.startswith("check-"):
            rec["check"] = parse_check(stdout)
            rec["dtype"] = name.split("-", 1)[1]
            if rec["rc"] == 2 and "invalid choice" in rec["stderr_tail"]:
                rec["note"] = "graphattn.check does not accept this dtype"
        elif name in ("environment", "products"):
            rec["result"] = last_json(stdout) if rec["rc"] == 0 else None
        elif name == "benchmark":
            made = sorted(
                (f for f in out_dir.glob("*.json") if f.stat().st_mtime >= bench_start - 1) if out_dir.is_dir() else [],
                key=lambda f: f.stat().st_mtime,
            )
            made = [f for f in made if not f.name.startswith("gpu-first-contact")]
            rec["results_json"] = str(made[-1]) if made else None
            rec["results"] = json.loads(made[-1].read_text()) if made else None
        steps[name] = rec

    sys.path.insert(0, str(ROOT))
    from graphattn.train.experiment import atomic_write_json

    report = {
        "what": "graphattn GPU first contact" + (" (dry run on CPU)" if dry else ""),
        "dry_run": dry,
        "date": stamp.isoformat(timespec="seconds"),
        "command": "python benchmarks/gpu_first_contact.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "budget_s": args.budget,
        "timeout_scale": args.timeout_scale,
        "wall_s": round(time.perf_counter() - started, 2),
        "environment": (steps.get("environment") or {}).get("result"),
        "notes": notes,
        "steps": steps,
        "ok": all(s.get("rc") == 0 for s in steps.values()),
    }
    path = out_dir / f"gpu-first-contact-{stamp:%Y-%m-%d}.json"
    atomic_write_json(report, path)
    bad = [n for n, s in steps.items() if s.get("rc") != 0]
    log(f"done in {report['wall_s']:.0f} s; " + (f"failed: {', '.join(bad)}" if bad else "every step ok"))
    print(f"written: {path}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
