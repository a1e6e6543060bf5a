"""score_attention: precomputed per-edge scores through the fused softmax + aggregate."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphattn import Graph, ops


def dense_oracle(scores, value, edge_index, num_nodes):
    """Softmax over each destination's in-edges via a dense [N, E] mask (independent of graphattn)."""
    src, dst = edge_index
    member = dst.unsqueeze(1) == torch.arange(num_nodes).unsqueeze(0)  # [E, N]
    logits = scores.unsqueeze(1).masked_fill(~member.unsqueeze(-1), float("-inf"))  # [E, N, H]
    alpha = torch.softmax(logits, dim=0).nan_to_num(0.0)  # columns without edges: all -inf
    out = torch.einsum("enh,ehc->nhc", alpha, value[src])
    return out, alpha.sum(1)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 12), e=st.integers(0, 40), heads=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_matches_a_dense_softmax_on_every_backend(n, e, heads, seed):
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, n, (2, e), generator=gen)
    scores = torch.randn(e, heads, generator=gen, dtype=torch.float64) * 3
    value = torch.randn(n, heads, 4, generator=gen, dtype=torch.float64)
    expected_out, expected_alpha = dense_oracle(scores, value, edge_index, n)
    for backend in ("reference", "cpu"):
        if backend == "cpu" and ops.cpu.unavailable_reason() is not None:
            continue
        out, alpha = ops.score_attention(scores, value, edge_index, return_weights=True, backend=backend)
        torch.testing.assert_close(out, expected_out)
        torch.testing.assert_close(alpha, expected_alpha)


def test_gradients_reach_scores_and_values():
    torch.manual_seed(0)
    graph = Graph.from_edge_index(torch.randint(0, 20, (2, 80)), 20)
    scores = torch.randn(graph.num_edges, 2, dtype=torch.float64, requires_grad=True)
    value = torch.randn(20, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, v: ops.score_attention(s, v, graph), (scores, value))
    out, alpha = ops.score_attention(scores, value, graph, return_weights=True)
    assert ops.last_backend("dot_product") == ("cpu" if ops.cpu.unavailable_reason() is None else "reference")
    (out.sum() + (alpha**2).sum()).backward()
    reference_grad = torch.autograd.grad(
        sum(
            t.sum() if i == 0 else (t**2).sum()
            for i, t in enumerate(ops.score_attention(scores, value, graph, return_weights=True, backend="reference"))
        ),
        scores,
    )[0]
    torch.testing.assert_close(scores.grad, reference_grad)


def test_gat_scores_through_score_attention_equal_gat_attention():
    torch.manual_seed(1)
    graph = Graph.from_edge_index(torch.randint(0, 15, (2, 60)), 15)
    a_src, a_dst, value = torch.randn(15, 2), torch.randn(15, 2), torch.randn(15, 2, 5)
    src, dst = graph.edge_index
    scores = torch.nn.functional.leaky_relu(a_src[src] + a_dst[dst], 0.2)
    torch.testing.assert_close(
        ops.score_attention(scores, value, graph), ops.gat_attention(a_src, a_dst, value, graph), atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize(
    "scores, value, message",
    [
        (torch.randn(5), torch.randn(4, 1, 2), "scores must be an \\[E, H\\]"),
        (torch.randn(5, 1), torch.randn(4, 2), "value must be an \\[N_src, H, C\\]"),
        (torch.randn(7, 1), torch.randn(4, 1, 2), "scores has 7 rows but the graph has 5 edges"),
        (torch.randn(5, 2), torch.randn(4, 1, 2), "heads"),  # 2 heads of scores, 1 of values
    ],
)
def test_bad_shapes_are_named(scores, value, message):
    edge_index = torch.tensor([[0, 1, 2, 3, 0], [1, 2, 3, 0, 2]])
    with pytest.raises(ValueError, match=message):
        ops.score_attention(scores, value, edge_index)


# ------------------------------------------------------------ a layer built on it
def test_agnn_conv_matches_pyg_and_runs_fused():
    pyg = pytest.importorskip("torch_geometric.nn")
    from graphattn.nn import AGNNConv

    torch.manual_seed(3)
    x = torch.randn(40, 16, requires_grad=True)
    edge_index = torch.randint(0, 40, (2, 200))
    theirs = pyg.AGNNConv(requires_grad=True)
    with torch.no_grad():
        theirs.beta.fill_(1.7)
    ours = AGNNConv.from_pyg(theirs)
    assert float(ours.beta) == pytest.approx(1.7)
    out = ours(x, edge_index)
    assert ops.last_backend("dot_product") == ("cpu" if ops.cpu.unavailable_reason() is None else "reference")
    expected = theirs(x, edge_index)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    g_ours = torch.autograd.grad(out.pow(2).sum(), (x, ours.beta))
    g_theirs = torch.autograd.grad(expected.pow(2).sum(), (x, theirs.beta))
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    _, (ei, alpha) = ours(x, edge_index, return_attention_weights=True)
    assert alpha.shape == (ei.size(1), 1)
    fixed = AGNNConv.from_pyg(pyg.AGNNConv(requires_grad=False, add_self_loops=False))
    assert not fixed.beta.requires_grad and fixed(x, edge_index).shape == (40, 16)
