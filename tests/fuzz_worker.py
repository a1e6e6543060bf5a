"""Hostile-input fuzzing of the attention ops across backends, run as a subprocess.

Each case is drawn from a seed: an op (edge softmax, GAT, GATv2, dot product), a
graph given as an ``edge_index`` or a ``Graph`` (int32 or int64, non-contiguous,
out-of-range or negative indices, empty rows, duplicate edges, huge node counts with
few edges, bipartite), inputs with the right shapes or deliberately wrong ones (rows,
heads, channels, rank, dtype, non-contiguous), NaN / +inf / -inf values and scalar
arguments in or out of their domains.

Verdicts, one JSON line per case on stdout:
* ``raise``: every backend raised the same exception type and message as ``reference``
  (validation runs before any backend, so they must agree), of a clear kind;
* ``agree``: every backend returned what ``reference`` returned (outputs, weights and
  gradients; NaN exactly where reference has NaN);
* ``fail``: anything else, with the reason.

Before each case the worker prints ``start <seed>`` to stderr, so a run killed by a
signal names the case that killed it. ``python tests/fuzz_worker.py START COUNT BACKENDS``.
"""

from __future__ import annotations

import json
import math
import sys
import traceback

import torch

from graphattn import Graph, ops

CLEAR_ERRORS = (TypeError, ValueError)
OPS = ("edge_softmax", "gat", "gatv2", "dot_product")


def _index_tensor(rng: torch.Generator, ns: int, nd: int, E: int, hostile: str) -> torch.Tensor:
    src = torch.randint(0, max(ns, 1), (E,), generator=rng)
    dst = torch.randint(0, max(nd, 1), (E,), generator=rng)
    if hostile == "sorted" and E:
        dst = dst.sort().values
    if hostile == "out_of_range_src" and E:
        src[0] = ns + int(torch.randint(0, 5, (1,), generator=rng))
    if hostile == "out_of_range_dst" and E:
        dst[-1] = nd
    if hostile == "negative" and E:
        src[E // 2] = -1
    ei = torch.stack([src, dst])
    if hostile == "int32":
        ei = ei.int()
    if hostile == "noncontiguous":
        ei = torch.stack([ei, ei], dim=-1)[..., 0]  # same values, strided
    return ei


def _values(rng: torch.Generator, shape, dtype, special: str) -> torch.Tensor:
    t = torch.randn(*shape, generator=rng, dtype=torch.float64).to(dtype)
    if t.numel() and special not in ("none", "all_-inf"):
        k = int(torch.randint(0, t.numel(), (1,), generator=rng))
        t.view(-1)[k] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 1e30}[special]
    if special == "all_-inf" and t.numel():
        t.fill_(-math.inf)
    return t


def _pick(rng: torch.Generator, options):
    return options[int(torch.randint(0, len(options), (1,), generator=rng))]


