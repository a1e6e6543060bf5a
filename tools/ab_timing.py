"""Layer forward+backward timings of one checkout, for A/B runs of refactors that must not slow the path
users take (``edge_index`` as a dataset gives it, default layer arguments)::

    cd /path/to/old && PYTHONPATH=/path/to/old python /path/to/new/tools/ab_timing.py
    PYTHONPATH=. python tools/ab_timing.py

Run the trees alternately, alone on the machine, and compare the medians it prints (JSON).
"""

from __future__ import annotations

import json
import time

import torch


def median_ms(fn, reps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    torch.set_num_threads(2)
    import graphattn
    from graphattn.nn import DotProductConv, GATConv, GATv2Conv

    results = {"tree": graphattn.__file__}
    for num_nodes, num_edges, reps in [(2708, 10556, 30), (100_000, 1_000_000, 7)]:
        gen = torch.Generator().manual_seed(0)
        edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
        x = torch.randn(num_nodes, 128, generator=gen, requires_grad=True)
        for name, cls in [("GATConv", GATConv), ("GATv2Conv", GATv2Conv), ("DotProductConv", DotProductConv)]:
            torch.manual_seed(0)
            layer = cls(128, 16, heads=8)

            def step():
                layer(x, edge_index).sum().backward()

            results[f"{name} {num_nodes}/{num_edges} fwd+bwd ms"] = round(median_ms(step, reps), 2)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
