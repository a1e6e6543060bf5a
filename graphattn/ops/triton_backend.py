"""The Triton backend: fused forward and backward kernels for GAT, GATv2 and
dot-product attention (see :mod:`graphattn.ops.triton_kernels`).

Chosen automatically for CUDA tensors when ``triton`` is installed. On CPU it runs
only when forced (``backend="triton"``) with ``TRITON_INTERPRET=1`` set before the
first use, which is how the test suite checks it against ``reference``.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from ._dtypes import FLOAT_DTYPES, compute_dtype
from ._fused import DOT, GAT, GATV2, MASK_REASON, backend_functions  # noqa: F401


def is_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


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
    if dev.type != "cpu" or not forced or not _interpreting():
        return "it runs on CUDA tensors (on CPU only when forced with TRITON_INTERPRET=1 set before import)"
    return None


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _kernels():
    from . import triton_kernels

    return triton_kernels


def _acc(dtype):
    import triton.language as tl

    return tl.float64 if compute_dtype(dtype) == torch.float64 else tl.float32


def _params(slope: float, scale: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([slope, scale], dtype=compute_dtype(like.dtype), device=like.device)


def _block_e() -> int:
    return 16 if _interpreting() else 32


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, graph, slope, scale, p, seed, A, B, V, EF, EB, EV, att):
        k = _kernels()
        Nd, H = graph.num_dst, B.size(1)
        F = 1 if kind == GAT else B.size(2)
        Cv = V.size(2)
        acc_dtype = compute_dtype(V.dtype)
        out = torch.empty(Nd, H, Cv, device=V.device, dtype=V.dtype)
        lse = torch.empty(Nd, H, device=V.device, dtype=acc_dtype)
        dummy = V
        if Nd and H:
            k.fused_forward_kernel[(Nd, H)](
                kind, graph.rowptr, graph.col, A if A is not None else dummy, B, V,
                EF if EF is not None else dummy, EB if EB is not None else dummy,
                EV if EV is not None else dummy, att if att is not None else dummy, out, lse,
                H, F, Cv, _params(slope, scale, V), p, seed,
                HAS_A=A is not None, HAS_EF=EF is not None, HAS_EB=EB is not None, HAS_EV=EV is not None,
                DROPOUT=p > 0, BLOCK_E=_block_e(), BLOCK_F=_pow2(F), BLOCK_C=_pow2(Cv), ACC=_acc(V.dtype),
            )
        ctx.kind, ctx.graph, ctx.params = kind, graph, (slope, scale, p, seed)
        ctx.present = [t is not None for t in (A, B, V, EF, EB, EV, att)]
        ctx.save_for_backward(A, B, V, EF, EB, EV, att, out, lse)
        if any(ctx.needs_input_grad):
            graph.transpose_csr()  # cached on the graph; built outside the backward
        return out, lse

    @staticmethod
    def backward(ctx, d_out, _d_lse):
        k = _kernels()
        A, B, V, EF, EB, EV, att, out, lse = ctx.saved_tensors
        graph = ctx.graph
        kind = ctx.kind
        slope, scale, p, seed = ctx.params
        colptr, row_by_src, eid = graph.transpose_csr()
        Nd, Ns, E, H = graph.num_dst, graph.num_src, graph.num_edges, B.size(1)
        F = 1 if kind == GAT else B.size(2)
        Cv = V.size(2)
        d_out = d_out.contiguous()
        Dm = (d_out.to(lse.dtype) * out.to(lse.dtype)).sum(-1).contiguous()
        dB = torch.empty_like(B)
        dV = torch.empty_like(V)
        dEF = torch.empty_like(EF) if EF is not None else None
        dEB = torch.empty_like(EB) if EB is not None else None
        dEV = torch.empty_like(EV) if EV is not None else None
        g = torch.empty(E, H, device=V.device, dtype=lse.dtype)
        dummy = V
        common = dict(HAS_A=A is not None, HAS_EF=EF is not None, HAS_EB=EB is not None, HAS_EV=EV is not None,
                      DROPOUT=p > 0, BLOCK_E=_block_e(), BLOCK_F=_pow2(F), BLOCK_C=_pow2(Cv), ACC=_acc(V.dtype))
        if Ns and H:
            k.fused_backward_src_kernel[(Ns, H)](
                kind, colptr, row_by_src, eid, A if A is not None else dummy, B, V,
                EF if EF is not None else dummy, EB if EB is not None else dummy,
                EV if EV is not None else dummy, att if att is not None else dummy, lse, d_out, Dm,
                dB, dV, dEF if dEF is not None else dummy, dEB if dEB is not None else dummy,
                dEV if dEV is not None else dummy, g, H, F, Cv, _params(slope, scale, V), p, seed, **common,
            )
        dA = datt = None
        if A is not None:
            dA = torch.empty_like(A)
            datt_rows = torch.zeros(Nd, H, F, device=V.device, dtype=lse.dtype) if kind == GATV2 else dummy
            if Nd and H:
                k.fused_backward_dst_kernel[(Nd, H)](
                    kind, graph.rowptr, graph.col, A, B, EF if EF is not None else dummy,
                    att if att is not None else dummy, g, dA, datt_rows, H, F, _params(slope, scale, V),
                    HAS_EF=EF is not None, BLOCK_E=_block_e(), BLOCK_F=_pow2(F), ACC=_acc(V.dtype),
                )
            if kind == GATV2:
                datt = datt_rows.sum(0).to(att.dtype)
        grads = [dA, dB, dV, dEF, dEB, dEV, datt]
        return (None,) * 6 + tuple(gr if present else None for gr, present in zip(grads, ctx.present))


def _weights(graph, lse, kind, A, B, EF, EB, att, slope, scale):
    """alpha in CSR order, recomputed from lse with the reference score formula
    (an E x H tensor, only when the caller asks for the weights)."""
    import torch.nn.functional as Fn

    acc = lse.dtype
    if kind == GAT:
        s = B.to(acc)[graph.col] + (A.to(acc)[graph.row] if A is not None else 0)
        s = Fn.leaky_relu(s + (EF.to(acc) if EF is not None else 0), slope)
    elif kind == GATV2:
        z = B.to(acc)[graph.col] + A.to(acc)[graph.row] + (EF.to(acc) if EF is not None else 0)
        s = (Fn.leaky_relu(z, slope) * att.to(acc)).sum(-1)
    else:
        kk = B.to(acc)[graph.col] + (EF.to(acc) if EF is not None else 0)
        s = (A.to(acc)[graph.row] * kk).sum(-1) * scale + (EB.to(acc) if EB is not None else 0)
    L = lse[graph.row]
    alpha = torch.where((L == float("-inf")) | (s == float("-inf")), torch.zeros_like(s), torch.exp(s - L))
    return torch.where(torch.isnan(L), L, alpha)  # a NaN normaliser: the whole row is NaN


def _run(kind, graph, A, B, V, EF, EB, EV, att, slope, scale, dropout, training, need_weights):
    t = [None if x is None else x.contiguous() for x in (A, B, V, EF, EB, EV, att)]
    p = float(dropout) if (training and dropout > 0) else 0.0
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if p > 0 else 0
    out, lse = _Fused.apply(kind, graph, float(slope), float(scale), p, seed, *t)
    alpha: Optional[torch.Tensor] = None
    if need_weights:
        with torch.no_grad():
            A_, B_, _, EF_, EB_, _, att_ = t
            alpha = _weights(graph, lse, kind, A_, B_, EF_, EB_, att_, float(slope), float(scale)).to(V.dtype)
    return out, alpha


gat, gatv2, dot_product = backend_functions(_run)
