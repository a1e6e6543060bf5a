"""The Triton backend: fused forward and backward kernels for GAT, GATv2 and
dot-product attention (see :mod:`graphattn.ops.triton_kernels`).

The kernels are registered as ``torch.library`` custom ops (``graphattn::triton_fused_*``)
over the graph's CSR tensors, with shape functions and an autograd formula, as the CPU
backend's are, so ``torch.compile`` traces through them without a graph break. Both save
the same statistics per destination and head (row max, log normaliser; see
:func:`graphattn.ops.softmax.weights_from_stats`).

Chosen automatically for CUDA tensors when ``triton`` is installed. On CPU it runs
only when forced (``backend="triton"``) with ``TRITON_INTERPRET=1`` set before the
first use, which is how the test suite checks it against ``reference``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _env
from . import reference
from ._dtypes import FLOAT_DTYPES, compute_dtype
from ._fused import DOT, GAT, GATV2, MASK_REASON, backend_functions, score_kind, triton_traits, versioned_op_name  # noqa: F401
from .softmax import weights_from_stats


# Decided once, at import: dispatch runs inside compiled layers, and dynamo refuses to
# trace import-system calls such as ``find_spec`` (torch 2.11: "Attempted to call function
# marked as skipped"), so the hot path reads a constant.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def is_available() -> bool:
    """Whether ``triton`` is installed (looked up once, when this module is imported)."""
    return _TRITON_INSTALLED


def decline(device=None, dtype=None, forced=False, has_edge_mask=False, **_) -> Optional[str]:
    if has_edge_mask:
        return MASK_REASON
    if device is None or dtype not in FLOAT_DTYPES:
        return f"dtype {dtype} is not a floating-point type it computes in"
    if not is_available():
        return "triton is not installed"
    dev = torch.device(device)
    if dev.type == "cuda":
        return None
    if dev.type != "cpu" or not forced or not _env.triton_interpret():
        return "it runs on CUDA tensors (on CPU only when forced with TRITON_INTERPRET=1 set before import)"
    return None


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _kernels():
    from . import triton_kernels

    if _env.triton_interpret():
        from ._triton_compat import ensure_interpreter_compat

        ensure_interpreter_compat()  # once: old interpreters under numpy >= 2.4 need a fix
    return triton_kernels


def _acc(dtype):
    import triton.language as tl

    return tl.float64 if compute_dtype(dtype) == torch.float64 else tl.float32


def _params(slope: float, scale: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([slope, scale], dtype=compute_dtype(like.dtype), device=like.device)


# Autotuning: the configurations (edges per block, warps) tried for each kernel on a
# GPU, keyed on heads, channels and the bucket of the mean degree, and the key of each
# kernel (argument names; the dst kernel has no value channels). Every kernel writes
# each of its outputs once (no accumulation), so running it again to time another
# configuration is harmless.
TUNE_CONFIGS = ((16, 1), (32, 2), (64, 4), (128, 4))
TUNE_KEYS = {
    "fused_forward_kernel": ("H", "F", "Cv", "degree_bucket"),
    "fused_backward_src_kernel": ("H", "F", "Cv", "degree_bucket"),
    "fused_backward_dst_kernel": ("H", "F", "degree_bucket"),
}
INTERPRETER_BLOCK_E = 16  # under TRITON_INTERPRET=1: one configuration, no timing


def degree_bucket(num_edges: int, num_nodes: int) -> int:
    """The autotuning key's degree term: the bit length of the mean degree (0, 1, 2-3, 4-7, ...)."""
    return int(num_edges // max(int(num_nodes), 1)).bit_length()


def autotuned(name: str):
    """Kernel ``name`` wrapped in ``triton.autotune`` over :data:`TUNE_CONFIGS` (built once)."""
    if name not in _AUTOTUNED:
        import triton

        configs = [triton.Config({"BLOCK_E": block}, num_warps=warps) for block, warps in TUNE_CONFIGS]
        _AUTOTUNED[name] = triton.autotune(configs=configs, key=list(TUNE_KEYS[name]))(getattr(_kernels(), name))
    return _AUTOTUNED[name]


_AUTOTUNED: dict = {}


def _launch(name: str, grid, *args, degree: int, **kwargs) -> None:
    """Run kernel ``name``: autotuned on a GPU, with one fixed block size under the interpreter
    (which cannot time configurations)."""
    if _env.triton_interpret():
        getattr(_kernels(), name)[grid](*args, degree_bucket=degree, BLOCK_E=INTERPRETER_BLOCK_E, **kwargs)
    else:
        autotuned(name)[grid](*args, degree_bucket=degree, **kwargs)


def _or(t, dummy):
    """``t``, or a stand-in for an absent input (its ``HAS_*`` flag is then False and the kernel never reads it)."""
    return dummy if t is None else t


def _shape(kind: int, src_term: Tensor, value: Tensor) -> Tuple[int, int, int]:
    """Heads ``H``, score channels ``F`` (1 for a scalar kind) and value channels ``Cv``."""
    return src_term.size(1), 1 if score_kind(kind).scalar else src_term.size(2), value.size(2)


def _flags(kind: int, terms, p: float) -> dict:
    """The ``constexpr`` arguments of the forward and the source pass: which terms are present, dropout, the
    padded channel counts, the accumulation dtype and the kind's traits."""
    dst_term, src_term, value, edge_score_term, edge_bias, edge_value, _ = terms
    _, F, Cv = _shape(kind, src_term, value)
    return dict(
        HAS_DST_TERM=dst_term is not None,
        HAS_EDGE_SCORE_TERM=edge_score_term is not None,
        HAS_EDGE_BIAS=edge_bias is not None,
        HAS_EDGE_VALUE=edge_value is not None,
        DROPOUT=p > 0,
        BLOCK_F=_pow2(F),
        BLOCK_C=_pow2(Cv),
        ACC=_acc(value.dtype),
        **triton_traits(kind),
    )


class _Edges(NamedTuple):
    """A graph's per-edge arrays in CSR order (destination ``row``, source ``col``): what the
    reference's score formulas read of a graph, rebuilt inside the ops from their tensors."""

    row: Tensor
    col: Tensor


# The ops' names end in a hash of the kernels, the generated kinds and this file
# (_fused.versioned_op_name's rule, as the CPU backend's).
_HERE = Path(__file__).parent
_OPS_SOURCE = b"".join(
    (_HERE / name).read_bytes() for name in ("triton_kernels.py", "triton_score_kinds.py", "triton_backend.py")
)


def _op_name(op: str) -> str:
    """The ``torch.library`` name of custom op ``op`` of this kernel version."""
    return versioned_op_name("triton", op, _OPS_SOURCE)


# ----------------------------------------------------------------- custom ops
# The kernels as torch.library custom ops, as the CPU backend's (ops/cpu.py), so torch.compile
# traces through them; they take the graph's tensors, not a Graph. The forward also takes each
# edge's destination ``row`` and the transposed CSR (colptr, row_by_src, eid; empty when no
# gradient is wanted): unused by the forward, they are what the backward reads and walks.
# The tensor arguments follow ._fused's calling convention (dst_term, src_term, value,
# edge_score_term, edge_bias, edge_value, att), None where absent. ``stats`` is [Nd, H, 2] in
# the accumulation dtype: the CPU kernel's (row max, log normaliser), whose weights
# ops/softmax.py's weights_from_stats defines.
@torch.library.custom_op(_op_name("fused_forward"), mutates_args=())
def _forward_op(
    kind: int,
    rowptr: Tensor,
    row: Tensor,
    col: Tensor,
    colptr: Tensor,
    row_by_src: Tensor,
    eid: Tensor,
    num_dst: int,
    dst_term: Optional[Tensor],
    src_term: Tensor,
    value: Tensor,
    edge_score_term: Optional[Tensor],
    edge_bias: Optional[Tensor],
    edge_value: Optional[Tensor],
    att: Optional[Tensor],
    slope: float,
    scale: float,
    p: float,
    seed: Tensor,
) -> Tuple[Tensor, Tensor]:
    terms = (dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att)
    out, stats = _forward_outputs(num_dst, value)
    H, F, Cv = _shape(kind, src_term, value)
    if num_dst and H:
        _launch(
            "fused_forward_kernel",
            (num_dst, H),
            rowptr,
            col,
            *(_or(t, value) for t in terms),
            out,
            stats,
            H,
            F,
            Cv,
            _params(slope, scale, value),
            p,
            int(seed),
            degree=degree_bucket(col.numel(), num_dst),
            **_flags(kind, terms, p),
        )
    return out, stats


def _forward_outputs(num_dst: int, value: Tensor) -> Tuple[Tensor, Tensor]:
    """Unfilled ``out`` [Nd, H, Cv] in the value's dtype and ``stats`` [Nd, H, 2] in the accumulation dtype."""
    H, Cv = value.size(1), value.size(2)
    return value.new_empty(num_dst, H, Cv), value.new_empty(num_dst, H, 2, dtype=compute_dtype(value.dtype))


@_forward_op.register_fake
def _(kind, rowptr, row, col, colptr, row_by_src, eid, num_dst, dst_term, src_term, value, *_):
    return _forward_outputs(num_dst, value)


# The backward takes the forward's output for FlashAttention's "delta", dout_dot_out[i, h] =
# <d_out[i, h], out[i, h]>, and returns the gradients of the seven terms, an empty tensor where
# a term is absent (custom ops return no None).
@torch.library.custom_op(_op_name("fused_backward"), mutates_args=())
def _backward_op(
    kind: int,
    rowptr: Tensor,
    row: Tensor,
    col: Tensor,
    colptr: Tensor,
    row_by_src: Tensor,
    eid: Tensor,
    dst_term: Optional[Tensor],
    src_term: Tensor,
    value: Tensor,
    edge_score_term: Optional[Tensor],
    edge_bias: Optional[Tensor],
    edge_value: Optional[Tensor],
    att: Optional[Tensor],
    stats: Tensor,
    d_out: Tensor,
    out: Tensor,
    slope: float,
    scale: float,
    p: float,
    seed: Tensor,
) -> List[Tensor]:
    terms = (dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att)
    coefficients = (slope, scale, p, int(seed))
    delta = _delta(kind, _Edges(row, col), terms, stats, d_out, out, coefficients)
    g, source_side = _source_pass(kind, colptr, row_by_src, eid, terms, stats, d_out, delta, coefficients)
    d_dst_term, datt = _destination_pass(kind, rowptr, col, terms, g, slope, scale)
    d_src_term, d_value, d_edge_score_term, d_edge_bias, d_edge_value = source_side
    return _or_empty([d_dst_term, d_src_term, d_value, d_edge_score_term, d_edge_bias, d_edge_value, datt], value)


@_backward_op.register_fake
def _(
    kind,
    rowptr,
    row,
    col,
    colptr,
    row_by_src,
    eid,
    dst_term,
    src_term,
    value,
    edge_score_term,
    edge_bias,
    edge_value,
    att,
    *_,
):
    weighted = score_kind(kind).weight == "att" and dst_term is not None  # as _destination_pass computes datt
    terms = (dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att if weighted else None)
    return _or_empty([None if t is None else torch.empty_like(t) for t in terms], value)


def _or_empty(grads, like: Tensor) -> List[Tensor]:
    return [like.new_empty(0) if gr is None else gr for gr in grads]


def _setup_context(ctx, inputs, output):
    (
        kind,
        rowptr,
        row,
        col,
        colptr,
        row_by_src,
        eid,
        num_dst,
        dst_term,
        src_term,
        value,
        edge_score_term,
        edge_bias,
        edge_value,
        att,
        slope,
        scale,
        p,
        seed,
    ) = inputs
    terms = (dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att)
    out, stats = output
    ctx.kind, ctx.params = kind, (slope, scale, p)
    ctx.present = [t is not None for t in terms]
    ctx.save_for_backward(rowptr, row, col, colptr, row_by_src, eid, *terms, stats, out, seed)
    ctx.mark_non_differentiable(stats)


def _backward(ctx, d_out, _d_stats):
    *graph_and_terms, stats, out, seed = ctx.saved_tensors
    slope, scale, p = ctx.params
    grads = _backward_op(ctx.kind, *graph_and_terms, stats, d_out.contiguous(), out, slope, scale, p, seed)
    grads = [gr if present else None for gr, present in zip(grads, ctx.present)]
    return (None,) * 8 + tuple(grads) + (None,) * 4


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _delta(kind, edges: _Edges, terms, stats, d_out, out, coefficients) -> Tensor:
    """FlashAttention's "delta" ``<d_out[i, h], out[i, h]>`` where it is finite; elsewhere (an
    inf or NaN in d_out or out) the row sum the reference forms,
    ``sum_e alpha_e keep_e <d_out[i, h], message e>``: with an inf in d_out the two differ
    (+-inf against NaN) and every score gradient of the row inherits the difference."""
    delta = (d_out.to(stats.dtype) * out.to(stats.dtype)).sum(-1).contiguous()
    if bool(torch.isfinite(delta).all()):
        return delta
    dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att = terms
    slope, scale, p, seed = coefficients
    alpha = _weights(edges, stats, kind, dst_term, src_term, edge_score_term, edge_bias, att, slope, scale)
    message = value[edges.col].to(stats.dtype)
    if edge_value is not None:
        message = message + edge_value.to(stats.dtype)
    d_message = (d_out[edges.row].to(stats.dtype) * message).sum(-1)
    keep = _dropout_scale(edges.col.numel(), delta.size(1), p, seed, value)
    exact = torch.zeros_like(delta).index_add_(0, edges.row, alpha * keep * d_message)
    return torch.where(torch.isfinite(delta), delta, exact).contiguous()


def _source_pass(kind, colptr, row_by_src, eid, terms, stats, d_out, delta, coefficients):
    """Over the transposed graph (per source, no atomics): the gradients of src_term, value
    and the per-edge terms, and the per-edge score gradient ``g`` [E, H] the destination pass sums."""
    dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att = terms
    slope, scale, p, seed = coefficients
    H, F, Cv = _shape(kind, src_term, value)
    Ns, E = colptr.numel() - 1, eid.numel()
    d_src_term, d_value = torch.empty_like(src_term), torch.empty_like(value)
    d_edge_terms = [None if t is None else torch.empty_like(t) for t in (edge_score_term, edge_bias, edge_value)]
    g = value.new_empty(E, H, dtype=stats.dtype)
    if Ns and H:
        _launch(
            "fused_backward_src_kernel",
            (Ns, H),
            colptr,
            row_by_src,
            eid,
            *(_or(t, value) for t in terms),
            stats,
            d_out,
            delta,
            d_src_term,
            d_value,
            *(_or(t, value) for t in d_edge_terms),
            g,
            H,
            F,
            Cv,
            _params(slope, scale, value),
            p,
            seed,
            degree=degree_bucket(E, Ns),
            **_flags(kind, terms, p),
        )
    return g, (d_src_term, d_value, *d_edge_terms)


def _destination_pass(kind, rowptr, col, terms, g, slope, scale):
    """Per destination, from the score gradient ``g``: dst_term's gradient, and att's for a kind
    it weights (``(None, None)`` without a dst_term)."""
    dst_term, src_term, value, edge_score_term, _, _, att = terms
    if dst_term is None:
        return None, None
    H, F, _ = _shape(kind, src_term, value)
    Nd = rowptr.numel() - 1
    has_att = score_kind(kind).weight == "att"
    d_dst_term = torch.empty_like(dst_term)
    datt_rows = value.new_zeros(Nd, H, F, dtype=g.dtype) if has_att else value
    if Nd and H:
        _launch(
            "fused_backward_dst_kernel",
            (Nd, H),
            rowptr,
            col,
            dst_term,
            src_term,
            _or(edge_score_term, value),
            _or(att, value),
            g,
            d_dst_term,
            datt_rows,
            H,
            F,
            _params(slope, scale, value),
            HAS_EDGE_SCORE_TERM=edge_score_term is not None,
            BLOCK_F=_pow2(F),
            ACC=_acc(value.dtype),
            degree=degree_bucket(col.numel(), Nd),
            **triton_traits(kind),
        )
    return d_dst_term, (datt_rows.sum(0).to(att.dtype) if has_att else None)


def _dropout_scale(E: int, H: int, p: float, seed: int, like: torch.Tensor) -> torch.Tensor:
    """The ``[E, H]`` dropout multipliers the fused kernels drew (CSR order); ones without dropout."""
    keep = torch.ones(E, H, device=like.device, dtype=compute_dtype(like.dtype))
    if p > 0 and E * H:
        block = 1024
        _kernels().dropout_scale_kernel[(-(-E * H // block),)](
            keep, E * H, H, p, seed, ACC=_acc(like.dtype), BLOCK=block
        )
    return keep


def _weights(graph, stats, kind, dst_term, src_term, edge_score_term, edge_bias, att, slope, scale):
    """alpha in CSR order, recomputed from the saved stats with the reference's score formula
    for the kind (an E x H tensor, for the returned weights and the non-finite delta)."""
    s = reference.kind_scores(
        kind, graph, dst_term, src_term, edge_score_term, edge_bias, att, slope, scale, dtype=stats.dtype
    )
    return weights_from_stats(s, stats.index_select(0, graph.row))


# ------------------------------------------------------------------ backend
def fused(kind: int, graph, slope: float, scale: float, p: float, seed: Tensor, *terms):
    """``(out, stats)`` of the fused forward of ``kind`` on ``graph``, differentiable in the
    terms (._fused's calling convention, None where absent); ``seed`` (a 0-d integer tensor)
    seeds dropout of rate ``p``."""
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in terms)
    transpose = graph.transpose_csr() if needs_grad else (graph.rowptr.new_empty(0),) * 3  # cached on the graph
    return _forward_op(
        kind,
        graph.rowptr,
        graph.row,
        graph.col,
        *transpose,
        graph.num_dst,
        *terms,
        float(slope),
        float(scale),
        float(p),
        seed,
    )


def _run(
    kind,
    graph,
    dst_term,
    src_term,
    value,
    edge_score_term,
    edge_bias,
    edge_value,
    att,
    slope,
    scale,
    dropout,
    training,
    need_weights,
):
    t = [
        None if x is None else x.contiguous()
        for x in (dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att)
    ]
    p = float(dropout) if (training and dropout > 0) else 0.0
    seed = torch.randint(0, 2**31 - 1, (), dtype=torch.long) if p > 0 else torch.zeros((), dtype=torch.long)
    out, stats = fused(kind, graph, slope, scale, p, seed, *t)
    alpha: Optional[Tensor] = None
    if need_weights:
        with torch.no_grad():
            dst_term, src_term, _, edge_score_term, edge_bias, _, att = t
            alpha = _weights(
                graph, stats, kind, dst_term, src_term, edge_score_term, edge_bias, att, float(slope), float(scale)
            ).to(value.dtype)
    return out, alpha


FUNCTIONS = backend_functions(_run)  # by op name
