import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from graphattn.train.metrics import average_precision, hits_at_k, roc_auc


def _pairwise_auc(pos, neg):
    diff = pos.view(-1, 1) - neg.view(1, -1)
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def _ap_by_definition(pos, neg):
    scores = torch.cat([pos, neg])
    labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        sel = scores >= t
        tp = float(labels[sel].sum())
        recall, precision = tp / len(pos), tp / int(sel.sum())
        total += (recall - prev_recall) * precision
        prev_recall = recall
    return total


scores = st.lists(st.integers(-5, 5), min_size=1, max_size=30).map(lambda v: torch.tensor(v, dtype=torch.float32))


@given(scores, scores)
def test_auc_and_ap_match_their_definitions_with_ties(pos, neg):
    assert roc_auc(pos, neg) == pytest.approx(_pairwise_auc(pos, neg))
    assert average_precision(pos, neg) == pytest.approx(_ap_by_definition(pos, neg))


def test_known_values():
    pos, neg = torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0.5, 0.2])
    assert roc_auc(pos, neg) == pytest.approx(5 / 6)
    assert average_precision(pos, neg) == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert roc_auc(torch.tensor([1.0]), torch.tensor([0.0])) == 1.0


def test_hits_at_k_is_ogbs_definition():
    neg = torch.arange(100.0)  # 20th highest negative: 80
    pos = torch.tensor([80.0, 80.5, 99.5, 10.0])
    assert hits_at_k(pos, neg, 20) == pytest.approx(0.5)  # strictly above 80
    assert hits_at_k(pos, neg[:5], 20) == 1.0
    ogb = pytest.importorskip("ogb.linkproppred")
    ev = ogb.Evaluator(name="ogbl-ddi")
    g = torch.Generator().manual_seed(0)
    p, n = torch.randn(500, generator=g) + 1, torch.randn(3000, generator=g)
    assert hits_at_k(p, n, 20) == pytest.approx(ev.eval({"y_pred_pos": p, "y_pred_neg": n})["hits@20"])


def test_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        roc_auc(torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="at least one"):
        average_precision(torch.zeros(0), torch.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(torch.tensor([float("nan")]), torch.zeros(2))
    with pytest.raises(ValueError, match="k must"):
        hits_at_k(torch.zeros(2), torch.zeros(2), 0)
