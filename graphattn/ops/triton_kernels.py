"""Fused graph attention in Triton (GPU; on CPU under ``TRITON_INTERPRET=1`` for tests).

The same scores, outputs and gradients as the native CPU kernel
(``csrc/fused_attention.cpp``), by a different forward: the CPU kernel makes two passes
over a row through a per-row score buffer; here

* forward: one program per (destination ``i``, head ``h``) walks ``i``'s CSR row in
  blocks of ``BLOCK_E`` edges with an online softmax, and stores ``out[i, h]`` and the
  CPU kernel's statistics ``stats[i, h] = (row max m, log normaliser log l)`` only
  (their meaning and the weights they give: :func:`graphattn.ops.softmax.weights_from_stats`);
* backward: one program per (source ``j``, head ``h``) walks the transposed graph and
  recomputes each weight from ``stats`` (source-side and per-edge gradients, no float
  atomics), then one program per (destination, head) sums the destination-side
  gradients from the per-edge score gradient.

Scores have the general form stated in :mod:`graphattn.ops._fused` (its one statement).
The kernels take a kind as its traits (``SCALAR``, ``ADDS_DST``, ``WEIGHT``, ``ACT``
constexprs, from :func:`graphattn.ops._fused.triton_traits`) and ``phi`` from the
generated :mod:`graphattn.ops.triton_score_kinds`, so no kind is named here; messages are
``value[j]`` (+ ``edge_value[e]``). The backward's score gradient is
``alpha * (keep_scale * dout_dot_msg - dout_dot_out[i])`` with ``dout_dot_msg = d_out[i] .
message`` and ``dout_dot_out[i] = d_out[i] . out[i]`` (FlashAttention's "delta").
Inputs may be fp16/bf16/fp32/fp64; they are cast to fp32 (fp64 stays fp64) right after
loading and accumulated there. ``slope`` and ``scale`` come from a tensor in that
dtype (``params``): Triton types Python float arguments as fp32. Channel counts are padded to powers of two with masks.
Every kernel takes ``degree_bucket`` (the bit length of the mean degree), unused in its body:
it is part of the autotuning key (:mod:`graphattn.ops.triton_backend`), so a graph with
rows of 4 edges and one with rows of 4,000 get their own ``BLOCK_E`` and warp count.
Dropout keeps an edge with probability ``1 - p`` using ``tl.rand(seed, e * H + h)`` with a
64-bit counter, so the backward regenerates the same mask. Node offsets derived from
``program_id`` are 64-bit (:func:`_program_node`); edge and source indices are loaded
as int64 from the CSR arrays.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_score_kinds import WEIGHT_ATT, WEIGHT_DST, activate, activate_grad


@triton.jit
def _program_node(axis: tl.constexpr):
    """This program's node index as int64: every offset built from it (``(i * H + h) *
    C``) is then 64-bit, since ``program_id`` is int32 and ``N * H * C`` passes 2^31 on
    large graphs (ogbn-products with 1024 channels)."""
    return tl.program_id(axis).to(tl.int64)


@triton.jit
def _keep_scale(seed, e, h, H, p, ACC: tl.constexpr):
    """Dropout for edges ``e`` (int64) of head ``h``: ``1 / (1 - p)`` where kept, else 0.
    The counter ``e * H + h`` stays 64-bit (``tl.rand`` uses its high word), so edges
    past 2^31 / H draw their own numbers instead of wrapping onto other edges'; the
    backward regenerates the same mask from the same counter."""
    return tl.where(tl.rand(seed, e * H + h) >= p, 1.0 / (1.0 - p), 0.0).to(ACC)


@triton.jit
def dropout_scale_kernel(keep, EH, H, p, seed, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """``keep[e, h]``: the dropout multiplier the fused kernels drew for edge ``e`` of head
    ``h`` (:func:`_keep_scale` on the same counter), for the backward's exact row sums."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(keep + offs, _keep_scale(seed, offs // H, offs % H, H, p, ACC), mask=offs < EH)


