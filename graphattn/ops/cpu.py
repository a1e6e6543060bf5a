"""The fused CPU backend: a native kernel (C++, ATen's thread pool) built on first use.

Forward makes two passes over each destination's CSR row (the row's scores and their
per-head max into a small per-row buffer, then the exponentials and the weighted sum
of values); it keeps only the output and, per node and head, the row's max and log
normaliser (kept apart: summed into one log-sum-exp they round badly for huge
logits). Backward recomputes the weights from them: a pass over the transposed graph (per source, no atomics, so
results are deterministic) and a pass over rows. No ``E x H x C`` tensor is ever
built; the only per-edge buffer is one ``E x H`` score gradient in backward.

The kernels are registered as ``torch.library`` custom ops (``graphattn::cpu_*_<source hash>``)
with shape functions and an autograd formula, so ``torch.compile`` traces through
them without a graph break. The extension is compiled with
``torch.utils.cpp_extension`` the first time a call is about to run on it (the
backend's ``prepare``; about 40 s, cached in ``$TORCH_EXTENSIONS_DIR``). Asking whether
it takes a call (:func:`decline`) builds nothing: it answers from what is known without
a build (switched off, a failed build, no compiler or ``ninja``). If the build fails,
the backend reports itself unavailable and the dispatcher falls back to ``reference``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from .. import _env
from ._dtypes import FLOAT_DTYPES, upcast
from ._fused import (
    DOT,  # noqa: F401  (re-exported for the tests)
    GAT,  # noqa: F401
    GATV2,  # noqa: F401
    MASK_REASON,
    MAX_BUFFERED_CHANNELS,
    OP_KINDS,
    backend_functions,
    score_kind,
    versioned_op_name,
)

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
_LDFLAGS = ["-fopenmp"]
_LOCK = threading.Lock()
_EXT = None
_EXT_ERROR: Optional[str] = None
_WARNED_MISSING_TOOLS = False
# cpp_extension runs `ninja` from PATH; a venv's bin (where pip puts it) is not on PATH
# when the venv's python is called directly, so the build adds it for its duration.
_BINDIR = os.path.dirname(sys.executable)


def _cflags() -> List[str]:
    """The compiler flags of this process's build (:func:`graphattn._env.kernel_checks`
    adds the bounds checks, at some cost in speed)."""
    return _CFLAGS + (["-DGRAPHATTN_BOUNDS_CHECK"] if _env.kernel_checks() else [])


def _search_path() -> str:
    """PATH as the build sees it: the venv's bin first, unless it is on PATH already."""
    path = os.environ.get("PATH", "")
    return path if _BINDIR in path.split(os.pathsep) else _BINDIR + os.pathsep + path


def _missing_tools() -> Optional[str]:
    """What the build needs that is not here (a C++ compiler, ``ninja``), or ``None``."""
    cxx = os.environ.get("CXX", "c++")  # what torch.utils.cpp_extension compiles with
    if shutil.which(cxx, path=_search_path()) is None:
        return f"no C++ compiler {cxx!r} on PATH"
    if shutil.which("ninja", path=_search_path()) is None:
        return "no ninja on PATH (pip install ninja)"
    return None


# Looked up once, at import (a PATH search, nothing imported): the decline runs inside
# layers that torch.compile traces whole, where a search's filesystem calls do not
# belong, so it reads a constant, as triton_backend does for ``find_spec``.
_MISSING_TOOLS = _missing_tools()


def _kernel_source() -> bytes:
    """The native kernel's source: the C++ file and the generated header it includes."""
    return _SOURCE.read_bytes() + _HEADER.read_bytes()


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


@contextmanager
def _build_path() -> Iterator[None]:
    """PATH with the venv's bin on it for the block (the build's), as it was after."""
    before, during = os.environ.get("PATH"), _search_path()
    os.environ["PATH"] = during
    try:
        yield
    finally:
        if os.environ.get("PATH") == during:  # unless something else changed it meanwhile
            if before is None:
                del os.environ["PATH"]
            else:
                os.environ["PATH"] = before


def load_extension(verbose: bool = False):
    """Compile (once) and return the native module; raises if it cannot be built."""
    global _EXT
    if _EXT is None:
        with _LOCK:
            if _EXT is None:
                from torch.utils.cpp_extension import load

                # The name covers source and flags, so a change of either rebuilds.
                cflags = _cflags()
                key = _kernel_source() + " ".join(cflags + _LDFLAGS).encode() + _cpu_signature()
                name = "graphattn_cpu_" + hashlib.sha1(key).hexdigest()[:10]
                with warnings.catch_warnings(), _build_path():
                    warnings.simplefilter("ignore")
                    _EXT = load(
                        name=name, sources=[str(_SOURCE)], extra_cflags=cflags, extra_ldflags=_LDFLAGS, verbose=verbose
                    )
    return _EXT


