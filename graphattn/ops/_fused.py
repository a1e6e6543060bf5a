"""The fused kernels' score kinds and calling convention (CPU and Triton backends).

Both kernels compute, for an edge ``e = (j -> i)`` and a head, one score of the form

.. math::
    s_e = \\sum_c w_c \\, \\phi(z_c) + b_e, \\qquad
    z = src\\_term[j] + edge\\_score\\_term[e] \\; (+\\, dst\\_term[i] \\text{ when the kind adds it})

from a destination-side node tensor ``dst_term[i]`` (GAT's ``a_dst . W x_i``, GATv2's
``W_r x_i``, the dot product's query), a source-side one ``src_term[j]`` (``a_src . W
x_j``, ``W_l x_j``, the key), optional per-edge terms ``edge_score_term[e]`` (inside
``z``) and ``edge_bias[e]`` (``b_e``), then aggregate messages ``value[j]`` (+
``edge_value[e]``). A kind is a row of :data:`KINDS`, nothing more:

* ``adds_dst``: ``dst_term`` is added into ``z`` (additive attention);
* ``weight``: the factor ``w_c`` on each channel: ``"one"``, ``"att"`` (a learned
  ``[H, F]`` vector) or ``"dst"`` (``scale * dst_term[i]``: the dot product);
* ``activation``: ``phi``, a row of :data:`ACTIVATIONS` (its value and derivative as
  expressions in ``z`` and ``slope``);
* ``scalar``: one number per head (``F = 1``, terms shaped ``[N, H]``);
* ``takes_edge_bias``: the op passes a per-edge ``b_e`` (the dot product's ``edge_bias``).

so GAT is ``leaky(src + dst + edge)`` (scalar), GATv2 ``att . leaky(src + dst + edge)``
and the dot product ``scale * dst . (src + edge) + bias``. The derivative follows from
the same rows: ``dz_c = ds * w_c * phi'(z_c)`` reaches ``src_term``, ``edge_score_term``
and (when added) ``dst_term``; ``ds * phi(z_c)`` reaches ``att`` or (times ``scale``) the
``dst_term`` that weights; ``ds`` reaches ``edge_bias``.

This docstring is the one statement of the general form: the kernels and the docs refer
here. The kernels implement it once, each, specialised at compile time by a
kind's traits; the traits and the activations are *generated* from the tables here into
``csrc/score_kinds.h`` (C++) and ``triton_score_kinds.py`` (Triton) by
:mod:`graphattn.ops._codegen`::

    python -m graphattn.ops._codegen          # rewrite both files
    python -m graphattn.ops._codegen --check  # exit 1 if either is stale (a test runs this)

:func:`backend_functions` maps the public ops' arguments onto the calling convention
for a backend's ``run`` function, for every fused op from its declaration
(``_inputs.FUSED``: each op names its kind and which argument fills which term).
``docs/adding-a-score-kind.md`` is the checklist.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

from ._inputs import FUSED, OpSpec


@dataclass(frozen=True)
class Activation:
    """``phi`` and its derivative as expressions in ``z`` and ``slope``: numbers, ``+ - *
    /``, comparisons, ``where(cond, a, b)``, ``max(a, b)`` and ``min(a, b)`` (both
    propagate a NaN in ``a``)."""

    name: str
    value: str
    derivative: str


@dataclass(frozen=True)
class ScoreKind:
    name: str
    code: int
    adds_dst: bool
    weight: str
    activation: str
    scalar: bool
    takes_edge_bias: bool

    @property
    def holds_channel_buffer(self) -> bool:
        """Whether the CPU kernel holds this kind's pre-activations for one head in its
        fixed-size buffer (:data:`MAX_BUFFERED_CHANNELS`): per-channel kinds with a
        non-identity activation."""
        return not self.scalar and self.activation != "identity"


WEIGHTS = ("one", "att", "dst")
ACTIVATIONS: Tuple[Activation, ...] = (
    # max/min rather than a select: GCC vectorises them, and they keep a NaN
    Activation("leaky_relu", "max(z, 0) + slope * min(z, 0)", "where(z > 0, 1, slope)"),
    Activation("identity", "z", "1"),
)
KINDS: Tuple[ScoreKind, ...] = (
    ScoreKind("GAT", 0, adds_dst=True, weight="one", activation="leaky_relu", scalar=True, takes_edge_bias=False),
    ScoreKind("GATV2", 1, adds_dst=True, weight="att", activation="leaky_relu", scalar=False, takes_edge_bias=False),
    ScoreKind("DOT", 2, adds_dst=False, weight="dst", activation="identity", scalar=False, takes_edge_bias=True),
)


def check_kind(kind: ScoreKind) -> ScoreKind:
    """Raise ``ValueError`` if the kernels' general form cannot compute ``kind`` (the
    combinations they are written for); return it otherwise."""
    problems = []
    if kind.weight not in WEIGHTS:
        problems.append(f"weight {kind.weight!r} is not one of {WEIGHTS}")
    if kind.activation not in {a.name for a in ACTIVATIONS}:
        problems.append(f"activation {kind.activation!r} is not a row of ACTIVATIONS")
    if kind.scalar and kind.weight != "one":
        problems.append("a scalar kind has one number per head, so no channel weight (weight='one')")
    if kind.scalar and not kind.adds_dst:
        problems.append("a scalar kind adds its destination term (the kernels' scalar path always reads it)")
    if kind.scalar and kind.takes_edge_bias:
        problems.append("a scalar kind's edge score term already is a per-edge bias (takes_edge_bias=False)")
    if not kind.scalar and kind.weight == "one" and kind.activation == "identity":
        problems.append(
            "a per-channel kind with weight 'one' and the identity is a plain sum of channels: "
            "make it scalar (sum the channels before the op)"
        )
    if problems:
        raise ValueError(f"score kind {kind.name}: " + "; ".join(problems))
    return kind


for _kind in KINDS:
    check_kind(_kind)
if sorted(k.code for k in KINDS) != list(range(len(KINDS))):
    raise ValueError("score kind codes must be 0..len(KINDS)-1, each once")
_BY_CODE: Dict[int, ScoreKind] = {k.code: k for k in KINDS}
_BY_NAME: Dict[str, ScoreKind] = {k.name: k for k in KINDS}
_ACTIVATION_CODE = {a.name: n for n, a in enumerate(ACTIVATIONS)}

# Why the fused kernels decline a call with a per-edge message mask (explainers):
# only reference applies one; a fused version would need its gradient per edge.
MASK_REASON = "a per-edge message mask is set (edge_mask, e.g. by an explainer); only reference applies it"


def score_kind(code: int) -> ScoreKind:
    if code not in _BY_CODE:
        raise ValueError(
            f"unknown score kind {code!r}; the kinds are " + ", ".join(f"{k.name}={k.code}" for k in KINDS)
        )
    return _BY_CODE[code]


def kind_code(name: str) -> int:
    """The code of the kind named ``name`` (a row of :data:`KINDS`)."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown score kind {name!r}; the kinds are {', '.join(_BY_NAME)}")
    return _BY_NAME[name].code