@triton.jit
def _pre_activation(
    ADDS_DST: tl.constexpr,
    dst_term,
    src_term,
    edge_score_term,
    i,
    j,
    e,
    h,
    m2,
    H,
    F,
    offs_f,
    HAS_EDGE_SCORE_TERM: tl.constexpr,
    ACC: tl.constexpr,
):
    """``z = src_term[j] (+ dst_term[i]) (+ edge_score_term[e])`` for a block of edges: [BLOCK_E, BLOCK_F]."""
    z = tl.load(src_term + (j * H + h)[:, None] * F + offs_f[None, :], mask=m2, other=0.0).to(ACC)
    if ADDS_DST:
        z += tl.load(dst_term + (i * H + h)[:, None] * F + offs_f[None, :], mask=m2, other=0.0).to(ACC)
    if HAS_EDGE_SCORE_TERM:
        z += tl.load(edge_score_term + (e * H + h)[:, None] * F + offs_f[None, :], mask=m2, other=0.0).to(ACC)
    return z


@triton.jit
def _channel_weight(WEIGHT: tl.constexpr, dst_term, att, i, h, m2, f_mask, H, F, offs_f, scale, ACC: tl.constexpr):
    """The channel weights ``w`` with the scale in them, 0 on padded channels."""
    if WEIGHT == WEIGHT_ATT:
        w = tl.load(att + h * F + offs_f, mask=f_mask, other=0.0).to(ACC)[None, :]  # broadcast over edges
    elif WEIGHT == WEIGHT_DST:
        w = tl.load(dst_term + (i * H + h)[:, None] * F + offs_f[None, :], mask=m2, other=0.0).to(ACC) * scale
    else:
        w = tl.where(m2, 1.0, 0.0).to(ACC)
    return w


@triton.jit
def _scores(
    SCALAR: tl.constexpr,
    ADDS_DST: tl.constexpr,
    WEIGHT: tl.constexpr,
    ACT: tl.constexpr,
    dst_term,
    src_term,
    edge_score_term,
    edge_bias,
    att,
    i,
    j,
    e,
    h,
    e_mask,
    H,
    F,
    offs_f,
    f_mask,
    slope,
    scale,
    HAS_DST_TERM: tl.constexpr,
    HAS_EDGE_SCORE_TERM: tl.constexpr,
    HAS_EDGE_BIAS: tl.constexpr,
    ACC: tl.constexpr,
):
    """Scores of a block of edges (j[k] -> i[k], edge ids e[k]) for head h: [BLOCK_E]."""
    if SCALAR:  # one term per head
        s = tl.load(src_term + j * H + h, mask=e_mask, other=0.0).to(ACC)
        if ADDS_DST:
            if HAS_DST_TERM:
                s += tl.load(dst_term + i * H + h, mask=e_mask, other=0.0).to(ACC)
        if HAS_EDGE_SCORE_TERM:
            s += tl.load(edge_score_term + e * H + h, mask=e_mask, other=0.0).to(ACC)
        s = activate(ACT, s, slope)
    else:
        m2 = e_mask[:, None] & f_mask[None, :]
        z = _pre_activation(
            ADDS_DST, dst_term, src_term, edge_score_term, i, j, e, h, m2, H, F, offs_f, HAS_EDGE_SCORE_TERM, ACC
        )
        w = _channel_weight(WEIGHT, dst_term, att, i, h, m2, f_mask, H, F, offs_f, scale, ACC)
        s = tl.sum(w * activate(ACT, z, slope), axis=1)
    if HAS_EDGE_BIAS:
        s += tl.load(edge_bias + e * H + h, mask=e_mask, other=0.0).to(ACC)
    return s


