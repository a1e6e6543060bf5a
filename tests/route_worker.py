"""Every route the attention dispatcher can take, on every input form, with hostile
values, against ``backend="reference"``; run as a subprocess by tests/test_routes.py.

A **route** is a public entry point x a backend registered for its op x, for a backend
with several paths, one path (``dense.ROUTES``). All three come from the code: the
entry points' op names and input descriptions (``_inputs``), the dispatcher's registry
and ``dense.ROUTES``, so a backend or a dense path added there gets cases here by
construction, or fails the coverage test until it has a graph family here. An **input
form** is one way of handing the same logical graph to an op (``FORMS``); a **family** is
a logical graph (empty rows, duplicate edges, bipartite, edgeless, pattern graphs).

Each case runs one call twice: on ``reference`` over the logical graph built plainly
from its ``edge_index``, and on the route's backend (forced) over the input form, with
its edge tensors in the form's edge order. Outputs, returned weights and the gradient of
every input (under an upstream gradient that may itself hold NaN / inf) must agree, NaN
and inf in the same places, and the call must have run on the route it was meant for
(``ops.last_backend``, ``dense.route``). Pairs that cannot run are listed in
``FORM_EXCLUSIONS`` / ``ROUTE_EXCLUSIONS`` with the reason; where the reason is that the
dispatcher declines, a probe case checks that it does.

One JSON line per case on stdout; ``start <index> <id>`` on stderr before each, so a
process killed by a signal names its case. ``python tests/route_worker.py BACKENDS
[--size default|slow] [--from K]``; ``--list`` prints the plan without running it.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from graphattn import Graph, ops, patterns
from graphattn.ops import _dispatch, _inputs, dense, flex
from graphattn.ops._inputs import OpSpec, TensorArg

from conftest import random_graph
from fuzz_worker import differs

CPU = torch.device("cpu")
SPECIALS = ("nan", "inf", "-inf")
TINY_DROPOUT = 1e-12  # dropout in effect, but no edge is ever dropped: comparable with reference


# ------------------------------------------------------------------ entry points
@dataclass(frozen=True)
class Entry:
    op: str  # the dispatcher's op
    fn: Callable
    spec: OpSpec  # its tensors: rows and trailing dims (as _inputs describes them)
    additive: Optional[str] = None  # the per-edge score term a -inf masks an edge with
    out_rows: str = "dst"

    @property
    def graph_kw(self) -> str:
        return next(p for p in inspect.signature(self.fn).parameters if p.startswith("graph"))

    def takes(self, kwarg: str) -> bool:
        return kwarg in inspect.signature(self.fn).parameters

    @property
    def edge_terms(self) -> Tuple[str, ...]:
        """The optional per-edge tensors (edge terms), not the message mask."""
        return tuple(a.name for a in self.spec.tensors if a.optional and a.rows == "edge" and a.name != "edge_mask")

    @property
    def always_edge_terms(self) -> bool:
        return any(a.rows == "edge" and not a.optional for a in self.spec.tensors)


_SCORES = TensorArg("scores", "edge", ("heads",))
_MASK = TensorArg("edge_mask", "edge", (), optional=True)
ENTRIES: Dict[str, Entry] = {
    "edge_softmax": Entry("edge_softmax", ops.edge_softmax, OpSpec("edge_softmax", (_SCORES,)), "scores", "edge"),
    "gat": Entry("gat", ops.gat_attention, _inputs.GAT, "edge_score"),
    "gatv2": Entry("gatv2", ops.gatv2_attention, _inputs.GATV2),
    "dot_product": Entry("dot_product", ops.dot_product_attention, _inputs.DOT_PRODUCT, "edge_bias"),
    "score_attention": Entry(
        "dot_product",
        ops.score_attention,
        OpSpec("score_attention", (_SCORES, TensorArg("value", "src", ("heads", "channels")), _MASK)),
        "scores",
    ),
}


@dataclass(frozen=True, order=True)
class Route:
    entry: str
    backend: str
    path: str = ""  # one of dense.ROUTES for the dense backend

    def __str__(self) -> str:
        return "/".join(x for x in (self.entry, self.backend, self.path) if x)


# backends with several paths, each its own route
PATHS = {"dense": dense.ROUTES}


def routes() -> List[Route]:
    """Every route, from the dispatcher's registry and the dense paths."""
    return [
        Route(e, b, p)
        for e, entry in ENTRIES.items()
        for b in _dispatch.available_backends(entry.op)
        for p in PATHS.get(b, ("",))
    ]