def is_available() -> bool:
    """Whether the native CPU kernel is (or can be) built here; builds it to find out,
    unless that is already known. Set ``GRAPHATTN_DISABLE_CPU_KERNEL=1`` to turn it off."""
    return unavailable_reason() is None


def unavailable_reason() -> Optional[str]:
    """``None`` when the native kernel is (or can be) built here, else why not; builds it
    to find out, unless that is already known. The first failed build warns once,
    briefly; :func:`build_error` has the full log."""
    known = known_reason()
    return known if known is not None else prepare()


def known_reason() -> Optional[str]:
    """Why the native kernel cannot run here, as far as that is known without building
    it (``None``: it is built, or a build may work). No side effects but one warning."""
    if _env.cpu_kernel_disabled():
        return "turned off by GRAPHATTN_DISABLE_CPU_KERNEL=1"
    if _EXT is not None:
        return None
    if _EXT_ERROR is not None:
        return _failed_build_reason()
    if _MISSING_TOOLS is not None:
        _warn_missing_tools()
        return f"the native kernel could not be built ({_MISSING_TOOLS})"
    return None


def prepare() -> Optional[str]:
    """Build (once) the native kernel: ``None`` when it is built, else why it could not
    be (the first failure warns; the backend's ``prepare``, called only before a run)."""
    global _EXT_ERROR
    if _EXT is not None:
        return None
    if _EXT_ERROR is None:
        try:
            load_extension()
            return None
        except Exception as exc:  # no compiler, no ninja, ...
            _EXT_ERROR = f"{type(exc).__name__}: {exc}"
            _warn_unbuilt(_summary(_EXT_ERROR), "graphattn.ops.cpu.build_error() has the compiler's output")
    return _failed_build_reason()


def _failed_build_reason() -> str:
    return f"the native kernel could not be built ({_summary(_EXT_ERROR)})"


def _warn_missing_tools() -> None:
    global _WARNED_MISSING_TOOLS
    if not _WARNED_MISSING_TOOLS:
        _WARNED_MISSING_TOOLS = True
        _warn_unbuilt(_MISSING_TOOLS, "It needs a C++ compiler with OpenMP and ninja")


def _warn_unbuilt(why: str, hint: str) -> None:
    """The one warning that the kernel cannot be built and ``reference`` runs instead."""
    warnings.warn(
        f"graphattn: the fused CPU kernel could not be built ({why}); the reference backend runs instead. "
        f"{hint}; set GRAPHATTN_DISABLE_CPU_KERNEL=1 to skip the build and this warning.",
        stacklevel=5,
    )


def build_error() -> Optional[str]:
    """The full error of the failed kernel build, if one failed."""
    return _EXT_ERROR


def _summary(error: str) -> str:
    """The first line of a (possibly long, ninja-log) build error."""
    first = error.strip().splitlines()[0] if error.strip() else error
    return first[:200]


# ----------------------------------------------------------------- custom ops
# Every op's name ends in a hash of the kernel's source and of this file (the ops'
# schemas, shape functions and autograd formula): _fused.versioned_op_name's rule.
_OPS_SOURCE = _kernel_source() + Path(__file__).read_bytes()


def _op_name(op: str) -> str:
    """The ``torch.library`` name of custom op ``op`` of this kernel version."""
    return versioned_op_name("cpu", op, _OPS_SOURCE)


# Absent optional inputs are passed as empty tensors (numel 0).


# The forward op also takes the graph's transposed CSR (colptr, row_by_src, eid):
# unused by the forward itself, it is what the backward traverses. The tensor arguments
# follow ._fused's calling convention (dst_term, src_term, value, edge_score_term,
# edge_bias, edge_value, att).
@torch.library.custom_op(_op_name("fused_forward"), mutates_args=())
def _forward_op(
    kind: int,
    rowptr: Tensor,
    col: Tensor,
    colptr: Tensor,
    row_by_src: Tensor,
    eid: Tensor,
    num_dst: int,
    dst_term: Tensor,
    src_term: Tensor,
    value: Tensor,
    edge_score_term: Tensor,
    edge_bias: Tensor,
    edge_value: Tensor,
    att: Tensor,
    slope: float,
    scale: float,
    p: float,
    seed: Tensor,
) -> Tuple[Tensor, Tensor]:
    out, stats = load_extension().forward(
        kind,
        rowptr,
        col,
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
    )
    return out, stats


@_forward_op.register_fake
def _(
    kind,
    rowptr,
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
):
    H, Cv = value.shape[1], value.shape[2]
    return value.new_empty(num_dst, H, Cv), value.new_empty(num_dst, H, 2)  # out, per-row (max, log normaliser)


