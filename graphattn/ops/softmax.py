"""Segment (per-destination) softmax over edges, with a closed-form backward."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._dtypes import upcast


Reduction = Callable[[Tensor, Tensor, int], Tensor]  # (values [E, ...], index [E], num_segments) -> [num_segments, ...]


def _expand_index(index: Tensor, like: Tensor) -> Tensor:
    return index.view((-1,) + (1,) * (like.dim() - 1)).expand_as(like)


def _segment_max(scores: Tensor, index: Tensor, num_segments: int) -> Tensor:
    shape = (num_segments,) + tuple(scores.shape[1:])
    return scores.new_full(shape, float("-inf")).scatter_reduce(
        0, _expand_index(index, scores), scores, reduce="amax", include_self=True
    )


def _segment_sum(t: Tensor, index: Tensor, num_segments: int) -> Tensor:
    return t.new_zeros((num_segments,) + tuple(t.shape[1:])).index_add_(0, index, t)


def segment_softmax_forward(
    scores: Tensor,
    index: Tensor,
    num_segments: int,
    segment_max: Reduction = _segment_max,
    segment_sum: Reduction = _segment_sum,
) -> Tensor:
    """Softmax of ``scores`` ([E] or [E, ...]) over the edges sharing ``index``.

    Stable for huge logits (the per-segment max is subtracted); a segment whose
    logits are all ``-inf`` gets weights 0, never NaN. ``segment_max`` / ``segment_sum``
    are the two reductions (torch's scatter ops by default; the optional torch-scatter
    backend passes its own): the formula is written once, here.
    """
    seg_max = segment_max(scores, index, num_segments)
    seg_max = torch.where(seg_max == float("-inf"), torch.zeros_like(seg_max), seg_max)
    exp = torch.exp(scores - seg_max.index_select(0, index))
    denom = segment_sum(exp, index, num_segments)
    denom = torch.where(denom == 0, torch.ones_like(denom), denom)
    return exp / denom.index_select(0, index)


def weights_from_stats(scores: Tensor, stats: Tensor) -> Tensor:
    """The softmax weights of scores from their row's saved statistics: the one definition of
    what every fused backend saves (per destination and head, ``stats[..., 0]`` the row max
    ``m`` (0 where no score is above ``-inf``) and ``stats[..., 1]`` the log normaliser
    ``log l``, ``l = sum_e exp(s_e - m)``; both ``-inf`` for an empty row, ``l = 0``: no edge
    or all scores ``-inf``)::

        alpha_e = exp((s_e - m) - log l)

    ``m`` and ``log l`` are kept apart: summed into one log-sum-exp they round to ``m`` for
    logits near 1e7 (fp32) or 1e16 (fp64), and tied weights would come back as 1. An empty
    row gives 0, a ``-inf`` score exp(-inf) = 0, a NaN statistic NaN. ``stats`` is indexed
    like ``scores`` plus a last axis of 2 (gathered per edge by the caller). The kernels
    (csrc ``weights_from_stats``, the Triton backward) write the same expression inline."""
    row_max, log_normaliser = stats[..., 0], stats[..., 1]
    alpha = torch.exp((scores - row_max) - log_normaliser)
    return torch.where(row_max == float("-inf"), torch.zeros_like(alpha), alpha)


def segment_softmax_backward(weights: Tensor, grad: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """d(softmax)/d(scores) applied to ``grad``: ``y * (g - sum_seg(g * y))``.
    Needs only the forward's output (DGL's closed form)."""
    gy = grad * weights
    return gy - weights * _segment_sum(gy, index, num_segments).index_select(0, index)


class SegmentSoftmax(torch.autograd.Function):
    """:func:`segment_softmax_forward` with the closed-form backward, over the forward's two
    reductions (torch's scatter ops by default; the torch-scatter backend passes its own).
    The backward's one segment sum is torch's in every case (the output alone determines it)."""

    @staticmethod
    def forward(
        ctx,
        scores: Tensor,
        index: Tensor,
        num_segments: int,
        segment_max: Reduction = _segment_max,
        segment_sum: Reduction = _segment_sum,
    ) -> Tensor:
        out = segment_softmax_forward(scores, index, num_segments, segment_max, segment_sum)
        ctx.save_for_backward(out, index)
        ctx.num_segments = num_segments
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out, index = ctx.saved_tensors
        return segment_softmax_backward(out, grad, index, ctx.num_segments), None, None, None, None


def segment_softmax(
    scores: Tensor,
    index: Tensor,
    num_segments: int,
    segment_max: Reduction = _segment_max,
    segment_sum: Reduction = _segment_sum,
) -> Tensor:
    """Differentiable segment softmax; half-precision inputs are computed in fp32.
    ``segment_max`` / ``segment_sum`` replace the forward's reductions (see :class:`SegmentSoftmax`)."""
    out = SegmentSoftmax.apply(upcast(scores), index, num_segments, segment_max, segment_sum)
    return out.to(scores.dtype)
