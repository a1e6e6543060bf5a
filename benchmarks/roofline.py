"""A roofline floor for the graph benchmark cases, measured on the machine itself.

The floor of a case is ``max(bytes / bandwidth, flops / gemm_rate)``: the memory
traffic it cannot avoid at the measured stream bandwidth, or its dense matrix
products at the measured GEMM throughput, whichever is longer. Both rates are
measured in the same run (:func:`measure_machine`); the traffic and FLOPs of each
case come from :func:`layer_model`, which prints as a table of its terms so the
model can be read and argued with.

The traffic model is for random graphs, where a gathered source row is not in
cache (the per-node tensors are larger than the last-level cache at the sizes
benchmarked): every edge reads its source's rows from memory, once in the forward
and once more in the backward (which recomputes scores instead of storing them).
Indices are int64, values float32.
"""

from __future__ import annotations

import time
from typing import Dict, List, Tuple

import torch

F32, IDX = 4, 8


def measure_machine(size_mib: int = 256, repeats: int = 5) -> Dict[str, float]:
    """Stream triad bandwidth (``a = b + s * c``, three arrays of ``size_mib``) in GB/s
    and float32 GEMM throughput (2048^3) in GFLOP/s, each the best of ``repeats``."""
    n = size_mib * 2**20 // F32
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.add(b, c, alpha=1.5, out=a)
        best = min(best, time.perf_counter() - t0)
    bandwidth = 3 * n * F32 / best / 1e9
    m = 2048
    x, y = torch.rand(m, m), torch.rand(m, m)
    torch.mm(x, y)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(x, y)
        best = min(best, time.perf_counter() - t0)
    return {"triad_gb_s": bandwidth, "gemm_gflop_s": 2 * m**3 / best / 1e9}


def layer_model(kind: str, mode: str, N: int, E: int, c_in: int, C: int, H: int) -> List[Tuple[str, float, float]]:
    """``[(term, bytes, flops)]`` for one layer call (``E`` given edges; GAT / GATv2 add
    ``N`` self-loops). ``kind``: ``gat``, ``gatv2``, ``dot`` (TransformerConv)."""
    HC = H * C
    if kind in ("gat", "gatv2"):
        E = E + N
    n_linear = {"gat": 1, "gatv2": 2, "dot": 4}[kind]  # W; W_l, W_r; query, key, value, skip
    x_bytes, h_bytes = N * c_in * F32, N * HC * F32
    csr = (N + 1) * IDX + E * IDX
    # Per edge, the source-side rows a kernel must gather: GAT its H scores and HC values,
    # GATv2 the HC left projection (values = it), dot-product the HC key and HC value.
    gathered = {"gat": (H + HC) * F32, "gatv2": HC * F32, "dot": 2 * HC * F32}[kind]
    terms = [
        ("linear layers: read x, write projections", n_linear * (x_bytes + h_bytes), n_linear * 2 * N * c_in * HC),
        ("CSR indices", csr, 0.0),
        ("per-edge source rows gathered", E * gathered, 0.0),
        ("destination rows and output", 2 * h_bytes, 0.0),
    ]
    if mode == "forward+backward":
        terms += [
            ("backward: transposed CSR (row, edge id)", (N + 1) * IDX + 2 * E * IDX, 0.0),
            ("backward: per-edge rows gathered again (recompute)", E * (gathered + HC * F32), 0.0),
            ("backward: per-edge score gradient written and read", 2 * E * H * F32, 0.0),
            (
                "backward: linear layers (grad input and weight)",
                n_linear * 2 * (x_bytes + h_bytes),
                n_linear * 4 * N * c_in * HC,
            ),
        ]
    return terms


def floor_ms(terms: List[Tuple[str, float, float]], machine: Dict[str, float]) -> float:
    total_bytes = sum(t[1] for t in terms)
    total_flops = sum(t[2] for t in terms)
    return 1e3 * max(total_bytes / (machine["triad_gb_s"] * 1e9), total_flops / (machine["gemm_gflop_s"] * 1e9))


def describe(terms: List[Tuple[str, float, float]]) -> str:
    lines = [f"  {name:<52} {b / 1e6:>10,.1f} MB {f / 1e9:>8,.2f} GFLOP" for name, b, f in terms]
    lines.append(
        f"  {'total':<52} {sum(t[1] for t in terms) / 1e6:>10,.1f} MB {sum(t[2] for t in terms) / 1e9:>8,.2f} GFLOP"
    )
    return "\n".join(lines)
