"""One description of each op's inputs, and the one check derived from it.

The fused kernels index node and edge arrays with the graph's CSR arrays and trust
every shape, so the checks must be complete. Rather than scattering them through
the ops, each op declares its tensors here: which graph dimension indexes their
rows (source nodes, destination nodes, edges, or none), their trailing dimensions
by symbol (``H`` heads, ``C`` channels, ...; a symbol must take one value across
all tensors of a call), and its scalar arguments with their domains.
:func:`check_call` validates a call against that description, resolves the graph
(building and validating it once when an ``edge_index`` is given) and returns the
graph and the bound symbols. Nothing else runs before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..graph import Graph

GraphLike = Union[Graph, Tensor]

ROWS_MEANING = {"src": "num_src", "dst": "num_dst", "edge": "num_edges"}


@dataclass(frozen=True)
class TensorArg:
    name: str
    rows: Optional[str]  # "src", "dst", "edge", or None (no graph dimension)
    dims: Tuple[str, ...]  # trailing dimensions by symbol
    optional: bool = False

    def describe(self) -> str:
        lead = () if self.rows is None else (ROWS_MEANING[self.rows],)
        return "[" + ", ".join(lead + self.dims) + "]"


@dataclass(frozen=True)
class ScalarArg:
    name: str
    domain: str  # "probability" ([0, 1)), "finite"


@dataclass(frozen=True)
class FusedCall:
    """How a fused op runs on the kernels: its score kind (a row of ``_fused.KINDS``, by
    name), its backend function's positional tensors (before the graph; the rest are
    keywords), and which argument fills each slot of the kernels' calling convention
    (``_fused.CONVENTION``: ``dst_term``, ..., ``slope``, ``scale``), as ``(slot, argument)``
    pairs; a slot no argument fills gets its default there."""

    kind: str
    args: Tuple[str, ...]
    terms: Tuple[Tuple[str, str], ...]


def fused_call(kind: str, args: Sequence[str], **terms: str) -> FusedCall:
    """A :class:`FusedCall` with its terms given as ``slot=argument`` keywords."""
    return FusedCall(kind, tuple(args), tuple(terms.items()))


@dataclass(frozen=True)
class OpSpec:
    op: str
    tensors: Tuple[TensorArg, ...]
    scalars: Tuple[ScalarArg, ...] = ()
    fused: Optional[FusedCall] = None  # the fused ops' kernel call (None: not a fused op)


# a per-edge factor on each message after the softmax (PyG's explainer edge masks)
_EDGE_MASK = TensorArg("edge_mask", "edge", (), optional=True)
_FINITE = ScalarArg("negative_slope", "finite")
_DROPOUT = ScalarArg("dropout", "probability")

GAT = OpSpec(
    "gat",
    (
        TensorArg("value", "src", ("heads", "channels")),
        TensorArg("score_src", "src", ("heads",)),
        TensorArg("score_dst", "dst", ("heads",), optional=True),
        TensorArg("edge_score", "edge", ("heads",), optional=True),
        _EDGE_MASK,
    ),
    (_FINITE, _DROPOUT),
    fused_call(
        "GAT",
        ("score_src", "score_dst", "value"),
        dst_term="score_dst",
        src_term="score_src",
        value="value",
        edge_score_term="edge_score",
        slope="negative_slope",
    ),
)

GATV2 = OpSpec(
    "gatv2",
    (
        TensorArg("x_src", "src", ("heads", "channels")),
        TensorArg("x_dst", "dst", ("heads", "channels")),
        TensorArg("att", None, ("heads", "channels")),
        TensorArg("value", "src", ("heads", "value_channels"), optional=True),
        TensorArg("edge_feat", "edge", ("heads", "channels"), optional=True),
        _EDGE_MASK,
    ),
    (_FINITE, _DROPOUT),
    fused_call(
        "GATV2",
        ("x_src", "x_dst", "att", "value"),
        dst_term="x_dst",
        src_term="x_src",
        value="value",
        edge_score_term="edge_feat",
        att="att",
        slope="negative_slope",
    ),
)

DOT_PRODUCT = OpSpec(
    "dot_product",
    (
        TensorArg("query", "dst", ("heads", "head_dim")),
        TensorArg("key", "src", ("heads", "head_dim")),
        TensorArg("value", "src", ("heads", "value_dim")),
        TensorArg("edge_key", "edge", ("heads", "head_dim"), optional=True),
        TensorArg("edge_value", "edge", ("heads", "value_dim"), optional=True),
        TensorArg("edge_bias", "edge", ("heads",), optional=True),
        _EDGE_MASK,
    ),
    (ScalarArg("scale", "finite"), _DROPOUT),
    fused_call(
        "DOT",
        ("query", "key", "value"),
        dst_term="query",
        src_term="key",
        value="value",
        edge_score_term="edge_key",
        edge_bias="edge_bias",
        edge_value="edge_value",
        scale="scale",
    ),
)

# The fused ops, each naming its score kind of the fused kernels; the dispatcher's op names,
# the fused backends' functions and registrations (_fused.backend_functions, ops/__init__)
# and the pipeline's records (functional.RECORDS) follow this tuple.
FUSED = (GAT, GATV2, DOT_PRODUCT)

# score_attention runs on the dot-product kernels (its scores become their edge_bias);
# its own inputs are checked under its own names first
SCORE = OpSpec(
    "score",
    (
        TensorArg("scores", "edge", ("heads",)),
        TensorArg("value", "src", ("heads", "value_dim")),
        _EDGE_MASK,
    ),
    (_DROPOUT,),
)


def check_scalar(name: str, value, domain: str) -> float:
    """``value`` as a float inside its domain, or a ``ValueError`` naming the argument."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if domain == "probability" and not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    if domain == "finite" and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def _check_tensor(arg: TensorArg, t, dtype: Optional[torch.dtype], first: str = "") -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{arg.name} must be a tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{arg.name} must be a dense (strided) tensor, got layout {t.layout}")
    if not t.is_floating_point():
        raise TypeError(f"{arg.name} must be a floating-point tensor, got dtype {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(
            f"{arg.name} has dtype {t.dtype} but {first} (the first input given) is {dtype}; cast them to one dtype"
        )
    want = (0 if arg.rows is None else 1) + len(arg.dims)
    if t.dim() != want:
        raise ValueError(f"{arg.name} must have shape {arg.describe()}, got {list(t.shape)}")