@triton.jit
def fused_forward_kernel(
    rowptr,
    col,
    dst_term,
    src_term,
    value,
    edge_score_term,
    edge_bias,
    edge_value,
    att,
    out,
    stats,
    H,
    F,
    Cv,
    params,
    p,
    seed,
    degree_bucket,
    HAS_DST_TERM: tl.constexpr,
    HAS_EDGE_SCORE_TERM: tl.constexpr,
    HAS_EDGE_BIAS: tl.constexpr,
    HAS_EDGE_VALUE: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
    SCALAR: tl.constexpr,
    ADDS_DST: tl.constexpr,
    WEIGHT: tl.constexpr,
    ACT: tl.constexpr,
):
    slope = tl.load(params)
    scale = tl.load(params + 1)
    i = _program_node(0)
    h = tl.program_id(1)
    start = tl.load(rowptr + i)
    end = tl.load(rowptr + i + 1)
    offs_f = tl.arange(0, BLOCK_F)
    f_mask = offs_f < F
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < Cv
    m = tl.full((), float("-inf"), ACC)
    denom = tl.zeros((), ACC)
    acc = tl.zeros((BLOCK_C,), ACC)
    for e0 in range(start, end, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        e_mask = e < end
        j = tl.load(col + e, mask=e_mask, other=0)
        ii = tl.zeros((BLOCK_E,), tl.int64) + i
        s = _scores(
            SCALAR,
            ADDS_DST,
            WEIGHT,
            ACT,
            dst_term,
            src_term,
            edge_score_term,
            edge_bias,
            att,
            ii,
            j,
            e,
            h,
            e_mask,
            H,
            F,
            offs_f,
            f_mask,
            slope,
            scale,
            HAS_DST_TERM,
            HAS_EDGE_SCORE_TERM,
            HAS_EDGE_BIAS,
            ACC,
        )
        s = tl.where(e_mask, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        r = tl.exp(m - m_safe)
        pr = tl.exp(s - m_safe)
        denom = denom * r + tl.sum(pr, axis=0)
        w = pr
        if DROPOUT:
            w = pr * _keep_scale(seed, e, h, H, p, ACC)
        vm = e_mask[:, None] & c_mask[None, :]
        v = tl.load(value + (j * H + h)[:, None] * Cv + offs_c[None, :], mask=vm, other=0.0).to(ACC)
        if HAS_EDGE_VALUE:
            v += tl.load(edge_value + (e * H + h)[:, None] * Cv + offs_c[None, :], mask=vm, other=0.0).to(ACC)
        acc = acc * r + tl.sum(w[:, None] * v, axis=0)
        m = m_new
    # denom == 0 (no edge, or all -inf): output 0, stats (-inf, -inf). A NaN denom (a NaN or
    # +inf score) propagates into the output and the log normaliser, as in the reference.
    # Both branches of tl.where are evaluated, hence the safe divisor.
    empty = denom == 0
    denom_safe = tl.where(empty, 1.0, denom)
    inv = tl.where(empty, 0.0, 1.0 / denom_safe)
    tl.store(out + (i * H + h) * Cv + offs_c, (acc * inv).to(out.dtype.element_ty), mask=c_mask)
    # as the CPU kernel: a max of -inf (no score above it, e.g. one NaN) is stored as 0 unless the row is empty
    m_fin = tl.where(m == float("-inf"), 0.0, m)
    st = stats + (i * H + h) * 2
    tl.store(st, tl.where(empty, float("-inf"), m_fin).to(stats.dtype.element_ty))
    tl.store(st + 1, tl.where(empty, float("-inf"), tl.log(denom_safe)).to(stats.dtype.element_ty))


@triton.jit
def fused_backward_src_kernel(
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
    dO,
    dout_dot_out,
    d_src_term,
    d_value,
    d_edge_score_term,
    d_edge_bias,
    d_edge_value,
    g,
    H,
    F,
    Cv,
    params,
    p,
    seed,
    degree_bucket,
    HAS_DST_TERM: tl.constexpr,
    HAS_EDGE_SCORE_TERM: tl.constexpr,
    HAS_EDGE_BIAS: tl.constexpr,
    HAS_EDGE_VALUE: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
    SCALAR: tl.constexpr,
    ADDS_DST: tl.constexpr,
    WEIGHT: tl.constexpr,
    ACT: tl.constexpr,
):
    slope = tl.load(params)
    scale = tl.load(params + 1)
    j = _program_node(0)
    h = tl.program_id(1)
    start = tl.load(colptr + j).to(tl.int64)  # the transposed graph's indices may be int32
    end = tl.load(colptr + j + 1).to(tl.int64)
    offs_f = tl.arange(0, BLOCK_F)
    f_mask = offs_f < F
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < Cv
    v_j = tl.load(value + (j * H + h) * Cv + offs_c, mask=c_mask, other=0.0).to(ACC)
    dv = tl.zeros((BLOCK_C,), ACC)
    d_src = tl.zeros((BLOCK_F,), ACC)
    for k0 in range(start, end, BLOCK_E):
        k = k0 + tl.arange(0, BLOCK_E)
        e_mask = k < end
        e = tl.load(eid + k, mask=e_mask, other=0).to(tl.int64)
        i = tl.load(row_by_src + k, mask=e_mask, other=0).to(tl.int64)
        jj = tl.zeros((BLOCK_E,), tl.int64) + j
        s = _scores(
            SCALAR,
            ADDS_DST,
            WEIGHT,
            ACT,
            dst_term,
            src_term,
            edge_score_term,
            edge_bias,
            att,
            i,
            jj,
            e,
            h,
            e_mask,
            H,
            F,
            offs_f,
            f_mask,
            slope,
            scale,
            HAS_DST_TERM,
            HAS_EDGE_SCORE_TERM,
            HAS_EDGE_BIAS,
            ACC,
        )
        m_i = tl.load(stats + (i * H + h) * 2, mask=e_mask, other=float("-inf")).to(ACC)
        log_l = tl.load(stats + (i * H + h) * 2 + 1, mask=e_mask, other=0.0).to(ACC)
        # graphattn.ops.softmax.weights_from_stats, inline because it runs in the kernel
        alpha = tl.where(m_i == float("-inf"), 0.0, tl.exp((s - m_i) - log_l))
        alpha = tl.where(e_mask, alpha, 0.0)
        keep_scale = tl.full((BLOCK_E,), 1.0, ACC)
        if DROPOUT:
            keep_scale = _keep_scale(seed, e, h, H, p, ACC)
        cm = e_mask[:, None] & c_mask[None, :]
        d_out = tl.load(dO + (i * H + h)[:, None] * Cv + offs_c[None, :], mask=cm, other=0.0).to(ACC)
        vv = v_j[None, :] + tl.zeros((BLOCK_E, BLOCK_C), ACC)
        if HAS_EDGE_VALUE:
            vv += tl.load(edge_value + (e * H + h)[:, None] * Cv + offs_c[None, :], mask=cm, other=0.0).to(ACC)
        dout_dot_msg = tl.sum(d_out * vv, axis=1)
        dout_dot_out_i = tl.load(dout_dot_out + i * H + h, mask=e_mask, other=0.0).to(ACC)
        ds = alpha * (keep_scale * dout_dot_msg - dout_dot_out_i)
        wv = alpha * keep_scale
        dv += tl.sum(wv[:, None] * d_out, axis=0)
        if HAS_EDGE_VALUE:
            tl.store(
                d_edge_value + (e * H + h)[:, None] * Cv + offs_c[None, :],
                (wv[:, None] * d_out).to(d_edge_value.dtype.element_ty),
                mask=cm,
            )
        if SCALAR:  # d z = ds * phi'(z); g keeps d z (the destination's gradient is its row's sum)
            z = tl.load(src_term + j * H + h).to(ACC) + tl.zeros((BLOCK_E,), ACC)
            if ADDS_DST:
                if HAS_DST_TERM:
                    z += tl.load(dst_term + i * H + h, mask=e_mask, other=0.0).to(ACC)
            if HAS_EDGE_SCORE_TERM:
                z += tl.load(edge_score_term + e * H + h, mask=e_mask, other=0.0).to(ACC)
            dz = tl.where(e_mask, ds * activate_grad(ACT, z, slope), 0.0)
            d_src += tl.sum(dz, axis=0)  # broadcast into lane 0 below
            if HAS_EDGE_SCORE_TERM:
                tl.store(d_edge_score_term + e * H + h, dz.to(d_edge_score_term.dtype.element_ty), mask=e_mask)
            tl.store(g + e * H + h, dz.to(g.dtype.element_ty), mask=e_mask)
        else:  # d z = ds * w * phi'(z); g keeps ds
            fm = e_mask[:, None] & f_mask[None, :]
            z = _pre_activation(
                ADDS_DST, dst_term, src_term, edge_score_term, i, jj, e, h, fm, H, F, offs_f, HAS_EDGE_SCORE_TERM, ACC
            )
            w = _channel_weight(WEIGHT, dst_term, att, i, h, fm, f_mask, H, F, offs_f, scale, ACC)
            dz = tl.where(fm, ds[:, None] * w * activate_grad(ACT, z, slope), 0.0)
            d_src += tl.sum(dz, axis=0)
            if HAS_EDGE_SCORE_TERM:
                tl.store(
                    d_edge_score_term + (e * H + h)[:, None] * F + offs_f[None, :],
                    dz.to(d_edge_score_term.dtype.element_ty),
                    mask=fm,
                )
            tl.store(g + e * H + h, ds.to(g.dtype.element_ty), mask=e_mask)
        if HAS_EDGE_BIAS:
            tl.store(d_edge_bias + e * H + h, ds.to(d_edge_bias.dtype.element_ty), mask=e_mask)
    tl.store(d_value + (j * H + h) * Cv + offs_c, dv.to(d_value.dtype.element_ty), mask=c_mask)
    if SCALAR:
        # d_src holds the same scalar sum in every lane; write it once
        tl.store(d_src_term + j * H + h + offs_f * 0, d_src.to(d_src_term.dtype.element_ty), mask=offs_f == 0)
    else:
        tl.store(d_src_term + (j * H + h) * F + offs_f, d_src.to(d_src_term.dtype.element_ty), mask=f_mask)


@triton.jit
def fused_backward_dst_kernel(
    rowptr,
    col,
    dst_term,
    src_term,
    edge_score_term,
    att,
    g,
    d_dst_term,
    datt_rows,
    H,
    F,
    params,
    degree_bucket,
    HAS_EDGE_SCORE_TERM: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
    ACC: tl.constexpr,
    SCALAR: tl.constexpr,
    ADDS_DST: tl.constexpr,
    WEIGHT: tl.constexpr,
    ACT: tl.constexpr,
):
    slope = tl.load(params)
    scale = tl.load(params + 1)
    i = _program_node(0)
    h = tl.program_id(1)
    start = tl.load(rowptr + i)
    end = tl.load(rowptr + i + 1)
    offs_f = tl.arange(0, BLOCK_F)
    f_mask = offs_f < F
    d_dst = tl.zeros((BLOCK_F,), ACC)
    dat = tl.zeros((BLOCK_F,), ACC)
    for e0 in range(start, end, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        e_mask = e < end
        gs = tl.load(g + e * H + h, mask=e_mask, other=0.0).to(ACC)
        if SCALAR:
            d_dst += tl.sum(gs, axis=0)
        else:  # dst_term gets ds * w * phi'(z) where added, ds * scale * phi(z) where it weights; att ds * phi(z)
            j = tl.load(col + e, mask=e_mask, other=0)
            ii = tl.zeros((BLOCK_E,), tl.int64) + i
            fm = e_mask[:, None] & f_mask[None, :]
            z = _pre_activation(
                ADDS_DST, dst_term, src_term, edge_score_term, ii, j, e, h, fm, H, F, offs_f, HAS_EDGE_SCORE_TERM, ACC
            )
            w = _channel_weight(WEIGHT, dst_term, att, ii, h, fm, f_mask, H, F, offs_f, scale, ACC)
            phi = activate(ACT, z, slope)
            if ADDS_DST:
                d_dst += tl.sum(tl.where(fm, gs[:, None] * w * activate_grad(ACT, z, slope), 0.0), axis=0)
            if WEIGHT == WEIGHT_ATT:
                dat += tl.sum(tl.where(fm, gs[:, None] * phi, 0.0), axis=0)
            if WEIGHT == WEIGHT_DST:
                d_dst += tl.sum(tl.where(fm, (gs * scale)[:, None] * phi, 0.0), axis=0)
    if SCALAR:
        tl.store(d_dst_term + i * H + h + offs_f * 0, d_dst.to(d_dst_term.dtype.element_ty), mask=offs_f == 0)
    else:
        tl.store(d_dst_term + (i * H + h) * F + offs_f, d_dst.to(d_dst_term.dtype.element_ty), mask=f_mask)
        if WEIGHT == WEIGHT_ATT:
            tl.store(datt_rows + (i * H + h) * F + offs_f, dat.to(datt_rows.dtype.element_ty), mask=f_mask)