GAT, GATV2, DOT = (kind_code(name) for name in ("GAT", "GATV2", "DOT"))

# The kernels' calling convention: ``run(kind, graph, <CONVENTION slots, by keyword>, dropout,
# training, need_weights)``; each slot's value when an op's call leaves it unfilled.
CONVENTION: Dict[str, object] = dict(
    dst_term=None,
    src_term=None,
    value=None,
    edge_score_term=None,
    edge_bias=None,
    edge_value=None,
    att=None,
    slope=0.0,
    scale=1.0,
)


def check_fused_op(spec: OpSpec) -> OpSpec:
    """Raise ``ValueError`` if a fused op's declaration names no kind, an unknown slot or
    an argument it does not have; return it otherwise."""
    call = spec.fused
    names = {t.name for t in spec.tensors} | {s.name for s in spec.scalars}
    problems = [f"slot {slot!r} is not one of {tuple(CONVENTION)}" for slot, _ in call.terms if slot not in CONVENTION]
    problems += [
        f"{arg!r} is not an argument of the op"
        for arg in call.args + tuple(a for _, a in call.terms)
        if arg not in names
    ]
    if call.kind not in _BY_NAME:
        problems.append(f"kind {call.kind!r} is not a row of KINDS")
    if problems:
        raise ValueError(f"fused op {spec.op}: " + "; ".join(problems))
    return spec


