#!/usr/bin/env python
"""Benchmark graphattn against its peers, side by side in one run.

    python benchmarks/run.py cpu              # the CPU suite (about 10 minutes on 2 cores)
    python benchmarks/run.py cpu --quick      # small sizes only (a smoke run)
    python benchmarks/run.py gpu              # on a CUDA machine

Every case runs in a fresh subprocess: inputs are built, one warm-up call is
made, then peak memory growth is taken over one call (CPU: the process's peak
RSS, reset through /proc/self/clear_refs, minus the RSS before the call, with
glibc's mmap threshold fixed so freed blocks are returned rather than reused; GPU:
torch.cuda.max_memory_allocated growth), then the median time of >= 5 calls.
Results go to benchmarks/results/<suite>-<date>.json and .md (machine, versions,
command, and for each case graphattn's and the peer's numbers with their ratios),
plus a log-log scaling plot of time and memory against the edge count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import roofline

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------- child
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _build(spec):
    import torch

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec.get("dtype", "float32"))
    kind, impl = spec["kind"], spec["impl"]
    if kind == "edge_softmax":
        E, H, N = spec["E"], spec["H"], spec["N"]
        scores = torch.randn(E, H, device=device, dtype=dtype)
        index = torch.randint(0, N, (E,), device=device)
        if impl == "graphattn":
            from graphattn import Graph, edge_softmax

            g = Graph.from_edge_index(torch.stack([torch.zeros_like(index), index]), (1, N))
            return lambda: edge_softmax(scores, g), False
        if impl == "pyg":
            from torch_geometric.utils import softmax

            return lambda: softmax(scores, index, num_nodes=N), False
        if impl == "torch_scatter":
            from torch_scatter import scatter_softmax

            return lambda: scatter_softmax(scores, index, dim=0, dim_size=N), False
    if kind in ("seq_layer", "seq_op"):
        return _build_seq(spec, device, dtype)
    if kind == "gps":
        return _build_gps(spec, device, dtype)
    N, E, C_in, C, H = spec["N"], spec["E"], spec["in"], spec["out"], spec["heads"]
    x = torch.randn(N, C_in, device=device, dtype=dtype)
    edge_index = torch.randint(0, N, (2, E), device=device)
    import torch_geometric.nn as pygnn

    import graphattn.nn as gnn

    peer_cls = {"gat": pygnn.GATConv, "gatv2": pygnn.GATv2Conv, "dot": pygnn.TransformerConv}[kind]
    ours_cls = {"gat": gnn.GATConv, "gatv2": gnn.GATv2Conv, "dot": gnn.DotProductConv}[kind]
    peer = peer_cls(C_in, C, heads=H).to(device, dtype)
    if impl == "pyg_compiled":  # the strongest PyG a user can have: the same layer through torch.compile
        layer = torch.compile(peer)
    else:
        layer = peer if impl == "pyg" else ours_cls.from_pyg(peer)
    if spec["mode"] == "forward":

        def run():
            with torch.no_grad():
                return layer(x, edge_index)

        return run, False
    xg = x.clone().requires_grad_(True)

    def run():
        out = layer(xg, edge_index)
        out.sum().backward()
        layer.zero_grad(set_to_none=True)
        xg.grad = None

    return run, True


def _build_seq(spec, device, dtype):
    """Sliding-window (|i - j| <= w) self-attention over one sequence of length L."""
    import torch
    import torch.nn.functional as F

    from graphattn import ops, patterns
    from graphattn.nn import MultiheadGraphAttention

    L, w, H, D, impl = spec["L"], spec["w"], spec["heads"], spec["head_dim"], spec["impl"]
    causal = spec.get("pattern") == "causal"
    i = torch.arange(L, device=device)

    def blocked():  # True = not allowed (torch's convention)
        diff = i[None, :] - i[:, None]  # key - query
        return diff > 0 if causal else diff.abs() > w

    def make_graph():
        return patterns.causal(L, device=device) if causal else patterns.sliding_window(L, w, w, device=device)

    band_mask = blocked() if impl not in ("graphattn", "flex") else None
    if spec["kind"] == "seq_layer":
        mha = torch.nn.MultiheadAttention(H * D, H, batch_first=True).to(device, dtype).eval()
        x = torch.randn(1, L, H * D, device=device, dtype=dtype)
        if impl == "torch":

            def run():
                with torch.no_grad():
                    return mha(x, x, x, attn_mask=band_mask, need_weights=False)[0]
        else:
            ours = MultiheadGraphAttention.from_torch(mha, pattern=lambda Lq, Lk: make_graph()).eval()

            def run():
                with torch.no_grad():
                    return ours(x, x, x, need_weights=False)[0]

            def reference():
                with torch.no_grad():
                    return mha(x, x, x, attn_mask=blocked(), need_weights=False)[0]

            run.reference = reference
        return run, False
    q, k, v = (torch.randn(L, H, D, device=device, dtype=dtype) for _ in range(3))
    if spec["mode"] == "forward+backward":  # flex has no CPU backward: graphattn against the dense mask
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))

        def attend():
            if impl == "sdpa":
                return F.scaled_dot_product_attention(
                    q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=~band_mask
                )
            return ops.dot_product_attention(q, k, v, g)

        g = make_graph() if impl == "graphattn" else None

        def run():
            attend().sum().backward()
            grads = (q.grad, k.grad, v.grad)
            q.grad = k.grad = v.grad = None
            return grads

        return run, True
    if impl == "sdpa":

        def run():
            with torch.no_grad():
                return F.scaled_dot_product_attention(
                    q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=~band_mask
                )

        return run, False
    if impl == "flex":  # compiled flex attention with a block mask (GPU peer)
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        lo, hi = (L, 0) if causal else (w, w)
        bm = create_block_mask(lambda b, h, qi, ki: (ki >= qi - lo) & (ki <= qi + hi), None, None, L, L, device=device)
        flex = torch.compile(flex_attention)
        qd, kd, vd = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))

        def run():
            with torch.no_grad():
                return flex(qd, kd, vd, block_mask=bm)

        return run, False
    g = make_graph()

    def run():
        with torch.no_grad():
            return ops.dot_product_attention(q, k, v, g)

    def reference():
        with torch.no_grad():
            if causal:
                return F.scaled_dot_product_attention(
                    q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=~blocked()
                ).transpose(0, 1)
            return banded_reference(q, k, v, w)

    run.reference = reference
    return run, False


def banded_reference(q, k, v, w, chunk=1024):
    """Dense masked attention over |i - j| <= w, a chunk of queries at a time against the
    keys it can reach: the same numbers as one dense mask, without its L x L memory
    (32k tokens would need 34 GB of scores)."""
    import torch
    import torch.nn.functional as F

    L, out = q.size(0), []
    for a in range(0, L, chunk):
        b = min(L, a + chunk)
        lo, hi = max(0, a - w), min(L, b + w)
        qi, ki = torch.arange(a, b)[:, None], torch.arange(lo, hi)[None, :]
        allowed = (qi - ki).abs() <= w
        out.append(
            F.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), k[lo:hi].transpose(0, 1), v[lo:hi].transpose(0, 1), attn_mask=allowed
            ).transpose(0, 1)
        )
    return torch.cat(out)


GPS_BATCHES = {
    "molecules": "256 molecule-sized graphs (10-40 nodes)",
    "skewed": "60 graphs of 20 nodes + 4 of 2,000",
    "large": "one graph of 100,000 nodes",
}


def gps_sizes(graphs: str):
    """Graph sizes of a GPS benchmark batch (the same in parent and child)."""
    import torch

    if graphs == "molecules":
        return torch.randint(10, 41, (256,), generator=torch.Generator().manual_seed(0)).tolist()
    if graphs == "skewed":
        return [20] * 60 + [2000] * 4
    return [100_000]


def _build_gps(spec, device, dtype):
    """One GPS layer (64 channels, 4 heads, GATConv local), forward+backward, on a batch
    of ring-shaped graphs (degree 2, like a molecule's backbone)."""
    import torch
    import torch_geometric.nn as pygnn

    from graphattn.nn import GATConv, GPSConv

    sizes = torch.tensor(gps_sizes(spec["graphs"]))
    batch = torch.repeat_interleave(torch.arange(sizes.numel()), sizes).to(device)
    first = (sizes.cumsum(0) - sizes).to(device)[batch]
    node = torch.arange(batch.numel(), device=device)
    succ = first + (node - first + 1) % sizes.to(device)[batch]
    edge_index = torch.cat([torch.stack([node, succ]), torch.stack([succ, node])], 1)
    C, H = spec["channels"], spec["heads"]
    x = torch.randn(batch.numel(), C, device=device, dtype=dtype, requires_grad=True)
    if spec["impl"] == "pyg":
        layer = pygnn.GPSConv(C, pygnn.GATConv(C, C // H, heads=H), heads=H)
    elif spec["pattern"] == "sparse":
        layer = GPSConv(C, GATConv(C, C // H, heads=H), heads=H, global_pattern="sparse")
    else:
        layer = GPSConv.from_pyg(pygnn.GPSConv(C, pygnn.GATConv(C, C // H, heads=H), heads=H))
    layer = layer.to(device, dtype)

    def run():
        layer(x, edge_index, batch).sum().backward()
        layer.zero_grad(set_to_none=True)
        x.grad = None

    if spec["impl"] == "graphattn":
        run.setup = lambda: layer.global_graph(batch.numel(), edge_index, batch.clone(), device)
    return run, True


def child(spec) -> dict:
    import torch

    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    run, _ = _build(spec)
    cuda = spec["device"].startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    run()  # warm-up (builds caches: kernels, graph structure)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        sync()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        ok = _reset_peak()
        base = _rss_kib("VmRSS")
        run()
        peak = (_rss_kib("VmHWM") - base) / 1024 if ok else float("nan")
    times = []
    deadline = time.perf_counter() + spec.get("budget_s", 60)
    while len(times) < spec.get("repeats", 5) or (
        time.perf_counter() < deadline and len(times) < 20 and sum(times) < 2.0
    ):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= spec.get("repeats", 5) and time.perf_counter() > deadline:
            break
    times.sort()
    res = {"time_ms": 1e3 * times[len(times) // 2], "repeats": len(times), "peak_mem_mib": peak}
    if hasattr(run, "setup"):  # per-batch structure a training loop builds once per new batch
        setups = []
        for _ in range(3):
            t0 = time.perf_counter()
            run.setup()
            setups.append(time.perf_counter() - t0)
        res["setup_ms"] = 1e3 * sorted(setups)[1]
    if hasattr(run, "reference"):  # same output as the dense peer?
        res["max_abs_diff"] = float((run().float() - run.reference().float()).abs().max())
    return res


# -------------------------------------------------------------------- parent
def run_case(spec) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    # Fixed malloc thresholds: glibc's dynamic mmap threshold would otherwise keep
    # memory freed by the warm-up call in the heap, and its reuse would not show as
    # RSS growth (hiding an implementation's real peak). With a fixed threshold every
    # large block is mapped on allocation and returned on free.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def layer_cases(device, sizes, kinds, modes):
    for N, E in sizes:
        for kind in kinds:
            for mode in modes:
                yield {"kind": kind, "mode": mode, "N": N, "E": E, "in": 128, "out": 16, "heads": 8, "device": device}


PEERS = {
    "gat": "PyG GATConv",
    "gatv2": "PyG GATv2Conv",
    "dot": "PyG TransformerConv",
    "edge_softmax": "torch_geometric.utils.softmax",
    "seq_layer": "nn.MultiheadAttention + dense band mask",
    "seq_op": "F.scaled_dot_product_attention + dense band mask",
    "gps": "PyG GPSConv (padded nn.MultiheadAttention)",
}
NAMES = {
    "gat": "GATConv",
    "gatv2": "GATv2Conv",
    "dot": "DotProductConv",
    "edge_softmax": "edge_softmax",
    "seq_layer": "MultiheadGraphAttention, window ±128",
    "seq_op": "dot_product_attention, window ±128",
    "gps": "GPSConv",
}
PEER_IMPLS = ("pyg", "pyg_compiled", "torch_scatter", "torch", "sdpa", "flex")


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--quick", action="store_true", help="small sizes only")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument("--only", default=None, help="comma-separated case filters: kind=gat,mode=forward+backward,N=100000")
    p.add_argument(
        "--cases",
        default="all",
        choices=["all", "graph", "seq", "gps"],
        help="graph layers and edge_softmax, sequence attention, GPS layers, or all (default)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from tqdm import tqdm

    sys.path.insert(0, str(ROOT))
    from graphattn.train.experiment import atomic_write_json, machine_info

    device = "cuda" if args.suite == "gpu" else "cpu"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: the gpu suite needs a CUDA GPU")
    if args.quick:
        sizes, scaling = [(2_000, 20_000)], [5_000, 20_000]
    elif device == "cpu":
        sizes, scaling = [(20_000, 200_000), (100_000, 1_000_000)], [50_000, 200_000, 1_000_000, 2_000_000]
    else:
        sizes, scaling = [(100_000, 1_000_000), (1_000_000, 10_000_000)], [10**5, 10**6, 10**7, 3 * 10**7]
    specs = []
    for E in [1_000_000] if not args.quick else [20_000]:
        base = {"kind": "edge_softmax", "mode": "forward", "N": E // 10, "E": E, "H": 8, "device": device}
        specs.append(("graphattn", base))
        specs.append(("pyg", base))
        if have("torch_scatter"):
            specs.append(("torch_scatter", base))
    for spec in layer_cases(device, sizes, ["gat", "gatv2", "dot"], ["forward", "forward+backward"]):
        specs += [("graphattn", spec), ("pyg", spec), ("pyg_compiled", spec)]
    seq_lengths = [1024] if args.quick else ([1024, 4096, 8192] if device == "cpu" else [1024, 4096, 16384, 32768])

    def seq_spec(kind, pattern, mode, L):  # one sequence, 8 heads x 64, window +-128 (or causal)
        E = (
            L * (L + 1) // 2
            if pattern == "causal"
            else sum(min(L - 1, t + 128) - max(0, t - 128) + 1 for t in range(L))
        )
        return {
            "kind": kind,
            "pattern": pattern,
            "mode": mode,
            "N": L,
            "L": L,
            "w": 128,
            "heads": 8,
            "head_dim": 64,
            "device": device,
            "E": E,
        }

    for L in seq_lengths:
        for kind, pattern, peers in (
            ("seq_layer", "band", ["torch"]),
            ("seq_op", "band", ["sdpa"]),
            ("seq_op", "causal", ["sdpa"]),
        ):
            if kind == "seq_op":  # compiled flex_attention with a block mask (forward only on CPU)
                peers = peers + ["flex"]
            spec = seq_spec(kind, pattern, "forward", L)
            specs += [("graphattn", spec)] + [(peer, spec) for peer in peers]
    for L in [] if args.quick or device != "cpu" else [4096, 8192]:
        spec = seq_spec("seq_op", "band", "forward+backward", L)
        specs += [("graphattn", spec), ("sdpa", spec)]
    if device == "cpu" and not args.quick:  # 32k tokens: a dense mask would need 8 GiB per head; flex only
        spec = seq_spec("seq_op", "band", "forward", 32768)
        specs += [("graphattn", spec), ("flex", spec)]
    if device == "cuda" and not args.quick:
        for dtype in ("float32", "bfloat16"):
            for mode in ("forward", "forward+backward"):
                spec = {
                    "kind": "gat",
                    "mode": mode,
                    "N": 2_449_029,
                    "E": 123_718_280,
                    "in": 100,
                    "out": 64,
                    "heads": 4,
                    "device": device,
                    "dtype": dtype,
                    "products": True,
                }
                specs += [("graphattn", spec), ("pyg", spec)]
    for E in scaling:
        spec = {
            "kind": "gat",
            "mode": "forward+backward",
            "N": max(E // 10, 100),
            "E": E,
            "in": 128,
            "out": 16,
            "heads": 8,
            "device": device,
            "scaling": True,
        }
        specs += [("graphattn", spec), ("pyg", spec)]

    specs += gps_cases(device, args.quick)
    if args.cases != "all":
        family = lambda kind: "seq" if kind.startswith("seq") else ("gps" if kind == "gps" else "graph")  # noqa: E731
        specs = [(impl, spec) for impl, spec in specs if family(spec["kind"]) == args.cases]
    for rule in args.only.split(",") if args.only else []:
        key, value = rule.split("=", 1)
        specs = [(impl, spec) for impl, spec in specs if str(spec.get(key)) == value]
    rows = []
    for impl, spec in tqdm(specs, desc=f"{args.suite} suite"):
        res = spec.pop("not_run", None) or run_case({**spec, "impl": impl})
        rows.append({"impl": impl, **spec, **res})

    cases = compare(rows)
    machine = roofline.measure_machine() if device == "cpu" else None
    if machine is not None:
        add_floors(cases, machine)
    stamp = dt.datetime.now(dt.timezone.utc)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = ("" if args.cases == "all" else f"-{args.cases}") + ("-subset" if args.only else "")
    name = f"{args.suite}{tag}{'-quick' if args.quick else ''}-{stamp:%Y-%m-%d}"
    report = {
        "suite": args.suite,
        "date": stamp.isoformat(timespec="seconds"),
        "command": "python benchmarks/run.py " + " ".join(a for a in (argv or sys.argv[1:])),
        "machine": machine_info(),
        "peers": {k: PEERS[k] for k in PEERS},
        "torch_scatter": have("torch_scatter"),
        "roofline_machine": machine,
        "cases": cases,
    }
    atomic_write_json(report, out_dir / f"{name}.json")
    md = markdown(report)
    (out_dir / f"{name}.md").write_text(md)
    plot_scaling(report, out_dir / f"{name}-scaling.png")
    print(md)
    print(f"written: {out_dir / name}.json, .md, -scaling.png")


def add_floors(cases, machine):
    """Each graph-layer case gets its roofline floor (benchmarks/roofline.py) and how
    far graphattn is above it; the model of the largest case is printed."""
    largest = None
    for c in cases:
        if c["kind"] not in ("gat", "gatv2", "dot"):
            continue
        terms = roofline.layer_model(c["kind"], c["mode"], c["N"], c["E"], 128, 16, 8)
        floor = roofline.floor_ms(terms, machine)
        c["floor_ms"] = floor
        if c["graphattn"].get("time_ms"):
            c["graphattn_vs_floor"] = c["graphattn"]["time_ms"] / floor
        if largest is None or (c["E"], c["mode"]) > (largest[0]["E"], largest[0]["mode"]):
            largest = (c, terms)
    if largest is not None:
        c, terms = largest
        print(
            f"roofline: triad {machine['triad_gb_s']:.1f} GB/s, GEMM {machine['gemm_gflop_s']:.1f} GFLOP/s; "
            f"model of {NAMES[c['kind']]} {c['mode']} N={c['N']:,} E={c['E']:,} "
            f"(floor {c['floor_ms']:.1f} ms):\n{roofline.describe(terms)}"
        )


def gps_cases(device, quick):
    """GPS layer forward+backward against PyG's GPSConv with the same weights."""
    specs = []
    for graphs in ("molecules",) if quick else ("molecules", "skewed", "large"):
        sizes = gps_sizes(graphs)
        pattern = "sparse" if graphs == "large" else "complete"
        N = sum(sizes)
        pairs = sum(n * n for n in sizes)
        spec = {
            "kind": "gps",
            "mode": "forward+backward",
            "graphs": graphs,
            "pattern": pattern,
            "N": N,
            "E": 2 * N,
            "pairs": pairs,
            "channels": 64,
            "heads": 4,
            "device": device,
        }  # E: the local ring edges
        specs.append(("graphattn", dict(spec)))
        peer = dict(spec)
        if pattern == "sparse":
            padded = len(sizes) * spec["heads"] * max(sizes) ** 2 * 4 / 2**30
            peer["not_run"] = {
                "error": f"not run: padded dense attention needs {padded:,.0f} GiB for its "
                f"float32 scores alone (B x H x L_max^2)"
            }
        specs.append(("pyg", peer))
    return specs


def compare(rows):
    """Pair each graphattn row with the peers of the same case; ratios are peer / graphattn."""

    def key(r):
        return (
            r["kind"],
            r["mode"],
            r["N"],
            r["E"],
            r.get("scaling", False),
            r.get("pattern"),
            r.get("dtype", "float32"),
        )

    groups = {}
    for r in rows:
        groups.setdefault(key(r), {})[r["impl"]] = r
    cases = []
    for k, g in groups.items():
        ours = g.get("graphattn", {})
        op = NAMES[k[0]].replace("window ±128", "causal") if k[5] == "causal" else NAMES[k[0]]
        if k[0] == "gps":
            what = (
                f"complete global attention, {ours.get('pairs', 0):,} pairs"
                if k[5] == "complete"
                else "sparse global attention (expander + virtual nodes + local edges)"
            )
            op = f"{op}, {GPS_BATCHES[ours.get('graphs', 'molecules')]}, {what}"
        case = {
            "op": op + ("" if k[6] == "float32" else f" ({k[6]})"),
            "kind": k[0],
            "mode": k[1],
            "N": k[2],
            "E": k[3],
            "scaling": k[4],
            "pattern": k[5],
            "dtype": k[6],
            "graphattn": {x: ours.get(x) for x in ("time_ms", "peak_mem_mib", "error", "max_abs_diff", "setup_ms")},
        }
        for impl, r in g.items():
            if impl == "graphattn":
                continue
            entry = {x: r.get(x) for x in ("time_ms", "peak_mem_mib", "error")}
            if ours.get("time_ms") and r.get("time_ms"):
                entry["speedup"] = r["time_ms"] / ours["time_ms"]
            if ours.get("peak_mem_mib") and r.get("peak_mem_mib") and ours["peak_mem_mib"] > 0:
                entry["memory_ratio"] = r["peak_mem_mib"] / ours["peak_mem_mib"]
            case[impl] = entry
        cases.append(case)
    return cases


def _fmt(v, unit=""):
    return "—" if v is None else (f"{v:,.1f}{unit}" if isinstance(v, float) else str(v))


def markdown(report) -> str:
    m = report["machine"]
    lines = [
        f"### {report['suite'].upper()} suite, {report['date'][:10]}",
        "",
        f"Machine: {m['processor']}, {m['cpu_count']} cores ({m['torch_threads']} torch threads)"
        + (f", GPU {m['cuda']}" if m.get("cuda") else "")
        + f"; torch {m['torch']}, torch_geometric {m.get('torch_geometric')}, graphattn {m['graphattn']}.",
        f"Command: `{report['command']}`. Median of >= 5 calls after a warm-up; memory is peak growth over one call.",
    ]
    rm = report.get("roofline_machine")
    if rm:
        lines.append(
            f"Roofline (benchmarks/roofline.py): triad {rm['triad_gb_s']:.1f} GB/s, float32 GEMM "
            f"{rm['gemm_gflop_s']:.1f} GFLOP/s, measured in this run."
        )
    lines += [
        "",
        "| op | mode | N | E | graphattn ms | peer | peer ms | speed-up | graphattn MiB | peer MiB | memory ratio "
        "| max abs diff | roofline floor ms | graphattn / floor |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["cases"]:
        for impl in [k for k in c if k in PEER_IMPLS]:
            peer = c[impl]
            peer_name = {
                "torch_scatter": "torch_scatter.scatter_softmax",
                "flex": "flex_attention (compiled, block mask)",
                "pyg_compiled": f"torch.compile({PEERS[c['kind']]})",
            }.get(impl, PEERS[c["kind"]])
            if c.get("pattern") == "causal" and impl == "sdpa":
                peer_name = "F.scaled_dot_product_attention + dense causal mask"
            d = c["graphattn"].get("max_abs_diff")
            diff = "—" if d is None else f"{d:.1e}"
            lines.append(
                f"| {c['op']}{' (scaling)' if c['scaling'] else ''} | {c['mode']} | {c['N']:,} | {c['E']:,} | "
                f"{_fmt(c['graphattn']['time_ms'])} | {peer_name} | {_fmt(peer.get('time_ms') or peer.get('error'))} | "
                f"{_fmt(peer.get('speedup'), 'x')} | {_fmt(c['graphattn']['peak_mem_mib'])} | "
                f"{_fmt(peer.get('peak_mem_mib'))} | {_fmt(peer.get('memory_ratio'), 'x')} | "
                f"{diff} | {_fmt(c.get('floor_ms'))} | {_fmt(c.get('graphattn_vs_floor'), 'x')} |"
            )
    return "\n".join(lines) + "\n"


def plot_scaling(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    cases = sorted((c for c in report["cases"] if c["scaling"]), key=lambda c: c["E"])
    if not cases:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for impl, label in (("graphattn", "graphattn GATConv"), ("pyg", "PyG GATConv")):
        xs, ts, ms = [], [], []
        for c in cases:
            r = c["graphattn"] if impl == "graphattn" else c.get("pyg", {})
            if r.get("time_ms"):
                xs.append(c["E"])
                ts.append(r["time_ms"])
                ms.append(max(r.get("peak_mem_mib") or 0, 1e-3))
        axes[0].loglog(xs, ts, "o-", label=label)
        axes[1].loglog(xs, ms, "o-", label=label)
    axes[0].set(xlabel="edges", ylabel="forward+backward time (ms)", title="time")
    axes[1].set(xlabel="edges", ylabel="peak memory growth (MiB)", title="memory")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"GATConv(128, 16, heads=8), {report['suite'].upper()}, {report['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