def make_case(seed: int):
    """The call a seed stands for: ``(op, graph_like, tensors, kwargs, description)``."""
    rng = torch.Generator().manual_seed(seed)
    op = OPS[seed % len(OPS)]
    bipartite = bool(torch.randint(0, 2, (1,), generator=rng))
    ns = int(torch.randint(0, 9, (1,), generator=rng))
    nd = int(torch.randint(0, 9, (1,), generator=rng)) if bipartite else ns
    E = int(torch.randint(0, 25, (1,), generator=rng)) if ns and nd else 0
    hostile_graph = _pick(
        rng,
        [
            "none",
            "none",
            "sorted",
            "out_of_range_src",
            "out_of_range_dst",
            "negative",
            "int32",
            "noncontiguous",
            "huge_nodes",
            "graph_fewer_nodes",
        ],
    )
    ei = _index_tensor(rng, ns, nd, E, hostile_graph)
    as_graph = bool(torch.randint(0, 2, (1,), generator=rng)) or hostile_graph in ("huge_nodes", "graph_fewer_nodes")
    gns, gnd = ns, nd
    if hostile_graph == "huge_nodes":
        gns = 10**9 if bipartite else ns
        gnd = nd
    graph_like = ei
    if as_graph:
        try:
            graph_like = Graph.from_edge_index(ei, num_src=gns, num_dst=gnd)
        except CLEAR_ERRORS:
            graph_like = ei  # invalid edge_index: the op gets it raw and must raise
    if hostile_graph == "graph_fewer_nodes":
        graph_like = ei  # node counts come from the inputs below, which may be fewer
    H = int(torch.randint(1, 4, (1,), generator=rng))
    C = int(torch.randint(1, 6, (1,), generator=rng))
    dtype = _pick(rng, [torch.float32, torch.float64, torch.float64])
    special = _pick(rng, ["none", "none", "nan", "inf", "-inf", "huge", "all_-inf"])
    wrong = _pick(rng, ["none", "none", "none", "rows", "heads", "channels", "rank", "dtype", "int", "noncontig"])
    E_eff = E
    if isinstance(graph_like, Graph):
        E_eff = graph_like.num_edges
    rows = {"src": ns, "dst": nd, "edge": E_eff}

    def tensor(kind, trailing, name, target):
        shape = [rows[kind]] + list(trailing)
        t = _values(rng, shape, dtype, special if name == target else "none")
        if name != target:
            return t
        if wrong == "rows":
            t = _values(rng, [shape[0] + 1] + shape[1:], dtype, "none")
        elif wrong == "heads" and len(shape) > 1:
            t = _values(rng, [shape[0], shape[1] + 1] + shape[2:], dtype, "none")
        elif wrong == "channels" and len(shape) > 2:
            t = _values(rng, shape[:-1] + [shape[-1] + 2], dtype, "none")
        elif wrong == "rank":
            t = t.unsqueeze(-1)
        elif wrong == "dtype":
            t = t.to(torch.float32 if dtype == torch.float64 else torch.float64)
        elif wrong == "int":
            t = t.nan_to_num().long()
        elif wrong == "noncontig":
            t = torch.stack([t, t], dim=-1)[..., 0]
        return t

    kwargs = {}
    dropout = _pick(rng, [0.0] * 9 + [1.5, -0.1, math.nan])
    if op == "edge_softmax":
        tgt = "scores"
        tensors = dict(scores=tensor("edge", (H,), "scores", tgt))
    elif op == "gat":
        tgt = _pick(rng, ["score_src", "score_dst", "value", "edge_score"])
        tensors = dict(
            score_src=tensor("src", (H,), "score_src", tgt),
            score_dst=tensor("dst", (H,), "score_dst", tgt),
            value=tensor("src", (H, C), "value", tgt),
        )
        if bool(torch.randint(0, 2, (1,), generator=rng)):
            tensors["score_dst"] = None
        if bool(torch.randint(0, 2, (1,), generator=rng)):
            tensors["edge_score"] = tensor("edge", (H,), "edge_score", tgt)
        kwargs = dict(negative_slope=_pick(rng, [0.2] * 6 + [math.inf]), dropout=dropout)
    elif op == "gatv2":
        tgt = _pick(rng, ["x_src", "x_dst", "att", "edge_feat"])
        tensors = dict(x_src=tensor("src", (H, C), "x_src", tgt), x_dst=tensor("dst", (H, C), "x_dst", tgt))
        att = _values(rng, (H, C), dtype, special if tgt == "att" else "none")
        tensors["att"] = att.unsqueeze(-1) if (tgt == "att" and wrong == "rank") else att
        if bool(torch.randint(0, 2, (1,), generator=rng)):
            tensors["edge_feat"] = tensor("edge", (H, C), "edge_feat", tgt)
        kwargs = dict(dropout=dropout)
    else:
        tgt = _pick(rng, ["query", "key", "value", "edge_bias", "edge_key"])
        tensors = dict(
            query=tensor("dst", (H, C), "query", tgt),
            key=tensor("src", (H, C), "key", tgt),
            value=tensor("src", (H, C + 1), "value", tgt),
        )
        if bool(torch.randint(0, 2, (1,), generator=rng)):
            tensors["edge_bias"] = tensor("edge", (H,), "edge_bias", tgt)
        if bool(torch.randint(0, 2, (1,), generator=rng)):
            tensors["edge_key"] = tensor("edge", (H, C), "edge_key", tgt)
        kwargs = dict(dropout=dropout, scale=_pick(rng, [None] * 4 + [0.5, math.nan]))
    if kwargs.get("dropout", 0.0) != 0.0:
        kwargs["training"] = False  # dropout out of domain must raise even when inactive
    desc = dict(
        seed=seed,
        op=op,
        graph=hostile_graph,
        as_graph=isinstance(graph_like, Graph),
        ns=ns,
        nd=nd,
        E=E,
        H=H,
        C=C,
        dtype=str(dtype),
        special=special,
        wrong=wrong,
        target=tgt,
        kwargs={k: str(v) for k, v in kwargs.items()},
    )
    return op, graph_like, tensors, kwargs, desc