# ------------------------------------------------------------------ logical graphs
SIZES = dict(heads=2, channels=3, value_channels=4, head_dim=3, value_dim=4)
WIDE = dict(heads=1, channels=2, value_channels=2, head_dim=2, value_dim=2)  # the large pattern graphs


_EDGES: Dict[str, Tuple[torch.Tensor, int, int]] = {}


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], Graph]  # the graph as its builder makes it (a pattern graph carries its pattern)
    lazy: Optional[Callable[[], Graph]] = None  # the same graph built lazily (edges on first use)
    sizes: Tuple[Tuple[str, int], ...] = tuple(SIZES.items())

    def edges(self) -> Tuple[torch.Tensor, int, int]:
        """The logical graph: its ``edge_index`` (a fresh copy) and node counts."""
        if self.name not in _EDGES:
            g = self.build()
            _EDGES[self.name] = (g.edge_index.clone(), g.num_src, g.num_dst)
        ei, ns, nd = _EDGES[self.name]
        return ei.clone(), ns, nd

    @property
    def multigraph(self) -> bool:
        ei, ns, _ = self.edges()
        return (ei[1] * max(ns, 1) + ei[0]).unique().numel() != ei.size(1)

    @property
    def square(self) -> bool:
        _, ns, nd = self.edges()
        return ns == nd


def _plain(ei, ns, nd):
    return lambda: Graph.from_edge_index(ei, num_src=ns, num_dst=nd)