def _node_counts(spec: OpSpec, tensors: Mapping[str, Optional[Tensor]]) -> Tuple[Optional[int], Optional[int]]:
    counts: Dict[str, Optional[int]] = {"src": None, "dst": None}
    for arg in spec.tensors:
        t = tensors.get(arg.name)
        if t is not None and arg.rows in counts and counts[arg.rows] is None:
            counts[arg.rows] = t.size(0)
    return counts["src"], counts["dst"]


def resolve_graph(graph: GraphLike, num_src: Optional[int], num_dst: Optional[int]) -> Graph:
    """A valid :class:`Graph` for ``graph`` whose node counts match the given ones
    (``None``: not constrained). An ``edge_index`` is validated and sorted once per
    call: build a Graph yourself to reuse it."""
    if isinstance(graph, Graph):
        graph.ensure_valid()
        graph.check_nodes(num_src, num_dst, what="the node inputs")
        return graph
    if isinstance(graph, Tensor):
        return Graph.from_edge_index(graph, num_src=num_src, num_dst=num_dst)
    raise TypeError(f"expected a graphattn.Graph or an edge_index tensor, got {type(graph).__name__}")


def check_call(
    spec: OpSpec, graph: GraphLike, tensors: Mapping[str, Optional[Tensor]], scalars: Mapping[str, object] = {}
) -> Tuple[Graph, Dict[str, int], Dict[str, float]]:
    """Validate one call of ``spec.op``: every tensor's presence, dtype (floating, one
    for all), rank, rows against the graph and trailing dims against each other, device
    against the graph; every scalar's domain. Returns ``(graph, dims, scalars)``."""
    dtype: Optional[torch.dtype] = None
    first = ""
    for arg in spec.tensors:
        t = tensors.get(arg.name)
        if t is None:
            if not arg.optional:
                raise TypeError(f"{arg.name} is required")
            continue
        _check_tensor(arg, t, dtype, first)
        dtype, first = (t.dtype, arg.name) if dtype is None else (dtype, first)
    checked = {s.name: check_scalar(s.name, scalars[s.name], s.domain) for s in spec.scalars if s.name in scalars}
    num_src, num_dst = _node_counts(spec, tensors)
    if num_dst is None and isinstance(graph, Tensor):
        num_dst = num_src  # no destination-side input: an edge_index is square (PyG's convention)
    g = resolve_graph(graph, num_src, num_dst)
    rows = {"src": g.num_src, "dst": g.num_dst, "edge": g.num_edges}
    dims: Dict[str, int] = {}
    for arg in spec.tensors:
        t = tensors.get(arg.name)
        if t is None:
            continue
        if t.device != g.device:
            raise ValueError(f"{arg.name} is on {t.device} but the graph is on {g.device}; use graph.to(device)")
        lead = () if arg.rows is None else (rows[arg.rows],)
        expected = lead + tuple(dims.get(sym, size) for sym, size in zip(arg.dims, t.shape[len(lead) :]))
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{arg.name} must have shape {list(expected)} ({arg.describe()[1:-1]}), got {list(t.shape)}"
            )
        for sym, size in zip(arg.dims, t.shape[len(lead) :]):
            dims.setdefault(sym, size)
    return g, dims, checked


def edge_rows(
    names: Sequence[str], graph: Graph, tensors: Mapping[str, Optional[Tensor]]
) -> Dict[str, Optional[Tensor]]:
    """The named per-edge tensors (user order) in the graph's CSR order."""
    return {n: (None if tensors.get(n) is None else graph.to_csr_order(tensors[n])) for n in names}
