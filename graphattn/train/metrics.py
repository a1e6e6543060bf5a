"""Ranking metrics for link prediction, in torch (no scikit-learn needed).

``roc_auc`` and ``average_precision`` match scikit-learn's ``roc_auc_score`` and
``average_precision_score`` (ties are handled the same way: tied scores share their
average rank for AUC and are one threshold for AP). ``hits_at_k`` is OGB's
definition: the fraction of positive edges scored above the K-th highest negative.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["roc_auc", "average_precision", "hits_at_k"]


def _check(pos: Tensor, neg: Tensor) -> None:
    if pos.dim() != 1 or neg.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shapes {tuple(pos.shape)} and {tuple(neg.shape)}")
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("need at least one positive and one negative score")
    if torch.isnan(pos).any() or torch.isnan(neg).any():
        raise ValueError("scores contain NaN")


def roc_auc(pos: Tensor, neg: Tensor) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative),
    ties counting one half (Mann-Whitney U with average ranks)."""
    _check(pos, neg)
    scores = torch.cat([pos, neg]).double()
    order = scores.argsort()
    sorted_scores = scores[order]
    # each score's rank, tied scores sharing the average of their ranks
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = avg[inverse]
    n_pos, n_neg = pos.numel(), neg.numel()
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def average_precision(pos: Tensor, neg: Tensor) -> float:
    """Average precision: sum over thresholds of (recall step) x precision, each
    distinct score one threshold (scikit-learn's definition, no interpolation)."""
    _check(pos, neg)
    scores = torch.cat([pos, neg]).double()
    labels = torch.cat([torch.ones_like(pos, dtype=torch.float64), torch.zeros_like(neg, dtype=torch.float64)])
    order = scores.argsort(descending=True)
    scores, labels = scores[order], labels[order]
    tp = labels.cumsum(0)
    # the last index of each run of tied scores is a threshold
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]
    tp = tp[last]
    seen = torch.nonzero(last).view(-1).double() + 1
    precision = tp / seen
    recall = tp / pos.numel()
    recall_step = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((recall_step * precision).sum())


def hits_at_k(pos: Tensor, neg: Tensor, k: int) -> float:
    """OGB's Hits@K: the fraction of positives scored strictly above the K-th
    highest negative score (1.0 when there are fewer than K negatives)."""
    _check(pos, neg)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if neg.numel() < k:
        return 1.0
    kth = torch.topk(neg, k).values[-1]
    return float((pos > kth).double().mean())
