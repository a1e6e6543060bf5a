"""The Triton backend: fused forward and backward kernels for GAT, GATv2 and
dot-product attention (see :mod:`graphattn.ops.triton_kernels`).

Chosen automatically for CUDA tensors when ``triton`` is installed. On CPU it runs
only when forced (``backend="triton"``) with ``TRITON_INTERPRET=1`` set before the
first use, which is how the test suite checks it against ``reference``.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from .. import _env
from . import reference
from ._dtypes import FLOAT_DTYPES, compute_dtype
from ._fused import DOT, GAT, GATV2, MASK_REASON, backend_functions, score_kind, triton_traits  # noqa: F401
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


class _Fused(torch.autograd.Function):
    # Tensor arguments: the calling convention of ._fused (dst_term, src_term, value,
    # edge_score_term, edge_bias, edge_value, att); absent ones are None.
    @staticmethod
    def forward(ctx, code, graph, slope, scale, p, seed, dst_term, src_term, value, edge_score_term, edge_bias,
                edge_value, att):
        Nd, H = graph.num_dst, src_term.size(1)
        F = 1 if score_kind(code).scalar else src_term.size(2)
        Cv = value.size(2)
        acc_dtype = compute_dtype(value.dtype)
        out = torch.empty(Nd, H, Cv, device=value.device, dtype=value.dtype)
        stats = torch.empty(Nd, H, 2, device=value.device, dtype=acc_dtype)  # (max, log normaliser)
        dummy = value
        degree = degree_bucket(graph.num_edges, Nd)
        if Nd and H:
            _launch(
                "fused_forward_kernel", (Nd, H), graph.rowptr, graph.col, _or(dst_term, dummy), src_term, value,
                _or(edge_score_term, dummy), _or(edge_bias, dummy), _or(edge_value, dummy), _or(att, dummy), out, stats,
                H, F, Cv, _params(slope, scale, value), p, seed,
                HAS_DST_TERM=dst_term is not None, HAS_EDGE_SCORE_TERM=edge_score_term is not None,
                HAS_EDGE_BIAS=edge_bias is not None, HAS_EDGE_VALUE=edge_value is not None,
                DROPOUT=p > 0, BLOCK_F=_pow2(F), BLOCK_C=_pow2(Cv), ACC=_acc(value.dtype), degree=degree,
                **triton_traits(code),
            )
        ctx.kind, ctx.graph, ctx.params = code, graph, (slope, scale, p, seed)
        inputs = (dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att)
        ctx.present = [t is not None for t in inputs]
        ctx.save_for_backward(*inputs, out, stats)
        if any(ctx.needs_input_grad):
            graph.transpose_csr()  # cached on the graph; built outside the backward
        return out, stats

    @staticmethod
    def backward(ctx, d_out, _d_stats):
        dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att, out, stats = ctx.saved_tensors
        graph = ctx.graph
        code = ctx.kind
        traits = triton_traits(code)
        slope, scale, p, seed = ctx.params
        colptr, row_by_src, eid = graph.transpose_csr()
        Nd, Ns, E, H = graph.num_dst, graph.num_src, graph.num_edges, src_term.size(1)
        F = 1 if score_kind(code).scalar else src_term.size(2)
        Cv = value.size(2)
        d_out = d_out.contiguous()
        # FlashAttention's "delta": sum over channels of d_out * out, per destination and head
        dout_dot_out = (d_out.to(stats.dtype) * out.to(stats.dtype)).sum(-1).contiguous()
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(dout_dot_out).all()):
            dout_dot_out = _exact_nonfinite_delta(dout_dot_out, d_out, ctx, code, graph)
        d_src_term = torch.empty_like(src_term)
        d_value = torch.empty_like(value)
        d_edge_score_term = torch.empty_like(edge_score_term) if edge_score_term is not None else None
        d_edge_bias = torch.empty_like(edge_bias) if edge_bias is not None else None
        d_edge_value = torch.empty_like(edge_value) if edge_value is not None else None
        g = torch.empty(E, H, device=value.device, dtype=stats.dtype)
        dummy = value
        common = dict(HAS_DST_TERM=dst_term is not None, HAS_EDGE_SCORE_TERM=edge_score_term is not None,
                      HAS_EDGE_BIAS=edge_bias is not None, HAS_EDGE_VALUE=edge_value is not None,
                      DROPOUT=p > 0, BLOCK_F=_pow2(F), BLOCK_C=_pow2(Cv), ACC=_acc(value.dtype),
                      degree=degree_bucket(E, Ns), **traits)
        if Ns and H:
            _launch(
                "fused_backward_src_kernel", (Ns, H), colptr, row_by_src, eid, _or(dst_term, dummy), src_term, value,
                _or(edge_score_term, dummy), _or(edge_bias, dummy), _or(edge_value, dummy), _or(att, dummy),
                stats, d_out, dout_dot_out,
                d_src_term, d_value, _or(d_edge_score_term, dummy), _or(d_edge_bias, dummy), _or(d_edge_value, dummy),
                g, H, F, Cv, _params(slope, scale, value), p, seed, **common,
            )
        d_dst_term = datt = None
        if dst_term is not None:
            d_dst_term = torch.empty_like(dst_term)
            has_att = score_kind(code).weight == "att"
            datt_rows = torch.zeros(Nd, H, F, device=value.device, dtype=stats.dtype) if has_att else dummy
            if Nd and H:
                _launch(
                    "fused_backward_dst_kernel", (Nd, H), graph.rowptr, graph.col, dst_term, src_term,
                    _or(edge_score_term, dummy), _or(att, dummy), g, d_dst_term, datt_rows,
                    H, F, _params(slope, scale, value),
                    HAS_EDGE_SCORE_TERM=edge_score_term is not None, BLOCK_F=_pow2(F),
                    ACC=_acc(value.dtype), degree=degree_bucket(E, Nd), **traits,
                )
            if has_att:
                datt = datt_rows.sum(0).to(att.dtype)
        grads = [d_dst_term, d_src_term, d_value, d_edge_score_term, d_edge_bias, d_edge_value, datt]
        return (None,) * 6 + tuple(gr if present else None for gr, present in zip(grads, ctx.present))


def _dropout_scale(E: int, H: int, p: float, seed: int, like: torch.Tensor) -> torch.Tensor:
    """The ``[E, H]`` dropout multipliers the fused kernels drew (CSR order); ones without dropout."""
    keep = torch.ones(E, H, device=like.device, dtype=compute_dtype(like.dtype))
    if p > 0 and E * H:
        block = 1024
        _kernels().dropout_scale_kernel[(-(-E * H // block),)](keep, E * H, H, p, seed, ACC=_acc(like.dtype),
                                                                      BLOCK=block)
    return keep


def _exact_nonfinite_delta(delta, d_out, ctx, code, graph):
    """The backward's delta ``<d_out[i, h], out[i, h]>`` where it is finite; elsewhere (an
    inf or NaN in d_out or out) the row sum the reference forms,
    ``sum_e alpha_e keep_e <d_out[i, h], message e>``: with an inf in d_out the two differ
    (+-inf against NaN) and every score gradient of the row inherits the difference."""
    dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att, _, stats = ctx.saved_tensors
    slope, scale, p, seed = ctx.params
    acc = stats.dtype
    alpha = _weights(graph, stats, code, dst_term, src_term, edge_score_term, edge_bias, att, slope, scale)
    message = value[graph.col].to(acc)
    if edge_value is not None:
        message = message + edge_value.to(acc)
    d_message = (d_out[graph.row].to(acc) * message).sum(-1)
    keep = _dropout_scale(graph.num_edges, delta.size(1), p, seed, value)
    exact = torch.zeros_like(delta).index_add_(0, graph.row, alpha * keep * d_message)
    return torch.where(torch.isfinite(delta), delta, exact).contiguous()


def _weights(graph, stats, kind, dst_term, src_term, edge_score_term, edge_bias, att, slope, scale):
    """alpha in CSR order, recomputed from the saved stats with the reference's score formula
    for the kind (an E x H tensor, for the returned weights and the non-finite delta)."""
    s = reference.kind_scores(kind, graph, dst_term, src_term, edge_score_term, edge_bias, att, slope, scale,
                              dtype=stats.dtype)
    return weights_from_stats(s, stats.index_select(0, graph.row))


def _run(kind, graph, dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att, slope, scale, dropout,
         training, need_weights):
    t = [None if x is None else x.contiguous()
         for x in (dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att)]
    p = float(dropout) if (training and dropout > 0) else 0.0
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if p > 0 else 0
    out, stats = _Fused.apply(kind, graph, float(slope), float(scale), p, seed, *t)
    alpha: Optional[torch.Tensor] = None
    if need_weights:
        with torch.no_grad():
            dst_term, src_term, _, edge_score_term, edge_bias, _, att = t
            alpha = _weights(graph, stats, kind, dst_term, src_term, edge_score_term, edge_bias, att, float(slope),
                             float(scale)).to(value.dtype)
    return out, alpha


FUNCTIONS = backend_functions(_run)  # by op name
