"""graphattn.robustness: reproducible by seed, budgets respected, the attack hurts its surrogate."""

import pytest
import torch

from graphattn import robustness as rb
from graphattn.train.datasets import contextual_sbm
from graphattn.nn import DotProductConv, GATConv, GATv2Conv


def _ring(n=30):
    a = torch.arange(n)
    b = (a + 1) % n
    return torch.cat([torch.stack([a, b]), torch.stack([b, a])], dim=1)


def _pairs(ei):
    return {(min(a, b), max(a, b)) for a, b in ei.t().tolist() if a != b}


def test_insert_random_edges_budget_seed_and_symmetry():
    ei = _ring()
    new, ins = rb.insert_random_edges(ei, 30, 0.5, seed=3)
    assert ins.size(1) == 2 * 15 and torch.equal(new[:, : ei.size(1)], ei)
    assert not (_pairs(ins) & _pairs(ei)) and len(_pairs(ins)) == 15
    assert (ins[0] != ins[1]).all()
    assert _pairs(ins) == _pairs(ins.flip(0))
    again, ins2 = rb.insert_random_edges(ei, 30, 0.5, seed=3)
    assert torch.equal(again, new) and torch.equal(ins2, ins)
    assert not torch.equal(rb.insert_random_edges(ei, 30, 0.5, seed=4)[1], ins)
    assert rb.insert_random_edges(ei, 30, 7)[1].size(1) == 14  # an int budget is a count
    with pytest.raises(ValueError, match="free"):
        rb.insert_random_edges(ei, 30, 10_000)
    with pytest.raises(ValueError, match="outside"):
        rb.insert_random_edges(ei, 10, 1)
    with pytest.raises(TypeError, match="budget"):
        rb.insert_random_edges(ei, 30, "10%")


def test_delete_random_edges_removes_both_directions():
    ei = _ring()
    new, removed = rb.delete_random_edges(ei, 0.2, seed=1)
    assert len(_pairs(removed)) == 6 and new.size(1) == ei.size(1) - 12
    assert not (_pairs(new) & _pairs(removed))
    assert torch.equal(rb.delete_random_edges(ei, 0.2, seed=1)[0], new)


def test_feature_noise_is_seeded_and_scaled():
    x = torch.randn(200, 16) * 3
    a, b = rb.feature_noise(x, 0.5, seed=0), rb.feature_noise(x, 0.5, seed=0)
    assert torch.equal(a, b)
    assert (a - x).std().item() == pytest.approx(0.5 * x.std().item(), rel=0.1)
    assert torch.equal(rb.feature_noise(x, 0.0), x)
    with pytest.raises(ValueError):
        rb.feature_noise(x, -1.0)


def test_gradient_attack_hurts_the_surrogate_more_than_random_edges():
    data = contextual_sbm(
        num_nodes=300, num_val=50, num_test=150, seed=0, homophily=0.9, noisy_fraction=0.0, feature_signal=0.2
    )
    budget = 0.2
    new, info = rb.gradient_attack(data.x, data.edge_index, data.y, data.train_mask, data.test_mask, budget, seed=0)
    n_pairs = len(_pairs(data.edge_index))
    flips = len(_pairs(info["inserted"])) + len(_pairs(info["removed"]))
    assert flips == round(budget * n_pairs)
    assert _pairs(new) == (_pairs(data.edge_index) - _pairs(info["removed"])) | _pairs(info["inserted"])
    again, _ = rb.gradient_attack(data.x, data.edge_index, data.y, data.train_mask, data.test_mask, budget, seed=0)
    assert torch.equal(again, new)

    # a GAT trained on the clean graph loses more accuracy to the attack than to as many random insertions
    torch.manual_seed(0)
    conv1, conv2 = GATConv(data.x.size(1), 8, heads=4), GATConv(32, int(data.y.max()) + 1)
    params = list(conv1.parameters()) + list(conv2.parameters())
    opt = torch.optim.Adam(params, lr=0.01, weight_decay=5e-4)

    def model(ei):
        return conv2(torch.relu(conv1(data.x, ei)), ei)

    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.edge_index)[data.train_mask], data.y[data.train_mask]).backward()
        opt.step()

    def acc(ei):
        with torch.no_grad():
            return float((model(ei).argmax(-1)[data.test_mask] == data.y[data.test_mask]).float().mean())

    rnd, _ = rb.insert_random_edges(data.edge_index, data.num_nodes, flips, seed=0)
    clean, attacked, random_ = acc(data.edge_index), acc(new), acc(rnd)
    assert attacked < clean - 0.05
    assert attacked < random_


def test_token_perturbations():
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 0, 0], [2, 5, 5, 5, 0, 0, 0, 0]])
    d = rb.token_dropout(ids, 1.0, protect=[2])
    assert torch.equal(d, torch.tensor([[2, 0, 0, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0, 0]]))
    u = rb.token_dropout(ids, 1.0, unk_id=1, protect=[2])
    assert torch.equal(u, torch.where((ids != 0) & (ids != 2), torch.ones_like(ids), ids))
    assert torch.equal(rb.token_dropout(ids, 0.0), ids)
    half = rb.token_dropout(torch.randint(3, 50, (64, 40)), 0.5, seed=1, unk_id=1)
    assert 0.4 < float((half == 1).float().mean()) < 0.6
    s = rb.token_substitution(ids, 1.0, 20, seed=0, protect=[2], low=3)
    assert ((s == 0) == (ids == 0)).all() and (s[:, 0] == 2).all() and (s[ids > 2] >= 3).all()
    assert torch.equal(rb.token_substitution(ids, 0.5, 20, seed=7), rb.token_substitution(ids, 0.5, 20, seed=7))
    with pytest.raises(ValueError):
        rb.token_dropout(ids, 1.5)


def test_attention_on_edges_hand_computed():
    # node 0 <- 1 (0.7), 2 (0.3); node 1 <- 0 (1.0); "injected" = 2 -> 0
    ei = torch.tensor([[1, 2, 0], [0, 0, 1]])
    w = torch.tensor([[0.7], [0.3], [1.0]])
    r = rb.attention_on_edges(ei, w, torch.tensor([[2], [0]]), 3)
    assert r == {"mass": pytest.approx(0.3), "uniform": pytest.approx(0.5), "nodes": 1}
    assert rb.attention_on_edges(ei, w, torch.empty(2, 0, dtype=torch.long), 3)["mass"] == 0.0


@pytest.mark.parametrize("conv", [GATConv, GATv2Conv, DotProductConv])
def test_prune_threshold_defence(conv):
    torch.manual_seed(0)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    ei = torch.tensor([[1, 2, 0, 3, 0], [0, 0, 1, 2, 3]])  # 2 -> 0 and 0 -> 3 join dissimilar nodes
    layer = conv(2, 3, heads=2, prune_threshold=0.5).eval()
    _, (ei_used, _) = layer(x, ei, return_attention_weights=True)
    used = set(map(tuple, ei_used.t().tolist()))
    assert (2, 0) not in used and (0, 3) not in used and (1, 0) in used and (3, 2) in used
    plain = conv(2, 3, heads=2).eval()
    plain.load_state_dict(layer.state_dict())
    kept = torch.tensor([[1, 0, 3], [0, 1, 2]])
    torch.testing.assert_close(layer(x, ei), plain(x, kept))
    with pytest.raises(ValueError, match="cosine"):
        conv(2, 3, prune_threshold=2.0)