for _spec in FUSED:
    check_fused_op(_spec)

# The public ops' names for the kinds they run (the dispatcher's call descriptions name ops).
OP_KINDS: Dict[str, int] = {spec.op: kind_code(spec.fused.kind) for spec in FUSED}


# Channels per head of the CPU kernel's stack buffer for one head's pre-activations
# (``kMaxF`` in the generated header); a kind that holds one refuses more on entry.
MAX_BUFFERED_CHANNELS = 1024


def triton_traits(code: int) -> dict:
    """A kind's traits as the Triton kernels' ``constexpr`` arguments."""
    k = score_kind(code)
    return dict(
        SCALAR=k.scalar, ADDS_DST=k.adds_dst, WEIGHT=WEIGHTS.index(k.weight), ACT=_ACTIVATION_CODE[k.activation]
    )


def kernel_terms(spec: OpSpec, given: Dict[str, object]) -> Dict[str, object]:
    """Every slot of :data:`CONVENTION` for a call of ``spec``'s op whose arguments, by
    name, are ``given``: the argument that fills it, else its default."""
    return dict(CONVENTION, **{slot: given[arg] for slot, arg in spec.fused.terms})


def backend_keywords(spec: OpSpec) -> Tuple[str, ...]:
    """The keyword arguments of a fused op's backend function besides ``dropout``,
    ``training``, ``need_weights`` and ``edge_mask``: its edge terms, then its scalars."""
    edge_terms = tuple(t.name for t in spec.tensors if t.rows == "edge" and t.name != "edge_mask")
    return edge_terms + tuple(s.name for s in spec.scalars if s.name != "dropout")


def backend_functions(run) -> Dict[str, Callable]:
    """One backend function per fused op, by op name, calling ``run(kind, graph, **slots,
    dropout=, training=, need_weights=)`` (``edge_mask=`` too, only when one is given)."""
    return {spec.op: _backend_function(spec, run) for spec in FUSED}


def _backend_function(spec: OpSpec, run) -> Callable:
    """``fn(*args, graph, <backend_keywords>, dropout, training, need_weights=True)`` for
    ``spec``'s op (its public backend signature) over ``run``."""
    kind, keywords = kind_code(spec.fused.kind), set(backend_keywords(spec))

    def fn(*args, dropout, training, need_weights=True, edge_mask=None, **named):
        *tensors, graph = args
        if len(tensors) != len(spec.fused.args) or set(named) != keywords:
            raise TypeError(
                f"{spec.op} takes ({', '.join(spec.fused.args)}, graph) and the keywords "
                f"{sorted(keywords)}; got {len(args)} positional and {sorted(named)}"
            )
        terms = kernel_terms(spec, dict(zip(spec.fused.args, tensors), **named))
        mask = {} if edge_mask is None else {"edge_mask": edge_mask}
        return run(kind, graph, dropout=dropout, training=training, need_weights=need_weights, **terms, **mask)

    fn.__name__ = fn.__qualname__ = spec.op
    return fn


def versioned_op_name(backend: str, op: str, source: bytes) -> str:
    """The ``torch.library`` name of a fused backend's custom op ``op``:
    ``graphattn::<backend>_<op>_<sha1(source)[:12]>``, ``source`` being every byte the op's
    behaviour depends on (kernel, generated kinds, schemas and autograd formula). Any edit
    renames the ops, so torch.compile's on-disk cache, which keys graphs by op name, can never
    replay a graph built for the old ones; nothing is bumped by hand."""
    return f"graphattn::{backend}_{op}_{hashlib.sha1(source).hexdigest()[:12]}"