# The backward takes the forward's output for dout_dot_out[i, h] = sum_c d_out[i, h, c] *
# out[i, h, c] (FlashAttention's "delta"), which it computes itself.
@torch.library.custom_op(_op_name("fused_backward"), mutates_args=())
def _backward_op(
    kind: int,
    rowptr: Tensor,
    col: Tensor,
    colptr: Tensor,
    row_by_src: Tensor,
    eid: Tensor,
    dst_term: Tensor,
    src_term: Tensor,
    value: Tensor,
    edge_score_term: Tensor,
    edge_bias: Tensor,
    edge_value: Tensor,
    att: Tensor,
    stats: Tensor,
    d_out: Tensor,
    out: Tensor,
    slope: float,
    scale: float,
    p: float,
    seed: Tensor,
) -> List[Tensor]:
    return list(
        load_extension().backward(
            kind,
            rowptr,
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
            stats,
            d_out,
            out,
            slope,
            scale,
            p,
            seed,
        )
    )


@_backward_op.register_fake
def _(
    kind,
    rowptr,
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
    stats,
    d_out,
    out,
    slope,
    scale,
    p,
    seed,
):
    datt = att.new_empty(att.shape) if score_kind(kind).weight == "att" else att.new_empty(0)
    return [
        dst_term.new_empty(dst_term.shape),
        src_term.new_empty(src_term.shape),
        value.new_empty(value.shape),
        edge_score_term.new_empty(edge_score_term.shape),
        edge_bias.new_empty(edge_bias.shape),
        edge_value.new_empty(edge_value.shape),
        datt,
    ]


@torch.library.custom_op(_op_name("fused_weights"), mutates_args=())
def _weights_op(
    kind: int,
    rowptr: Tensor,
    col: Tensor,
    stats: Tensor,
    dst_term: Tensor,
    src_term: Tensor,
    value: Tensor,
    edge_score_term: Tensor,
    edge_bias: Tensor,
    edge_value: Tensor,
    att: Tensor,
    slope: float,
    scale: float,
) -> Tensor:
    return load_extension().weights(
        kind, rowptr, col, stats, dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att, slope, scale
    )


@_weights_op.register_fake
def _(kind, rowptr, col, stats, dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att, slope, scale):
    return value.new_empty(col.shape[0], src_term.shape[1])


def _setup_context(ctx, inputs, output):
    (
        kind,
        rowptr,
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
    out, stats = output
    ctx.kind, ctx.params = kind, (slope, scale, p)
    ctx.save_for_backward(
        rowptr,
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
        out,
        stats,
        seed,
    )
    ctx.mark_non_differentiable(stats)


def _backward(ctx, d_out, _d_stats):
    (
        rowptr,
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
        out,
        stats,
        seed,
    ) = ctx.saved_tensors
    d_out = d_out.contiguous()
    slope, scale, p = ctx.params
    grads = _backward_op(
        ctx.kind,
        rowptr,
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
        stats,
        d_out,
        out,
        slope,
        scale,
        p,
        seed,
    )
    # d_dst_term, d_src_term, d_value, d_edge_score_term, d_edge_bias, d_edge_value, datt
    grads = [g if g.numel() else None for g in grads]
    return (None,) * 7 + tuple(grads) + (None,) * 4


_forward_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op(_op_name("edge_softmax"), mutates_args=())
def _edge_softmax_op(rowptr: Tensor, perm: Tensor, scores: Tensor) -> Tensor:
    return load_extension().edge_softmax_forward(rowptr, perm, scores)


@_edge_softmax_op.register_fake
def _(rowptr, perm, scores):
    return torch.empty_like(scores)


@torch.library.custom_op(_op_name("edge_softmax_backward"), mutates_args=())
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
    out, stats = _forward_op(
        kind, graph.rowptr, graph.col, *transpose, graph.num_dst, *t, float(slope), float(scale), p, seed
    )
    alpha = None
    if need_weights:
        alpha = _weights_op(
            kind, graph.rowptr, graph.col, stats.detach(), *[x.detach() for x in t], float(slope), float(scale)
        ).to(dtype)
    return out.to(dtype), alpha


# The backend's function of every fused op, by op name (ops/__init__ registers them).
FUNCTIONS = backend_functions(_run)


def decline(device=None, dtype=None, op=None, channels=None, has_edge_mask=False, **_) -> Optional[str]:
    """Why the native kernel cannot run a call (``None``: it can, once built). Builds
    nothing: whether a build works is the backend's :func:`prepare`."""
    if has_edge_mask:
        return MASK_REASON
    if device is None or torch.device(device).type != "cpu":
        return f"it runs on CPU tensors, the inputs are on {device}"
    if dtype not in FLOAT_DTYPES:
        return f"dtype {dtype} is not a floating-point type it computes in"
    kind = score_kind(OP_KINDS[op]) if op in OP_KINDS else None
    if kind is not None and kind.holds_channel_buffer and channels is not None and channels > MAX_BUFFERED_CHANNELS:
        return f"{kind.name} with {channels} channels per head; the kernel holds at most {MAX_BUFFERED_CHANNELS}"
    return known_reason()
