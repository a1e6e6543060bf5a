import pytest
import torch

from graphattn.train.sampling import NeighborSampler


def _graph(n=60, e=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (2, e), generator=g)


def test_batches_cover_inputs_and_edges_are_real():
    ei = _graph()
    real = set(map(tuple, ei.t().tolist()))
    inputs = torch.arange(0, 60, 2)
    s = NeighborSampler(
        ei, 60, [4, 3], input_nodes=inputs, batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    seen = []
    for b in s:
        seeds = b.n_id[: b.batch_size]
        seen.append(seeds)
        assert b.n_id.unique().numel() == b.n_id.numel()  # each node once
        glob = b.n_id[b.edge_index]
        assert all(tuple(e) in real for e in glob.t().tolist())
    assert torch.equal(torch.cat(seen).sort().values, inputs) and len(s) == 5


def test_fan_out_bounds_and_small_degrees_keep_everything():
    ei = _graph()
    s = NeighborSampler(ei, 60, [3], batch_size=60, generator=torch.Generator().manual_seed(0))
    b = s.sample(torch.arange(60))
    # one hop from all nodes: every node has min(in-degree, 3) distinct sampled in-edges
    deg = torch.bincount(ei[1], minlength=60)
    got = torch.bincount(b.n_id[b.edge_index[1]], minlength=60)
    assert torch.equal(got, deg.clamp(max=3))
    full = NeighborSampler(ei, 60, [-1], batch_size=60).sample(torch.arange(60))
    assert full.edge_index.size(1) == ei.size(1)


def test_two_hops_sample_from_new_nodes_only():
    # path 0 <- 1 <- 2 <- 3: two hops from 0 reach 1 and 2, not 3
    ei = torch.tensor([[1, 2, 3], [0, 1, 2]])
    b = NeighborSampler(ei, 4, [5, 5], batch_size=1).sample(torch.tensor([0]))
    assert b.n_id.tolist() == [0, 1, 2] and b.edge_index.size(1) == 2


def test_reproducible_with_a_generator():
    ei = _graph(seed=3)
    a = NeighborSampler(ei, 60, [2, 2], batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(5))
    b = NeighborSampler(ei, 60, [2, 2], batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(5))
    for x, y in zip(a, b):
        assert torch.equal(x.n_id, y.n_id) and torch.equal(x.edge_index, y.edge_index)


def test_bad_input():
    with pytest.raises(ValueError, match="destination index 9, out of range for 5"):
        NeighborSampler(torch.tensor([[0], [9]]), 5, [2])
    with pytest.raises(ValueError, match="num_neighbors"):
        NeighborSampler(_graph(), 60, [0])
    with pytest.raises(ValueError, match=r"\[2, num_edges\]"):
        NeighborSampler(torch.zeros(3, 4, dtype=torch.long), 60, [2])
