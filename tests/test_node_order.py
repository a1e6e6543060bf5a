"""Node orders (graphattn.ordering): a graph holding one gives every op the same
outputs, weights and gradients as the plain graph, on every backend; the orders are
permutations; the locality order makes a shuffled community graph local again; bad
orders and graphs that cannot be reordered are refused by name."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphattn import Graph, ops, patterns
from graphattn.ordering import METHODS, NodeOrder, node_order

from conftest import backend_params, needs_backend, random_graph

N, H, C = 30, 2, 3
OPS = ["gat", "gatv2", "dot_product"]


def _backends(op):
    """Every registered backend of ``op`` but the dense ones (they need patterns); each is a
    parametrisation, and one that cannot run here skips with its reason."""
    return [b for b in ops.available_backends(op) if b not in ("dense", "flex")]


def _inputs(graph, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    E = graph.num_edges
    return {
        "gat": (
            lambda g, b, t: ops.gat_attention(t[0], t[1], t[2], g, edge_score=t[3], return_weights=True, backend=b),
            [r(N, H), r(N, H), r(N, H, C), r(E, H)],
        ),
        "gatv2": (
            lambda g, b, t: ops.gatv2_attention(t[0], t[1], t[2], g, edge_feat=t[3], return_weights=True, backend=b),
            [r(N, H, C), r(N, H, C), r(H, C), r(E, H, C)],
        ),
        "dot_product": (
            lambda g, b, t: ops.dot_product_attention(
                t[0], t[1], t[2], g, edge_key=t[3], edge_bias=t[4], return_weights=True, backend=b
            ),
            [r(N, H, C), r(N, H, C), r(N, H, 4), r(E, H, C), r(E, H)],
        ),
    }


def _run(fn, graph, backend, tensors):
    xs = [t.detach().clone().requires_grad_(True) for t in tensors]
    out, alpha = fn(graph, backend, xs)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    ((out * weights).sum() + (alpha**2).sum()).backward()
    return out.detach(), alpha.detach(), [x.grad for x in xs]


@pytest.mark.parametrize(
    "op, method, backend",
    [
        pytest.param(op, method, backend, marks=needs_backend(backend), id=f"{op}-{method}-{backend}")
        for op in OPS
        for method in METHODS
        for backend in _backends(op)
        if backend != "triton" or method == "locality"  # the interpreter is slow: one order is enough for the kernel
    ],
)
def test_ordered_graph_gives_the_plain_graphs_results_on_every_backend(op, method, backend):
    plain = Graph.from_edge_index(random_graph(N, N, 120, seed=1), N).with_self_loops()
    ordered = plain.reorder_nodes(method)
    assert not torch.equal(ordered.node_order.perm, torch.arange(N))  # a real renumbering
    fn, tensors = _inputs(plain)[op]
    expected = _run(fn, plain, "reference", tensors)
    got = _run(fn, ordered, backend, tensors)
    assert ops.last_backend(op) == backend
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    for g, e in zip(got[2], expected[2]):
        torch.testing.assert_close(g, e)


# Not Triton: the interpreter is slow, and the parametrised test above covers it.
@pytest.mark.parametrize("backend", backend_params(*(b for b in _backends("gat") if b != "triton")))
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 16),
    e=st.integers(0, 60),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(METHODS),
    loops=st.booleans(),
)
def test_any_graph_any_order_matches_the_reference(n, e, seed, method, loops, backend):
    gen = torch.Generator().manual_seed(seed)
    plain = Graph.from_edge_index(torch.randint(0, n, (2, e), generator=gen), n)
    if loops:
        plain = plain.with_self_loops()
    ordered = plain.reorder_nodes(method)
    order = ordered.node_order
    assert torch.equal(torch.sort(order.perm)[0], torch.arange(n))
    assert torch.equal(order.inverse[order.perm], torch.arange(n))
    a, b = torch.randn(n, 2, generator=gen, dtype=torch.float64), torch.randn(n, 2, generator=gen, dtype=torch.float64)
    v = torch.randn(n, 2, 3, generator=gen, dtype=torch.float64)
    expected = ops.gat_attention(a, b, v, plain, return_weights=True, backend="reference")
    got = ops.gat_attention(a, b, v, ordered, return_weights=True, backend=backend)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


@pytest.mark.parametrize("backend", backend_params("reference", "cpu"))
def test_gradcheck_through_an_ordered_graph(backend):
    graph = Graph.from_edge_index(random_graph(12, 12, 40, seed=2), 12).reorder_nodes()
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(12, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(12, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(graph.num_edges, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, b: ops.dot_product_attention(q, k, v, graph, edge_bias=b, backend=backend), (q, k, v, bias)
    )
    scores = torch.randn(graph.num_edges, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, v: ops.score_attention(s, v, graph, backend=backend), (scores, v))


def test_apply_and_undo_are_inverse_permutations_with_gather_gradients():
    order = NodeOrder(torch.tensor([2, 0, 3, 1]))
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(order.apply(x), x[order.perm])
    assert torch.equal(order.undo(order.apply(x)), x)
    assert torch.autograd.gradcheck(order.apply, (x,))
    assert torch.autograd.gradgradcheck(order.undo, (x,))


@pytest.mark.parametrize(
    "perm, message",
    [
        (torch.tensor([0, 1, 1]), "every node id once"),
        (torch.tensor([0, 1, 3]), "0..2"),
        (torch.tensor([-1, 0, 1]), "0..2"),
        (torch.tensor([[0, 1]]), "1-D integer"),
        (torch.tensor([0.0, 1.0]), "1-D integer"),
    ],
)
def test_bad_orders_are_named(perm, message):
    with pytest.raises(ValueError, match=message):
        NodeOrder(perm)


def test_graphs_that_cannot_be_reordered_are_refused():
    square = Graph.from_edge_index(random_graph(6, 6, 20), 6)
    with pytest.raises(ValueError, match="does not fit"):
        square.reorder_nodes(NodeOrder(torch.arange(5)))
    with pytest.raises(ValueError, match="bipartite"):
        Graph.from_edge_index(torch.tensor([[0, 1], [0, 2]]), (2, 3)).reorder_nodes()
    with pytest.raises(ValueError, match="pattern"):
        patterns.sliding_window(16, 2).reorder_nodes()
    with pytest.raises(ValueError, match="unknown node order method"):
        square.reorder_nodes("metis")
    with pytest.raises(ValueError, match="6 rows"):
        square.reorder_nodes().node_order.apply(torch.randn(5, 2))


def test_locality_order_makes_a_shuffled_community_graph_local():
    n, block = 4000, 100
    gen = torch.Generator().manual_seed(0)
    dst = torch.randint(0, n, (40_000,), generator=gen)
    src = (dst // block) * block + torch.randint(0, block, (40_000,), generator=gen)
    shuffle = torch.randperm(n, generator=gen)
    shuffled = Graph.from_edge_index(shuffle[torch.stack([src, dst])], n)

    def near(edge_index):
        return float(((edge_index[0] - edge_index[1]).abs() < 2 * block).float().mean())

    before = near(shuffled.edge_index)
    order = node_order(shuffled, "locality")
    after = near(order.inverse[shuffled.edge_index])
    assert before < 0.15 and after > 0.6, (before, after)
    assert torch.equal(node_order(shuffled, "locality").perm, order.perm)  # deterministic for a seed
    assert torch.equal(order.relabel(shuffled).edge_index, order.inverse[shuffled.edge_index])


def test_degree_order_puts_hubs_first():
    hub_edges = torch.stack([torch.arange(1, 10), torch.full((9,), 7)])
    graph = Graph.from_edge_index(torch.cat([hub_edges, torch.tensor([[2], [3]])], dim=1), 10)
    assert int(node_order(graph, "degree").perm[0]) == 7


def test_layers_with_self_loops_and_weights_run_unchanged_on_an_ordered_graph():
    from graphattn.nn import GATConv, GATv2Conv, TransformerConv

    plain = Graph.from_edge_index(random_graph(N, N, 100, seed=3), N)
    ordered = plain.reorder_nodes()
    x = torch.randn(N, 8, dtype=torch.float64)
    for layer in (GATConv(8, 4, heads=2), GATv2Conv(8, 4, heads=2, edge_dim=3), TransformerConv(8, 4, heads=2)):
        layer = layer.double().eval()
        kwargs = (
            {"edge_attr": torch.randn(plain.num_edges, 3, dtype=torch.float64)} if isinstance(layer, GATv2Conv) else {}
        )
        out, (ei, alpha) = layer(x, plain, return_attention_weights=True, **kwargs)
        out2, (ei2, alpha2) = layer(x, ordered, return_attention_weights=True, **kwargs)
        torch.testing.assert_close(out2, out)
        assert torch.equal(ei2, ei)
        torch.testing.assert_close(alpha2, alpha)
    looped = ordered.with_self_loops()  # what GATConv and GATv2Conv ran on: it held the order, and used it
    assert looped.node_order is ordered.node_order and looped._relabeled is not None


def test_a_pruning_layer_keeps_the_graphs_node_order():
    from graphattn.nn import GATConv

    plain = Graph.from_edge_index(random_graph(N, N, 100, seed=6), N)
    ordered = plain.reorder_nodes()
    x = torch.randn(N, 8, dtype=torch.float64)
    layer = GATConv(8, 4, heads=2, prune_threshold=0.0).double().eval()
    pruned, _ = layer.prune_edges(x, None, ordered, None)
    assert pruned.num_edges < plain.num_edges and pruned.node_order is ordered.node_order
    torch.testing.assert_close(layer(x, ordered), layer(x, plain))


def test_relabeled_graph_follows_in_place_edits():
    ordered = Graph.from_edge_index(random_graph(8, 8, 20), 8).reorder_nodes("degree")
    first = ordered.relabeled
    assert ordered.relabeled is first  # cached
    ordered.col[0] = (ordered.col[0] + 1) % 8  # an in-place edit: checked again, relabelled again
    assert ordered.relabeled is not first
    assert torch.equal(ordered.relabeled.edge_index, ordered.node_order.inverse[ordered.edge_index])
    assert "node_order=degree" in repr(ordered)
    assert ordered.with_self_loops().node_order is ordered.node_order


@pytest.mark.parametrize("method", METHODS)
def test_every_method_orders_empty_and_edgeless_graphs(method):
    for n in (0, 5):
        graph = Graph.from_edge_index(torch.zeros(2, 0, dtype=torch.long), n)
        order = node_order(graph, method)
        assert sorted(order.perm.tolist()) == list(range(n))
        assert graph.reorder_nodes(order).relabeled.num_edges == 0


@pytest.mark.parametrize("backend", backend_params(*_backends("gat")))
def test_assigning_a_new_order_drops_the_graphs_built_for_the_old_one(backend):
    plain = Graph.from_edge_index(random_graph(N, N, 100, seed=4), N)
    ordered = plain.reorder_nodes("degree")
    looped = ordered.with_self_loops()
    fn, tensors = _inputs(looped)["gat"]
    first = _run(fn, looped, "reference", tensors)  # builds and caches the relabelled graphs
    stale = ordered.relabeled
    ordered.node_order = node_order(plain, "locality")
    assert ordered.relabeled is not stale
    assert looped.node_order is ordered.node_order  # carried to the cached self-looped graph
    assert torch.equal(ordered.relabeled.edge_index, ordered.node_order.inverse[plain.edge_index])
    again = _run(fn, looped, backend, tensors)
    torch.testing.assert_close(again[0], first[0])
    torch.testing.assert_close(again[1], first[1])
    ordered.node_order = None
    assert ordered.relabeled is ordered and looped.node_order is None
    with pytest.raises(ValueError, match="does not fit"):
        ordered.node_order = NodeOrder(torch.arange(N - 1))