def _simple_sorted(n: int, e: int, seed: int) -> torch.Tensor:
    ei = random_graph(n, n, e, seed=seed, duplicates=False)
    key = (ei[1] * n + ei[0]).unique()  # sorted by destination, then source: no duplicates
    return torch.stack([key % n, key // n])


def _per_graph(sizes):
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return lambda: patterns.complete_per_graph(batch, int(sum(sizes)))


# Sparse routes: the awkward structures. Empty rows (destinations without in-edges) in
# all but the per-graph blocks; duplicates and self-loops in the multigraph.
SPARSE_FAMILIES = (
    Family("multigraph", _plain(random_graph(7, 7, 14, seed=1), 7, 7)),
    Family("sorted", _plain(_simple_sorted(7, 14, 2), 7, 7)),
    Family("bipartite", _plain(random_graph(5, 6, 12, seed=3, duplicates=False, self_loops=False)[:, :10], 5, 6)),
    Family("edgeless", _plain(torch.empty(2, 0, dtype=torch.long), 4, 4)),
    Family("per_graph", lambda: patterns.batch([3, 1, 4], patterns.complete), lazy=_per_graph([3, 1, 4])),
)
_SDPA = {
    "complete": Family("sdpa_complete", lambda: patterns.complete(6), lazy=_per_graph([6])),
    "causal": Family("sdpa_causal", lambda: patterns.batch([5, 5], patterns.causal)),
    "cross": Family("sdpa_cross", lambda: patterns.cross(4, 7)),
}
_FLEX = {
    "band": Family("flex_band", lambda: patterns.sliding_window(12, 2, 1)),
    "causal": Family("flex_causal", lambda: patterns.causal(10)),
    "complete": Family("flex_complete", lambda: patterns.batch([4, 4], patterns.complete), lazy=_per_graph([4, 4])),
}
# Each pattern route's graphs: one per pattern kind it takes (DENSE_KINDS, FLEX_KINDS).
PATTERN_FAMILIES: Dict[Tuple[str, str], Tuple[Family, ...]] = {
    ("dense", "sdpa"): tuple(_SDPA[k] for k in dense.DENSE_KINDS if k in _SDPA),
    ("dense", "band"): (Family("band", lambda: patterns.sliding_window(70, 40, 30), sizes=tuple(WIDE.items())),),
    ("dense", "grouped"): (
        Family(
            "grouped",
            lambda: patterns.batch([64, 66], patterns.complete),
            lazy=_per_graph([64, 66]),
            sizes=tuple(WIDE.items()),
        ),
    ),
    ("flex", ""): tuple(_FLEX[k] for k in flex.FLEX_KINDS if k in _FLEX),
}
MISSING_KINDS = [f"dense/sdpa pattern kind {k!r}" for k in dense.DENSE_KINDS if k not in _SDPA] + [
    f"flex pattern kind {k!r}" for k in flex.FLEX_KINDS if k not in _FLEX
]
FAMILIES = {f.name: f for f in SPARSE_FAMILIES + tuple(itertools.chain(*PATTERN_FAMILIES.values()))}


def families(route: Route) -> Tuple[Family, ...]:
    return PATTERN_FAMILIES.get((route.backend, route.path), SPARSE_FAMILIES)


# ------------------------------------------------------------------ input forms
def _coo(ei, ns, nd, extra=None):
    idx = ei.flip(0) if extra is None else torch.cat([ei.flip(0), extra.flip(0)], 1)  # adj_t: rows are destinations
    return torch.sparse_coo_tensor(idx, torch.ones(idx.size(1), dtype=torch.float64), (nd, ns))


def _uncoalesced(fam, ei, ns, nd, gen):
    """The entries shuffled, one of them twice (torch sums duplicate entries: the same graph)."""
    shuffled = ei[:, torch.randperm(ei.size(1), generator=gen)]
    return Graph.from_sparse(_coo(shuffled, ns, nd, shuffled[:, :1]))[0]


def _handmade(fam, ei, ns, nd, gen):
    g = fam.build()
    return Graph(
        g.rowptr.clone(),
        g.col.clone(),
        g.row.clone(),
        None if g.perm is None else g.perm.clone(),
        g.num_src,
        g.num_dst,
        pattern=g.pattern,
    )


FORMS: Dict[str, Callable] = {
    "edge_index": lambda fam, ei, ns, nd, gen: ei.clone(),
    "edge_index_transposed": lambda fam, ei, ns, nd, gen: ei.t().contiguous().t(),
    "edge_index_int32": lambda fam, ei, ns, nd, gen: ei.int(),
    "graph": lambda fam, ei, ns, nd, gen: fam.build(),
    "graph_handmade": _handmade,
    "graph_lazy": lambda fam, ei, ns, nd, gen: fam.lazy(),
    "graph_reordered": lambda fam, ei, ns, nd, gen: Graph.from_edge_index(ei, ns).reorder_nodes(),
    "coo": lambda fam, ei, ns, nd, gen: Graph.from_sparse(_coo(ei, ns, nd).coalesce())[0],
    "coo_uncoalesced": _uncoalesced,
    "csr": lambda fam, ei, ns, nd, gen: Graph.from_sparse(_coo(ei, ns, nd).coalesce().to_sparse_csr())[0],
    "csc": lambda fam, ei, ns, nd, gen: Graph.from_sparse(_coo(ei, ns, nd).coalesce().to_sparse_csc())[0],
    "dst_index": lambda fam, ei, ns, nd, gen: ei[1].clone(),
}
EDGE_INDEX_FORMS = ("edge_index", "edge_index_transposed", "edge_index_int32")
SPARSE_MATRIX_FORMS = ("coo", "coo_uncoalesced", "csr", "csc")
NO_PATTERN_FORMS = EDGE_INDEX_FORMS + SPARSE_MATRIX_FORMS + ("graph_reordered", "dst_index")


def form_takes(form: str, fam: Family) -> bool:
    """Whether ``form`` can hold the family's graph at all."""
    if form == "graph_lazy":
        return fam.lazy is not None
    if form == "graph_reordered":
        return fam.square
    if form in SPARSE_MATRIX_FORMS:
        return not fam.multigraph
    return True


@dataclass(frozen=True)
class Exclusion:
    reason: str
    declined: bool = False  # the dispatcher declines the pair: a probe case checks that it does


_NO_PATTERN = Exclusion(
    "this form carries no pattern (or, reordered, refuses one), so the pattern backend "
    "declines it; the sparse routes run it",
    declined=True,
)
# (form, entry / backend / dense path) -> why no case runs there
FORM_EXCLUSIONS: Dict[Tuple[str, str], Exclusion] = {
    **{(f, b): _NO_PATTERN for f in NO_PATTERN_FORMS for b in ("dense", "flex")},
    **{
        ("dst_index", e): Exclusion("only edge_softmax takes a bare destination index")
        for e in ENTRIES
        if e != "edge_softmax"
    },
    **{
        (f, "edge_softmax"): Exclusion("edge_softmax takes a Graph or a destination index, not an edge_index")
        for f in EDGE_INDEX_FORMS
    },
    ("dst_index", "cpu"): Exclusion("the CPU kernel needs a Graph's CSR rows, not a bare index", declined=True),
    ("graph_lazy", "band"): Exclusion("only complete blocks are built lazily (complete_per_graph), never a band"),
}
ROUTE_EXCLUSIONS: Dict[Tuple[str, str], Exclusion] = {
    ("score_attention", b): Exclusion(
        "score_attention's scores are a per-edge term, which the pattern backends decline", declined=True
    )
    for b in ("dense", "flex")
}
# backends that need something a machine may lack: only these may be unavailable
OPTIONAL_BACKENDS = {"cpu": "a C++ compiler", "triton": "triton (interpreted on CPU)", "scatter": "torch-scatter"}
# backends whose backward cannot run on CPU: their gradients are not compared there
# A NaN / inf upstream gradient with dropout in effect on a dense route: SDPA's dropout
# mask cannot be redrawn for the exact (sparse) backward, so the input gradients may hold
# NaN where the reference's hold inf; the route warns instead (test_dense_nonfinite.py).
DENSE_DROPOUT_GRAD = {"dense": "SDPA's dropout mask cannot be redrawn for the exact backward: warned, not exact"}
NO_CPU_BACKWARD = {"flex": "torch's FlexAttention has no backward on CPU (NotImplementedError)"}


def form_exclusion(route: Route, form: str) -> Optional[Exclusion]:
    for key in (route.entry, route.backend, route.path):
        if (form, key) in FORM_EXCLUSIONS:
            return FORM_EXCLUSIONS[(form, key)]
    return None


# ------------------------------------------------------------------ variants and hostile values
VARIANT_VALUES = {
    "weights": (False, True),
    "edge_terms": (False, True),
    "dropout": ("off", "inactive", "tiny"),
    "mask": (False, True),
    "optional": (True, False),
}


def variant_axes(entry: Entry) -> Dict[str, tuple]:
    """The variant axes an entry point has: from its signature and its input description."""
    axes = {
        "weights": entry.takes("return_weights"),
        "dropout": entry.takes("dropout"),
        "mask": entry.takes("edge_mask"),
        "edge_terms": bool(entry.edge_terms),
        "optional": any(a.optional and a.rows != "edge" for a in entry.spec.tensors),
    }
    return {k: VARIANT_VALUES[k] for k, on in axes.items() if on}


def variants(entry: Entry) -> List[dict]:
    axes = variant_axes(entry)
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def hostiles(entry: Entry, backward: bool) -> List[tuple]:
    """``(kind, target, special)``: a NaN / inf / -inf in one input, a -inf mask, or a
    NaN / inf in the upstream gradient of the output or of the weights."""
    out = [("clean", "", "")]
    out += [("value", a.name, s) for a in entry.spec.tensors if a.name != "edge_mask" for s in SPECIALS]
    if entry.additive:
        out.append(("mask", entry.additive, "-inf"))
    if backward:
        targets = ("out", "weights") if "weights" in variant_axes(entry) else ("out",)
        out += [("grad", t, s) for t in targets for s in ("nan", "inf")]
    return out


def needs(entry: Entry, hostile: tuple) -> dict:
    """The variant values a hostile value needs (its tensor present), and whether edges."""
    kind, target, _ = hostile
    arg = next((a for a in entry.spec.tensors if a.name == target), None)
    req: dict = {}
    if arg is not None and arg.optional:
        req["edge_terms" if arg.rows == "edge" else "optional"] = True
    if target == "weights":
        req["weights"] = True
    edges = kind == "mask" or target == "weights" or (arg is not None and arg.rows == "edge")
    return {"variant": req, "edges": edges}


def gives_num_dst(entry: Entry, variant: dict) -> bool:
    """Whether a call tells the op its destination count (a destination-side input or argument)."""
    return (
        entry.takes("num_dst")
        or entry.takes("num_nodes")
        or any(a.rows == "dst" and (not a.optional or variant.get("optional", True)) for a in entry.spec.tensors)
    )


def description(entry: Entry, graph: Optional[Graph], variant: dict, dtype, sizes: dict) -> dict:
    """The call description a backend's ``decline`` receives (``_pipeline.describe_call``'s keys)."""
    if entry.op == "edge_softmax":
        return dict(device=CPU, dtype=dtype, graph=graph)
    symbols = {s for a in entry.spec.tensors for s in a.dims}
    return dict(
        device=CPU,
        dtype=dtype,
        graph=graph,
        dropout=TINY_DROPOUT if variant.get("dropout") == "tiny" else 0.0,
        need_weights=variant.get("weights", False),
        has_edge_terms=entry.always_edge_terms or variant.get("edge_terms", False),
        has_edge_mask=variant.get("mask", False),
        heads=sizes["heads"],
        channels=sizes["channels"] if "channels" in symbols else None,
    )


def decline(route: Route, graph: Optional[Graph], variant: dict, dtype, sizes: dict) -> Optional[str]:
    op = ENTRIES[route.entry].op
    return _dispatch._REGISTRY[op][route.backend].refusal(  # prepare included: a kernel that cannot be built declines
        True, op, description(ENTRIES[route.entry], graph, variant, dtype, sizes)
    )


# ------------------------------------------------------------------ the plan
def _case(route, form, fam, hostile, variant, dtype, seed, expect="agree") -> dict:
    return dict(
        route=[route.entry, route.backend, route.path],
        form=form,
        family=fam.name,
        hostile=list(hostile),
        variant=variant,
        dtype=str(dtype).replace("torch.", ""),
        seed=seed,
        expect=expect,
    )


class _Planner:
    """The cases of one route: every form, family, hostile value and variant value at
    least once (``reps`` times as many, with random pairings, for the slow sweep)."""

    def __init__(self, route: Route, reps: int, seed: int):
        self.route, self.entry, self.reps = route, ENTRIES[route.entry], reps
        self.rng = torch.Generator().manual_seed(seed)
        self.fams = families(route)
        self.forms = [f for f in FORMS if form_exclusion(route, f) is None and any(form_takes(f, x) for x in self.fams)]
        self.backward = route.backend not in NO_CPU_BACKWARD
        self._accepts, self._graphs = {}, {}

    def accepts(self, fam: Family, variant: dict, dtype=torch.float64) -> bool:
        key = (fam.name, json.dumps(variant, sort_keys=True), dtype)
        if key not in self._accepts:
            graph = self._graphs.setdefault(fam.name, fam.build())
            self._accepts[key] = decline(self.route, graph, variant, dtype, dict(fam.sizes)) is None
        return self._accepts[key]

    def fits(self, form, fam, hostile, variant) -> bool:
        req = needs(self.entry, hostile)
        if hostile[0] == "grad" and variant.get("dropout") == "tiny" and self.route.backend in DENSE_DROPOUT_GRAD:
            return False  # DENSE_DROPOUT_GRAD's reason; tests/test_dense_nonfinite.py checks the warning
        if form in EDGE_INDEX_FORMS and not fam.square and not gives_num_dst(self.entry, variant):
            return False  # nothing says there are more destinations than sources: square, by convention
        return (
            form_takes(form, fam)
            and all(variant.get(k) == v for k, v in req["variant"].items())
            and (not req["edges"] or fam.edges()[0].size(1) > 0)
            and self.accepts(fam, variant)
        )

    def pick(self, i, form, hostile, vs, fams=None) -> Optional[tuple]:
        """The first family and variant, cycling from ``i``, that fit the form and the hostile value."""
        fams = fams or self.fams
        for a, b in itertools.product(range(len(fams)), range(len(vs))):
            fam, var = fams[(i + a) % len(fams)], vs[(i + b) % len(vs)]
            if self.fits(form, fam, hostile, var):
                return form, fam, hostile, var
        return None

    def _random(self, n):
        return int(torch.randint(0, n, (1,), generator=self.rng))

    def cases(self) -> List[dict]:
        vs = [v for v in variants(self.entry) if any(self.accepts(f, v) for f in self.fams)]
        some_form = {x.name: next((f for f in self.forms if form_takes(f, x)), None) for x in self.fams}
        hs = [
            h
            for h in hostiles(self.entry, self.backward)
            if any(some_form[x.name] and self.fits(some_form[x.name], x, h, v) for x in self.fams for v in vs)
        ]
        n = max(len(self.forms), len(self.fams), len(hs), len(vs))
        chosen = []
        for i in range(n * self.reps):
            r = (lambda m: i % m) if i < n else self._random  # the slow sweep pairs the axes at random
            form, hostile = self.forms[r(len(self.forms))], hs[r(len(hs))]
            chosen.append(self.pick(r(997), form, hostile, vs) or self.pick(i, form, ("clean", "", ""), vs))
        chosen = [c for c in chosen if c is not None]
        chosen += self._top_up(chosen, vs)
        dtypes = (torch.float64, torch.float64, torch.float64, torch.float32)
        return [_case(self.route, *c, dtypes[k % len(dtypes)], seed=1000 * k + 7) for k, c in enumerate(chosen)]

    def _top_up(self, chosen, vs) -> List[tuple]:
        """A case for each family and variant value the cycling left out."""
        extra = []
        for fam in self.fams:
            if all(c[1] is not fam for c in chosen):
                extra += [c for c in (self.pick(0, f, ("clean", "", ""), vs, [fam]) for f in self.forms) if c][:1]
        for axis, values in variant_axes(self.entry).items():
            for value in values:
                if all(c[3].get(axis) != value for c in chosen + extra):
                    extra += [
                        c
                        for c in (
                            self.pick(0, f, ("clean", "", ""), [v for v in vs if v[axis] == value]) for f in self.forms
                        )
                        if c
                    ][:1]
        return extra

    def declines(self) -> dict:
        """Why the backend takes no call with a variant value (``"weights=True": reason``),
        for each value it declines on every graph of the route."""
        out = {}
        for axis, values in variant_axes(self.entry).items():
            for value in values:
                combos = [v for v in variants(self.entry) if v[axis] == value]
                if not any(self.accepts(f, v) for f in self.fams for v in combos):
                    fam = self.fams[0]
                    out[f"{axis}={value}"] = decline(self.route, fam.build(), combos[0], torch.float64, dict(fam.sizes))
        return out

    def probes(self) -> List[dict]:
        """Pairs the dispatcher is said to decline: one case each, expecting it to."""
        out = []
        for form in FORMS:
            exc = form_exclusion(self.route, form)
            fam = next((x for x in self.fams if form_takes(form, x)), None)
            if exc is not None and exc.declined and fam is not None:
                var = next((v for v in variants(self.entry) if self.accepts(fam, v)), variants(self.entry)[0])
                out.append(_case(self.route, form, fam, ("clean", "", ""), var, torch.float64, 1, "declined"))
        return out


def plan(backends, size: str = "default") -> List[dict]:
    cases = []
    for k, route in enumerate(r for r in routes() if r.backend in backends):
        planner = _Planner(route, 1 if size == "default" else 6, seed=k)
        exc = ROUTE_EXCLUSIONS.get((route.entry, route.backend))
        fam = planner.fams[0]
        clean = variants(planner.entry)[0]
        if exc is not None:
            cases.append(
                _case(
                    route,
                    "graph",
                    fam,
                    ("clean", "", ""),
                    clean,
                    torch.float64,
                    1,
                    "declined" if exc.declined else "excluded",
                )
            )
            continue
        why = decline(route, fam.build(), clean, torch.float64, dict(fam.sizes))
        if why is not None:
            cases.append(
                dict(_case(route, "graph", fam, ("clean", "", ""), clean, torch.float64, 1, "unavailable"), why=why)
            )
            continue
        cases += planner.cases() + planner.probes()
        cases.append(dict(route=[route.entry, route.backend, route.path], expect="declines", values=planner.declines()))
    return cases


# ------------------------------------------------------------------ running a case
def _row(rows: str, ei: torch.Tensor, n: int, gen) -> int:
    """A row the graph uses (a source or destination of some edge) where there is one."""
    if rows in ("src", "dst") and ei.size(1):
        return int(ei[0 if rows == "src" else 1][torch.randint(0, ei.size(1), (1,), generator=gen)])
    return int(torch.randint(0, max(n, 1), (1,), generator=gen))


def _poke(t: torch.Tensor, row: int, special: str, gen) -> None:
    if t.numel():
        flat = t[row].view(-1) if t.dim() > 0 and row < t.size(0) else t.view(-1)
        flat[int(torch.randint(0, flat.numel(), (1,), generator=gen))] = float(special)


def _mask_rows(t: torch.Tensor, ei: torch.Tensor, gen) -> None:
    """-inf on every in-edge of one destination (an all-masked row) and on one edge of another."""
    d = _row("dst", ei, 0, gen)
    t[ei[1] == d] = -math.inf
    others = (ei[1] != d).nonzero().view(-1)
    if others.numel():
        t[int(others[torch.randint(0, others.numel(), (1,), generator=gen)]), 0] = -math.inf


def make_inputs(entry: Entry, case: dict, ei, ns: int, nd: int, sizes: dict, gen) -> Dict[str, torch.Tensor]:
    rows = {"src": ns, "dst": nd, "edge": ei.size(1)}
    variant, dtype = case["variant"], getattr(torch, case["dtype"])
    tensors = {}
    for arg in entry.spec.tensors:
        present = (
            variant.get("mask", False)
            if arg.name == "edge_mask"
            else variant.get("edge_terms", False)
            if arg.optional and arg.rows == "edge"
            else variant.get("optional", True)
            if arg.optional
            else True
        )
        if present:
            shape = ([rows[arg.rows]] if arg.rows else []) + [sizes[s] for s in arg.dims]
            t = (
                torch.rand(shape, generator=gen, dtype=torch.float64)
                if arg.name == "edge_mask"
                else torch.randn(shape, generator=gen, dtype=torch.float64)
            )
            tensors[arg.name] = t.to(dtype)
    kind, target, special = case["hostile"]
    arg = next((a for a in entry.spec.tensors if a.name == target), None)
    if kind == "value":
        _poke(tensors[target], _row(arg.rows or "", ei, tensors[target].size(0), gen), special, gen)
    elif kind == "mask":
        _mask_rows(tensors[target], ei, gen)
    return tensors


def call_kwargs(entry: Entry, case: dict, nd: int) -> dict:
    v, kw = case["variant"], {}
    if "weights" in v:
        kw["return_weights"] = v["weights"]
    if "dropout" in v:
        kw.update(
            {
                "off": dict(dropout=0.0),
                "inactive": dict(dropout=0.5, training=False),
                "tiny": dict(dropout=TINY_DROPOUT, training=True),
            }[v["dropout"]]
        )
    if entry.takes("num_dst"):
        kw["num_dst"] = nd
    if entry.takes("num_nodes") and case["form"] == "dst_index":
        kw["num_nodes"] = nd
    return kw


def forward(entry: Entry, backend: str, graph_like, tensors: dict, kwargs: dict, grad: bool):
    leaves = {k: v.detach().clone().requires_grad_(grad) for k, v in tensors.items()}
    absent = {a.name: None for a in entry.spec.tensors if a.name not in leaves}  # an optional input not given
    result = entry.fn(**leaves, **absent, **{entry.graph_kw: graph_like}, backend=backend, **kwargs)
    out, weights = result if isinstance(result, tuple) else (result, None)
    return out, weights, leaves


def results(out, weights, leaves, upstream: dict, grad: bool) -> Dict[str, torch.Tensor]:
    """Outputs, weights and the gradient of every input under the upstream gradients."""
    res = {"out": out.detach()}
    if weights is not None:
        res["weights"] = weights.detach()
    if not grad:
        return res
    outs = [(t, upstream[k]) for k, t in (("out", out), ("weights", weights)) if t is not None and t.requires_grad]
    inputs = list(leaves.values())
    grads = (
        torch.autograd.grad([t for t, _ in outs], inputs, [g for _, g in outs], allow_unused=True)
        if outs
        else [None] * len(inputs)
    )
    for (name, leaf), g in zip(leaves.items(), grads):
        res[f"grad {name}"] = torch.zeros_like(leaf) if g is None else g
    return res


def upstream_grads(entry: Entry, case: dict, ref: dict, ei, gen) -> dict:
    up = {
        k: torch.randn(ref[k].shape, generator=gen, dtype=torch.float64).to(ref[k].dtype)
        for k in ("out", "weights")
        if k in ref
    }
    kind, target, special = case["hostile"]
    if kind == "grad":
        rows = entry.out_rows if target == "out" else "edge"
        _poke(up[target], _row(rows, ei, up[target].size(0), gen), special, gen)
    return up


def edge_order(graph_like, ei: torch.Tensor, ns: int) -> torch.Tensor:
    """``perm`` with form edge ``k`` = logical edge ``perm[k]``, by matching (source,
    destination) pairs, duplicates in the order they come."""
    if not isinstance(graph_like, Graph) and graph_like.dim() == 1:
        return torch.arange(ei.size(1))  # a destination index: the logical order
    form_ei = graph_like.edge_index if isinstance(graph_like, Graph) else graph_like.long()
    if form_ei.size(1) != ei.size(1):
        raise AssertionError(f"the form's graph has {form_ei.size(1)} edges, the logical graph {ei.size(1)}")
    kf, kc = form_ei[1] * (ns + 1) + form_ei[0], ei[1] * (ns + 1) + ei[0]
    of, oc = kf.argsort(stable=True), kc.argsort(stable=True)
    if not torch.equal(kf[of], kc[oc]):
        raise AssertionError("the form's graph has other edges than the logical graph")
    perm = torch.empty_like(of)
    perm[of] = oc
    return perm


def _edge_rowed(entry: Entry, name: str) -> bool:
    if name == "weights" or (name == "out" and entry.out_rows == "edge"):
        return True
    arg = next((a for a in entry.spec.tensors if f"grad {a.name}" == name), None)
    return arg is not None and arg.rows == "edge"


def ran_on(route: Route, graph_like) -> List[str]:
    backend = ops.last_backend(ENTRIES[route.entry].op)
    path = dense.route(graph_like) if backend == "dense" and isinstance(graph_like, Graph) else ""
    return [backend or "", path or ""]


def judge(case: dict) -> dict:
    route, entry, fam = Route(*case["route"]), ENTRIES[case["route"][0]], FAMILIES[case["family"]]
    gen = torch.Generator().manual_seed(case["seed"])
    ei, ns, nd = fam.edges()
    sizes = dict(fam.sizes)
    tensors = make_inputs(entry, case, ei, ns, nd, sizes, gen)
    kwargs = call_kwargs(entry, case, nd)
    graph_like = FORMS[case["form"]](fam, ei, ns, nd, gen)
    if case["expect"] == "declined":
        try:
            forward(entry, route.backend, graph_like, tensors, kwargs, grad=False)
        except ops.BackendDeclined as exc:
            return {"verdict": "declined", "why": str(exc)}
        return {
            "verdict": "fail",
            "why": f"expected {route.backend} to decline this form, but it ran ({ran_on(route, graph_like)})",
        }
    grad = route.backend not in NO_CPU_BACKWARD
    ref_out = forward(entry, "reference", Graph.from_edge_index(ei, num_src=ns, num_dst=nd), tensors, kwargs, grad)
    up = upstream_grads(entry, case, results(*ref_out, {}, grad=False), ei, gen)
    ref = results(*ref_out, up, grad)
    needs_order = any(_edge_rowed(entry, k) for k in ref) or any(_arg(entry, k).rows == "edge" for k in tensors)
    perm = edge_order(graph_like, ei, ns) if needs_order else None
    if perm is not None:
        tensors = {k: t[perm] if _arg(entry, k).rows == "edge" else t for k, t in tensors.items()}
        up = {k: g[perm] if _edge_rowed(entry, k) else g for k, g in up.items()}
    got_out = forward(entry, route.backend, graph_like, tensors, kwargs, grad)
    ran = ran_on(route, graph_like)
    why = _ran_check(route, ran, case, graph_like) or _compare(entry, case, ref, results(*got_out, up, grad), perm)
    return {"verdict": "fail" if why else "agree", "why": why, "ran": ran}


def _arg(entry: Entry, name: str) -> TensorArg:
    return next(a for a in entry.spec.tensors if a.name == name)


def _compare(entry: Entry, case: dict, ref: dict, got: dict, perm) -> str:
    """Why the route's results differ from reference's ("" when they agree)."""
    tol = 1e-9 if case["dtype"] == "float64" else 1e-4
    if set(ref) != set(got):
        return f"results {sorted(got)} vs reference's {sorted(ref)}"
    for name, r in ref.items():
        want = r[perm] if perm is not None and _edge_rowed(entry, name) else r
        why = differs(got[name], want, tol, 1.0)
        if why:
            return f"{name}: {why}"
    return ""


def _ran_check(route: Route, ran: List[str], case: dict, graph_like) -> str:
    if ran != [route.backend, route.path]:
        return f"meant for {route}, ran on {'/'.join(x for x in ran if x)}"
    if (
        route.backend == "dense"
        and case["form"] == "graph_lazy"
        and case["hostile"][0] == "clean"
        and graph_like.is_materialized
    ):  # (a NaN or inf may send the call to the sparse kernel)
        return "the dense route built the lazy graph's edges"
    return ""


def main(argv) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("backends")
    p.add_argument("--size", default="default", choices=("default", "slow"))
    p.add_argument("--from", dest="start", type=int, default=0)
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv[1:])
    torch.set_num_threads(1)
    cases = plan(args.backends.split(","), args.size)
    for k, case in enumerate(cases[args.start :], start=args.start):
        if args.list or case["expect"] in ("unavailable", "excluded", "declines"):
            print(json.dumps({"index": k, "case": case, "verdict": case["expect"], "why": case.get("why", "")}))
            continue
        print(f"start {k} {json.dumps(case)}", file=sys.stderr, flush=True)
        try:
            verdict = judge(case)
        except Exception as exc:  # noqa: BLE001 - every escape is a verdict
            verdict = {
                "verdict": "fail",
                "why": f"{type(exc).__name__}: {exc}".splitlines()[0][:400],
                "trace": traceback.format_exc(limit=-3),
            }
        print(json.dumps({"index": k, "case": case, **verdict}), flush=True)
    print(json.dumps({"done": len(cases)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
