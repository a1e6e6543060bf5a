"""The fused CPU backend: a native kernel (C++, ATen's thread pool) built on first use.

Forward makes two passes over each destination's CSR row (the row's scores and their
per-head max into a small per-row buffer, then the exponentials and the weighted sum
of values); it keeps only the output and, per node and head, the row's max and log
normaliser (kept apart: summed into one log-sum-exp they round badly for huge
logits). Backward recomputes the weights from them: a pass over the transposed graph (per source, no atomics, so
results are deterministic) and a pass over rows. No ``E x H x C`` tensor is ever
built; the only per-edge buffer is one ``E x H`` score gradient in backward.

The kernels are registered as ``torch.library`` custom ops (``graphattn::cpu_*``)
with shape functions and an autograd formula, so ``torch.compile`` traces through
them without a graph break. The extension is compiled with
``torch.utils.cpp_extension`` the first time it is needed (about 40 s; cached in
``$TORCH_EXTENSIONS_DIR``). If that fails (no compiler), the backend reports
itself unavailable and the dispatcher falls back to ``reference``.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ._dtypes import FLOAT_DTYPES, upcast
from ._fused import (DOT, GAT, GATV2, MASK_REASON, MAX_BUFFERED_CHANNELS, OP_KINDS, backend_functions,  # noqa: F401
                     score_kind)
_SOURCE = Path(__file__).parent / "csrc" / "fused_attention.cpp"
_HEADER = _SOURCE.parent / "score_kinds.h"  # generated from ._fused's tables (._codegen); included by _SOURCE
# -fopenmp: at::parallel_for is an inline template that parallelises with OpenMP
# pragmas; without the flag the kernel silently runs on one thread.
# -march=native is safe because the kernel is always compiled on the machine that
# runs it; the build name includes this CPU's feature flags (see _cpu_signature),
# so a cache shared with a different CPU rebuilds instead of faulting.
# -fno-trapping-math: the kernels never read floating-point exception flags; without
# it GCC (12) will not if-convert the select in LeakyReLU's derivative, so GATv2's
# backward channel loops stay scalar and branchy even under `omp simd`. It permits
# no reassociation and keeps NaN and inf semantics: results are unchanged.
_CFLAGS = ["-O3", "-fopenmp", "-march=native", "-fno-trapping-math"]
# GRAPHATTN_KERNEL_CHECKS=1 builds (and caches separately) a kernel that bounds-checks
# every index it reads and raises instead of reading out of range: for tests and for
# hunting a suspected validation gap, at some cost in speed.
if os.environ.get("GRAPHATTN_KERNEL_CHECKS") == "1":
    _CFLAGS.append("-DGRAPHATTN_BOUNDS_CHECK")
_LDFLAGS = ["-fopenmp"]
_LOCK = threading.Lock()
_EXT = None
_EXT_ERROR: Optional[str] = None


def _cpu_signature() -> bytes:
    import platform

    sig = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features", "model name")):
                    sig += line
    except OSError:
        pass
    return sig.encode()


def load_extension(verbose: bool = False):
    """Compile (once) and return the native module; raises if it cannot be built."""
    global _EXT
    if _EXT is None:
        with _LOCK:
            if _EXT is None:
                from torch.utils.cpp_extension import load

                # cpp_extension runs `ninja` from PATH; a venv's bin (where pip puts
                # it) is not on PATH when the venv's python is called directly.
                bindir = os.path.dirname(sys.executable)
                if bindir not in os.environ.get("PATH", "").split(os.pathsep):
                    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")

                # The name covers source and flags, so a change of either rebuilds.
                key = (_SOURCE.read_bytes() + _HEADER.read_bytes() + " ".join(_CFLAGS + _LDFLAGS).encode()
                       + _cpu_signature())
                name = "graphattn_cpu_" + hashlib.sha1(key).hexdigest()[:10]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _EXT = load(name=name, sources=[str(_SOURCE)], extra_cflags=_CFLAGS, extra_ldflags=_LDFLAGS,
                                verbose=verbose)
    return _EXT


def is_available() -> bool:
    """Whether the native CPU kernel is (or can be) built here. Set
    ``GRAPHATTN_DISABLE_CPU_KERNEL=1`` to turn it off."""
    return unavailable_reason() is None


def unavailable_reason() -> Optional[str]:
    """``None`` when the native kernel is (or can be) built here, else why not. The
    first failed build warns once, briefly; :func:`build_error` has the full log."""
    global _EXT_ERROR
    if os.environ.get("GRAPHATTN_DISABLE_CPU_KERNEL") == "1":
        return "turned off by GRAPHATTN_DISABLE_CPU_KERNEL=1"
    if _EXT is not None:
        return None
    if _EXT_ERROR is None:
        try:
            load_extension()
            return None
        except Exception as exc:  # no compiler, no ninja, ...
            _EXT_ERROR = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"graphattn: the fused CPU kernel could not be built ({_summary(_EXT_ERROR)}); the reference "
                "backend runs instead. graphattn.ops.cpu.build_error() has the compiler's output; set "
                "GRAPHATTN_DISABLE_CPU_KERNEL=1 to skip the build and this warning.",
                stacklevel=3,
            )
    return f"the native kernel could not be built ({_summary(_EXT_ERROR)})"


def build_error() -> Optional[str]:
    """The full error of the failed kernel build, if one failed."""
    return _EXT_ERROR


def _summary(error: str) -> str:
    """The first line of a (possibly long, ninja-log) build error."""
    first = error.strip().splitlines()[0] if error.strip() else error
    return first[:200]


# ----------------------------------------------------------------- custom ops
# The version in the fused ops' names is bumped whenever their outputs or their autograd
# formula change (v2: per-row (max, log normaliser) instead of a log-sum-exp; v3: the
# backward takes the output, not the delta): torch.compile's on-disk cache keys graphs by
# op name, and would otherwise replay a graph built for the old ones.
# Absent optional inputs are passed as empty tensors (numel 0).

# The forward op also takes the graph's transposed CSR (colptr, row_by_src, eid):
# unused by the forward itself, it is what the backward traverses. The tensor arguments
# follow ._fused's calling convention (dst_term, src_term, value, edge_score_term,
# edge_bias, edge_value, att).
@torch.library.custom_op("graphattn::cpu_fused_forward_v3", mutates_args=())
def _forward_op(
    kind: int, rowptr: Tensor, col: Tensor, colptr: Tensor, row_by_src: Tensor, eid: Tensor, num_dst: int,
    dst_term: Tensor, src_term: Tensor, value: Tensor, edge_score_term: Tensor, edge_bias: Tensor,
    edge_value: Tensor, att: Tensor, slope: float, scale: float, p: float, seed: Tensor,
) -> Tuple[Tensor, Tensor]:
    out, stats = load_extension().forward(kind, rowptr, col, num_dst, dst_term, src_term, value, edge_score_term,
                                          edge_bias, edge_value, att, slope, scale, p, seed)
    return out, stats


@_forward_op.register_fake
def _(kind, rowptr, col, colptr, row_by_src, eid, num_dst, dst_term, src_term, value, edge_score_term, edge_bias,
      edge_value, att, slope, scale, p, seed):
    H, Cv = value.shape[1], value.shape[2]
    return value.new_empty(num_dst, H, Cv), value.new_empty(num_dst, H, 2)  # out, per-row (max, log normaliser)


# The backward takes the forward's output for dout_dot_out[i, h] = sum_c d_out[i, h, c] *
# out[i, h, c] (FlashAttention's "delta"), which it computes itself (v3; v2 took the delta).
@torch.library.custom_op("graphattn::cpu_fused_backward_v3", mutates_args=())
def _backward_op(
    kind: int, rowptr: Tensor, col: Tensor, colptr: Tensor, row_by_src: Tensor, eid: Tensor, dst_term: Tensor,
    src_term: Tensor, value: Tensor, edge_score_term: Tensor, edge_bias: Tensor, edge_value: Tensor, att: Tensor,
    stats: Tensor, d_out: Tensor, out: Tensor, slope: float, scale: float, p: float, seed: Tensor,
) -> List[Tensor]:
    return list(load_extension().backward(kind, rowptr, col, colptr, row_by_src, eid, dst_term, src_term, value,
                                          edge_score_term, edge_bias, edge_value, att, stats, d_out, out,
                                          slope, scale, p, seed))


@_backward_op.register_fake
def _(kind, rowptr, col, colptr, row_by_src, eid, dst_term, src_term, value, edge_score_term, edge_bias, edge_value,
      att, stats, d_out, out, slope, scale, p, seed):
    datt = att.new_empty(att.shape) if score_kind(kind).weight == "att" else att.new_empty(0)
    return [dst_term.new_empty(dst_term.shape), src_term.new_empty(src_term.shape), value.new_empty(value.shape),
            edge_score_term.new_empty(edge_score_term.shape), edge_bias.new_empty(edge_bias.shape),
            edge_value.new_empty(edge_value.shape), datt]


@torch.library.custom_op("graphattn::cpu_fused_weights_v2", mutates_args=())
def _weights_op(
    kind: int, rowptr: Tensor, col: Tensor, stats: Tensor, dst_term: Tensor, src_term: Tensor, value: Tensor,
    edge_score_term: Tensor, edge_bias: Tensor, edge_value: Tensor, att: Tensor, slope: float, scale: float,
) -> Tensor:
    return load_extension().weights(kind, rowptr, col, stats, dst_term, src_term, value, edge_score_term, edge_bias,
                                    edge_value, att, slope, scale)


@_weights_op.register_fake
def _(kind, rowptr, col, stats, dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att, slope, scale):
    return value.new_empty(col.shape[0], src_term.shape[1])


def _setup_context(ctx, inputs, output):
    (kind, rowptr, col, colptr, row_by_src, eid, num_dst, dst_term, src_term, value, edge_score_term, edge_bias,
     edge_value, att, slope, scale, p, seed) = inputs
    out, stats = output
    ctx.kind, ctx.params = kind, (slope, scale, p)
    ctx.save_for_backward(rowptr, col, colptr, row_by_src, eid, dst_term, src_term, value, edge_score_term,
                          edge_bias, edge_value, att, out, stats, seed)
    ctx.mark_non_differentiable(stats)


def _backward(ctx, d_out, _d_stats):
    (rowptr, col, colptr, row_by_src, eid, dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att,
     out, stats, seed) = ctx.saved_tensors
    d_out = d_out.contiguous()
    slope, scale, p = ctx.params
    grads = _backward_op(
        ctx.kind, rowptr, col, colptr, row_by_src, eid, dst_term, src_term, value, edge_score_term, edge_bias,
        edge_value, att, stats, d_out, out, slope, scale, p, seed,
    )
    # d_dst_term, d_src_term, d_value, d_edge_score_term, d_edge_bias, d_edge_value, datt
    grads = [g if g.numel() else None for g in grads]
    return (None,) * 7 + tuple(grads) + (None,) * 4


_forward_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("graphattn::cpu_edge_softmax", mutates_args=())
def _edge_softmax_op(rowptr: Tensor, perm: Tensor, scores: Tensor) -> Tensor:
    return load_extension().edge_softmax_forward(rowptr, perm, scores)


@_edge_softmax_op.register_fake
def _(rowptr, perm, scores):
    return torch.empty_like(scores)


@torch.library.custom_op("graphattn::cpu_edge_softmax_backward", mutates_args=())
def _edge_softmax_backward_op(rowptr: Tensor, perm: Tensor, y: Tensor, grad: Tensor) -> Tensor:
    return load_extension().edge_softmax_backward(rowptr, perm, y, grad)


@_edge_softmax_backward_op.register_fake
def _(rowptr, perm, y, grad):
    return torch.empty_like(y)


def _es_setup(ctx, inputs, output):
    rowptr, perm, _ = inputs
    ctx.save_for_backward(rowptr, perm, output)  # the output only (DGL's closed form)


def _es_backward(ctx, grad):
    rowptr, perm, y = ctx.saved_tensors
    return None, None, _edge_softmax_backward_op(rowptr, perm, y, grad.contiguous())


_edge_softmax_op.register_autograd(_es_backward, setup_context=_es_setup)


def _destination_index(rowptr: Tensor, perm: Tensor) -> Tensor:
    """Each edge's destination, in the caller's edge order."""
    row = torch.repeat_interleave(torch.arange(rowptr.numel() - 1, device=rowptr.device), rowptr.diff())
    if not perm.numel():
        return row
    index = torch.empty_like(row)
    index[perm] = row
    return index


def _row_sums(index: Tensor, n: int, t: Tensor) -> Tensor:
    """Per-destination sums of ``t``, broadcast back to the edges."""
    return t.new_zeros((n,) + tuple(t.shape[1:])).index_add_(0, index, t).index_select(0, index)


def _esb_setup(ctx, inputs, output):
    rowptr, perm, y, grad = inputs
    ctx.save_for_backward(rowptr, perm, y, grad)


def _esb_backward(ctx, u):
    # ds = y * (g - S), S = rowsum(g * y):  dL/dg = y * (u - T),  dL/dy = u * (g - S) - g * T,
    # with T = rowsum(u * y).
    rowptr, perm, y, g = ctx.saved_tensors
    u = u.contiguous()
    d_g = _edge_softmax_backward_op(rowptr, perm, y, u)
    index, n = _destination_index(rowptr, perm), rowptr.numel() - 1
    d_y = u * (g - _row_sums(index, n, g * y)) - g * _row_sums(index, n, u * y)
    return None, None, d_y, d_g


_edge_softmax_backward_op.register_autograd(_esb_backward, setup_context=_esb_setup)


def edge_softmax(scores: Tensor, index: Tensor, num_segments: int, graph=None) -> Tensor:
    """Per-destination softmax over a Graph's CSR rows; scores stay in the caller's order."""
    perm = graph.perm if graph.perm is not None else graph.rowptr.new_empty(0)
    return _edge_softmax_op(graph.rowptr, perm, upcast(scores).contiguous()).to(scores.dtype)


def edge_softmax_decline(device=None, dtype=None, graph=None, **_) -> Optional[str]:
    if graph is None:
        return "it needs a Graph (CSR rows), not a bare destination index"
    return decline(device=device, dtype=dtype)


# ------------------------------------------------------------------ backend
def _run(kind, graph, dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att, slope, scale, dropout,
         training, need_weights):
    dtype = value.dtype
    value = upcast(value)
    empty = value.new_empty(0)
    tensors = (dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att)
    t = [empty if x is None else upcast(x).contiguous() for x in tensors]
    p = float(dropout) if (training and dropout > 0) else 0.0
    seed = torch.randint(0, 2**62, (), dtype=torch.long) if p > 0 else torch.zeros((), dtype=torch.long)
    if torch.is_grad_enabled() and any(x.requires_grad for x in t):
        transpose = graph.transpose_csr()  # cached on the graph
    else:
        transpose = (graph.rowptr.new_empty(0),) * 3
    out, stats = _forward_op(kind, graph.rowptr, graph.col, *transpose, graph.num_dst, *t,
                           float(slope), float(scale), p, seed)
    alpha = None
    if need_weights:
        alpha = _weights_op(kind, graph.rowptr, graph.col, stats.detach(), *[x.detach() for x in t],
                            float(slope), float(scale)).to(dtype)
    return out.to(dtype), alpha


gat, gatv2, dot_product = backend_functions(_run)


def decline(device=None, dtype=None, op=None, channels=None, has_edge_mask=False, **_) -> Optional[str]:
    """Why the native kernel cannot run a call (``None``: it can)."""
    if has_edge_mask:
        return MASK_REASON
    if device is None or torch.device(device).type != "cpu":
        return f"it runs on CPU tensors, the inputs are on {device}"
    if dtype not in FLOAT_DTYPES:
        return f"dtype {dtype} is not a floating-point type it computes in"
    kind = score_kind(OP_KINDS[op]) if op in OP_KINDS else None
    if kind is not None and kind.holds_channel_buffer and channels is not None and channels > MAX_BUFFERED_CHANNELS:
        return f"{kind.name} with {channels} channels per head; the kernel holds at most {MAX_BUFFERED_CHANNELS}"
    return unavailable_reason()
