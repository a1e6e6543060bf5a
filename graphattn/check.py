"""Self-check: every backend against the reference, on this machine's device.

    python -m graphattn.check                    # CUDA if available, else CPU; float32
    python -m graphattn.check --device cpu --dtype float64

For each op (``edge_softmax``, ``gat``, ``gatv2``, ``dot_product``) and each
registered backend, the same inputs run forced onto that backend and onto
``reference``; outputs, returned weights and the gradients of every input are
compared (the largest difference relative to the reference's magnitude; "first
ms" is the first call, so it includes building a kernel). Two graphs are tried: a
random graph (duplicate edges, self-loops, nodes without in-edges) and a pattern
graph (complete attention within each graph of a batch, which the dense backend
takes). A backend that cannot run a case says why (``declined: ...``), as the
dispatcher would. Prints one table and exits 1 if any backend disagrees with the
reference or fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import ops, patterns
from .graph import Graph
from .ops import BackendDeclined
from .ops._dispatch import OPS
from .ops.functional import DOT_PRODUCT, PUBLIC_OPS, RECORDS

TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
HEADS, CHANNELS = 4, 16


def random_graph(num_nodes: int, num_edges: int, device, gen: torch.Generator) -> Graph:
    """Random edges plus a duplicate and a self-loop; the last node receives nothing."""
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = torch.randint(0, num_nodes - 1, (num_edges,), generator=gen)
    src, dst = torch.cat([src, src[:1], dst[:1]]), torch.cat([dst, dst[:1], dst[:1]])
    return Graph.from_edge_index(torch.stack([src, dst]).to(device), num_nodes)


def pattern_graph(device) -> Graph:
    """Complete attention within each graph of a batch of three (one SDPA call per size)."""
    sizes = torch.tensor([96, 64, 96])
    return patterns.complete_per_graph(torch.repeat_interleave(torch.arange(3), sizes).to(device), int(sizes.sum()))


def op_inputs(op: str, graph: Graph, dtype, device, gen: torch.Generator) -> Tuple[Callable, List[Tensor]]:
    """``(call(backend, *tensors) -> outputs, tensors)`` for one op on ``graph``: random
    tensors for every node-indexed and graph-free input the op's record declares (its
    optional per-node inputs too; per-edge terms left out), called through the op's
    public function. Weights are asked for except from dot-product attention on a
    pattern graph, whose dense path (SDPA) returns none."""

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()

    if op == "edge_softmax":
        return (lambda b, s: (ops.edge_softmax(s, graph, backend=b),)), [rand(graph.num_edges, HEADS)]
    record = RECORDS.get(op)
    if record is None:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    rows = {"src": (graph.num_src,), "dst": (graph.num_dst,), None: ()}
    args = [arg for arg in record.spec.tensors if arg.rows != "edge"]
    tensors = [rand(*rows[arg.rows], *(HEADS if dim == "heads" else CHANNELS for dim in arg.dims)) for arg in args]
    weights = graph.pattern is None or op != DOT_PRODUCT.name
    public = PUBLIC_OPS[op]

    def call(backend, *given):
        out = public(
            graph=graph, backend=backend, return_weights=weights, **{arg.name: t for arg, t in zip(args, given)}
        )
        return out if isinstance(out, tuple) else (out,)

    return call, tensors


def _max_diff(a: Tensor, b: Tensor) -> float:
    """Largest difference relative to the reference's scale (``max(1, max |b|)``);
    NaN where the reference has none (or the reverse) is an infinite difference."""
    a, b = a.detach().double(), b.detach().double()
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return float("inf")
    finite = ~torch.isnan(b)
    if not bool(finite.any()):
        return 0.0
    scale = max(1.0, float(b[finite].abs().max()))
    return float((a - b)[finite].abs().max()) / scale


def check_case(op: str, backend: str, graph: Graph, dtype, device, seed: int) -> Dict[str, object]:
    """One backend on one op and graph, against reference on the same inputs."""
    call, tensors = op_inputs(op, graph, dtype, device, torch.Generator().manual_seed(seed))
    row: Dict[str, object] = {"op": op, "backend": backend, "edges": graph.num_edges}
    try:
        t0 = time.perf_counter()
        outs = call(backend, *tensors)
        grads = torch.autograd.grad(sum(o.float().pow(2).sum() for o in outs), tensors, allow_unused=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        row["ms"] = 1e3 * (time.perf_counter() - t0)
    except BackendDeclined as e:
        row["status"] = "declined: " + e.reason
        return row
    except RuntimeError as e:
        row["status"], row["detail"] = "FAILED", f"{type(e).__name__}: {e}"
        return row
    ref_outs = call("reference", *tensors)
    ref_grads = torch.autograd.grad(sum(o.float().pow(2).sum() for o in ref_outs), tensors, allow_unused=True)
    pairs = list(zip(outs, ref_outs)) + [(g, r) for g, r in zip(grads, ref_grads) if g is not None and r is not None]
    diff = max(_max_diff(a, b) for a, b in pairs)
    row["max_abs_diff"] = diff
    row["status"] = "ok" if diff <= TOLERANCE.get(dtype, 1e-3) else "MISMATCH"
    return row


def run_checks(device, dtype, seed: int = 0, backends: Optional[List[str]] = None) -> List[Dict[str, object]]:
    """Every registered backend (or those named in ``backends``) on every op."""
    gen = torch.Generator().manual_seed(seed)
    graphs = {"random": random_graph(300, 3000, device, gen), "pattern": pattern_graph(device)}
    rows = []
    for op in ops.available_backends():
        for backend in ops.available_backends(op):
            if backend == "reference" or (backends is not None and backend not in backends):
                continue
            for name, graph in graphs.items():
                if name == "pattern" and op != "dot_product":
                    continue
                row = check_case(op, backend, graph, dtype, device, seed)
                row["graph"] = name
                rows.append(row)
    return rows


def format_table(rows: List[Dict[str, object]], device, dtype) -> str:
    lines = [
        f"graphattn self-check on {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}),"
        f" {str(dtype).replace('torch.', '')}, torch {torch.__version__}",
        f"{'op':<13}{'graph':<9}{'backend':<10}{'edges':>8}{'first ms':>9}{'max diff':>14}  status",
    ]
    for r in rows:
        ms = f"{r['ms']:.1f}" if "ms" in r else "—"
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "—"
        lines.append(
            f"{r['op']:<13}{r['graph']:<9}{r['backend']:<10}{r['edges']:>8}{ms:>9}{diff:>14}  {r['status']}"
            + (f" ({r['detail']})" if "detail" in r else "")
        )
    ran = sum(1 for r in rows if r["status"] == "ok")
    bad = sum(1 for r in rows if r["status"] in ("MISMATCH", "FAILED"))
    lines.append(
        f"{ran} case(s) agree with reference, {bad} disagree or fail, "
        f"{len(rows) - ran - bad} declined (see the reasons)"
    )
    return "\n".join(lines)


def checkable_backends() -> List[str]:
    """Every registered backend of any op, but ``reference`` (what the others are checked against)."""
    names = dict.fromkeys(b for op in ops.available_backends() for b in ops.available_backends(op))
    return [b for b in names if b != "reference"]


def main(argv: Optional[List[str]] = None) -> int:
    from .train.experiment import choice_list, device_argument, seed_int  # the scripts' argument rules

    p = argparse.ArgumentParser(
        prog="python -m graphattn.check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device",
        default="auto",
        type=device_argument,
        help="cpu, cuda, cuda:N or auto (default: cuda when available)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument(
        "--backends",
        default=None,
        type=choice_list(checkable_backends()),
        help=f"comma-separated backends to check (default: all of {', '.join(checkable_backends())})",
    )
    args = p.parse_args(argv)
    device, dtype = args.device, getattr(torch, args.dtype)
    rows = run_checks(device, dtype, args.seed, args.backends)
    print(format_table(rows, device, dtype))
    return 1 if any(r["status"] in ("MISMATCH", "FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
