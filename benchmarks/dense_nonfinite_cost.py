"""What the dense routes pay for keeping a NaN or inf where the reference puts it.

    python benchmarks/dense_nonfinite_cost.py                 # L=4096, window +-128, 8 x 64
    python benchmarks/dense_nonfinite_cost.py --length 8192 --reps 9

SDPA, the band tiles and flex compute the masked pairs of a block and drop them after,
so a non-finite value would reach queries that never attend to it; the dense routes
therefore check their inputs (one sum each) and, in training, hook the upstream
gradient, and send a non-finite call to the sparse kernel (graphattn/ops/dense.py,
``exact_where_nonfinite``). This times, on the band route of the README's sequence
benchmark (one sequence, window +-128, 8 heads x 64), the user's call with the check
against the route alone, forward (inference) and forward+backward, round-robin, medians;
and the check alone. Writes benchmarks/results/<device>-dense-nonfinite-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from graphattn import patterns
from graphattn.ops import dense


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    L, w, H, D = args.length, args.window, 8, 64
    g = patterns.sliding_window(L, w, w)
    assert dense.route(g) == "band"
    gen = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(L, H, D, generator=gen) for _ in range(4))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    kw = dict(scale=D**-0.5, edge_key=None, edge_value=None, edge_bias=None, dropout=0.0)

    def checked(training):
        xs = leaves if training else (q, k, v)
        out = dense.dot_product(*xs, g, training=training, **kw)[0]
        if training:
            out.backward(grad)

    def alone(training):
        xs = leaves if training else (q, k, v)
        out = dense._dense_route(*xs, graph=g, scale=kw["scale"], dropout=0.0)
        if training:
            out.backward(grad)

    cases = {
        "forward, checked": lambda: checked(False),
        "forward, route alone": lambda: alone(False),
        "forward+backward, checked": lambda: checked(True),
        "forward+backward, route alone": lambda: alone(True),
        "the check alone (3 sums)": lambda: dense._all_finite(q, k, v),
    }
    times = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(args.reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    ms = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "L": L,
        "window": w,
        "heads": H,
        "head_dim": D,
        "threads": args.threads,
        "reps": args.reps,
        "torch": torch.__version__,
        "median_ms": ms,
        "overhead": {m: ms[f"{m}, checked"] / ms[f"{m}, route alone"] - 1 for m in ("forward", "forward+backward")},
    }
    for name, t in ms.items():
        print(f"{name:32s} {t:9.3f} ms")
    for m, o in result["overhead"].items():
        print(f"{m}: the check costs {100 * o:+.1f}%")
    out = Path(args.out or Path(__file__).parent / "results" / f"cpu-dense-nonfinite-{datetime.date.today()}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