def call(op, graph_like, tensors, kwargs, backend):
    """Run the op on ``backend`` with gradients: ``(outputs, weights, input grads)``."""
    leaves = {
        k: (v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in tensors.items()
    }
    if op == "edge_softmax":
        out = ops.edge_softmax(leaves["scores"], graph_like, backend=backend)
        alpha = None
    else:
        fn = {"gat": ops.gat_attention, "gatv2": ops.gatv2_attention, "dot_product": ops.dot_product_attention}[op]
        names = {
            "gat": ("score_src", "score_dst", "value"),
            "gatv2": ("x_src", "x_dst", "att"),
            "dot_product": ("query", "key", "value"),
        }[op]
        extra = {k: v for k, v in leaves.items() if k not in names}
        out, alpha = fn(
            *(leaves[n] for n in names), graph_like, return_weights=True, backend=backend, **extra, **kwargs
        )
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    grads = []
    if out.requires_grad:
        (out * weights).sum().backward()
        # no gradient (None) means zeros, whichever backend says it which way
        grads = [
            torch.zeros_like(v) if v.grad is None else v.grad
            for v in leaves.values()
            if isinstance(v, torch.Tensor) and v.requires_grad
        ]
    return out.detach(), alpha, grads


def differs(a, b, tol, magnitude) -> str:
    """Why two results are not the same (NaN and inf in the same places, values within
    ``tol`` scaled by ``magnitude``), or "" when they are."""
    if a is None or b is None:
        return "" if a is None and b is None else "one result is missing"
    if a.shape != b.shape:
        return f"shape {list(a.shape)} vs {list(b.shape)}"
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return f"NaN at different places ({int(torch.isnan(a).sum())} vs {int(torch.isnan(b).sum())})"
    keep = ~torch.isnan(a)
    if not torch.equal(torch.isinf(a) & keep, torch.isinf(b) & keep):
        return "inf at different places"
    finite = keep & ~torch.isinf(a)
    a, b = a[finite], b[finite]
    # rounding error scales with the largest magnitude that went into a sum: with 1e30
    # among the inputs, a gradient's cancellation leaves only its NaN / inf pattern exact
    atol = tol * max(1.0, magnitude, float(a.abs().max()) if a.numel() else 1.0)
    if not torch.allclose(a, b, rtol=tol, atol=atol):
        return f"values differ by {float((a - b).abs().max())} (tolerance {atol})"
    return ""


def judge(seed: int, backends):
    op, graph_like, tensors, kwargs, desc = make_case(seed)
    results = {}
    for backend in backends:
        if backend == "triton" and op == "edge_softmax":
            continue  # triton has no edge_softmax
        try:
            results[backend] = ("ok", call(op, graph_like, tensors, kwargs, backend))
        except Exception as exc:  # noqa: BLE001 - we classify every exception
            results[backend] = ("error", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    ref = results["reference"]
    verdict = {"case": desc}
    if ref[0] == "error":
        if ref[1] not in {e.__name__ for e in CLEAR_ERRORS}:
            return {**verdict, "verdict": "fail", "why": f"reference raised {ref[1]}: {ref[2]}"}
        for b, r in results.items():
            if r != ref:
                return {
                    **verdict,
                    "verdict": "fail",
                    "why": f"{b} gave {r[:3] if r[0] == 'error' else 'a result'}, reference raised {ref[1]}: {ref[2]}",
                }
        return {**verdict, "verdict": "raise", "error": f"{ref[1]}: {ref[2]}"}
    tol = 1e-4 if ref[1][0].dtype == torch.float32 else 1e-9
    finite_inputs = [
        t[torch.isfinite(t)].abs()
        for t in tensors.values()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()
    ]
    magnitude = max([float(t.max()) for t in finite_inputs if t.numel()] + [0.0]) ** 2
    for b, r in results.items():
        if r[0] == "error":
            return {**verdict, "verdict": "fail", "why": f"{b} raised {r[1]}: {r[2]} where reference returned"}
        (o1, a1, g1), (o2, a2, g2) = ref[1], r[1]
        for what, x, y in [("output", o1, o2), ("weights", a1, a2)] + [
            (f"grad {i}", x, y) for i, (x, y) in enumerate(zip(g1, g2))
        ]:
            why = differs(None if x is None else x.detach(), None if y is None else y.detach(), tol, magnitude)
            if why:
                return {**verdict, "verdict": "fail", "why": f"{b} {what}: {why}"}
        if len(g1) != len(g2):
            return {**verdict, "verdict": "fail", "why": f"{b} returned {len(g2)} gradients, reference {len(g1)}"}
    return {**verdict, "verdict": "agree"}


def main(argv) -> int:
    start, count, backends = int(argv[1]), int(argv[2]), argv[3].split(",")
    torch.set_num_threads(1)
    for seed in range(start, start + count):
        print(f"start {seed}", file=sys.stderr, flush=True)
        try:
            v = judge(seed, backends)
        except Exception:  # noqa: BLE001 - a bug in the harness or an unexpected escape
            v = {"case": {"seed": seed}, "verdict": "fail", "why": traceback.format_exc(limit=3)}
        print(json.dumps(v), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
