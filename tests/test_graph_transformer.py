"""Graph-level patterns from a PyG batch vector, the grouped dense path, and GPSConv
(parity with PyG's GPSConv on batches of unequal graphs)."""

import copy
import gc
import math
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphattn import ops, patterns
from graphattn.ops import dense

pyg_nn = pytest.importorskip("torch_geometric.nn")
from graphattn.nn import GPSConv  # noqa: E402


def batch_of(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))


def ring_edges(sizes):
    """Both directions of a ring inside each graph (molecule-like degree 2)."""
    batch = batch_of(sizes)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(sizes).cumsum(0)])
    i = torch.arange(batch.numel())
    nxt = torch.where(i + 1 < ptr[batch + 1], i + 1, ptr[batch])
    return torch.cat([torch.stack([i, nxt]), torch.stack([nxt, i])], 1)


def dense_adjacency(graph):
    adj = torch.zeros(graph.num_dst, graph.num_src, dtype=torch.long)
    adj.index_put_(
        (graph.edge_index[1], graph.edge_index[0]), torch.ones(graph.num_edges, dtype=torch.long), accumulate=True
    )
    return adj


# ----------------------------------------------------------------- patterns
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=7))
def test_complete_per_graph_is_the_block_diagonal_mask(sizes):
    batch = batch_of(sizes)
    graph = patterns.complete_per_graph(batch, batch.numel())
    same_graph = (batch.unsqueeze(0) == batch.unsqueeze(1)).long()
    assert torch.equal(dense_adjacency(graph), same_graph)
    # A batch vector cannot show trailing empty graphs (PyG's to_dense_batch cannot either).
    assert graph.pattern.kind == "complete" and graph.pattern.batch == tuple(torch.bincount(batch).tolist())
    graph.validate()


def test_complete_per_graph_without_batch_is_one_graph():
    graph = patterns.complete_per_graph(None, 5)
    assert graph.num_edges == 25 and graph.pattern.batch == (5,)


@pytest.mark.parametrize(
    "batch, message",
    [
        (torch.tensor([0, 1, 0]), "sorted"),
        (torch.tensor([0, 0]), "2 entries for 3 nodes"),
        (torch.tensor([-1, 0, 0]), "negative"),
        (torch.tensor([0.0, 0.0, 0.0]), "int64"),
    ],
)
def test_bad_batch_vectors_are_named(batch, message):
    with pytest.raises(ValueError, match=message):
        patterns.complete_per_graph(batch, 3)


def test_complete_attention_too_large_points_to_the_sparse_pattern():
    with pytest.raises(ValueError, match="sparse_global"):
        patterns.complete_per_graph(torch.zeros(100_000, dtype=torch.long), 100_000)


def test_expander_edges_stay_inside_each_graph_and_are_symmetric():
    sizes = [1, 7, 30, 2, 12]
    batch = batch_of(sizes)
    graph = patterns.expander_per_graph(batch, batch.numel(), degree=4, seed=3)
    src, dst = graph.edge_index
    assert torch.equal(batch[src], batch[dst]) and not bool((src == dst).any())
    adj = dense_adjacency(graph)
    assert torch.equal(adj, adj.t()) and int(adj.max()) == 1
    assert int(adj.sum(1).max()) <= 4 and int(adj[8:38].sum(1).min()) >= 1  # the 30-node graph: every node linked
    again = patterns.expander_per_graph(batch, batch.numel(), degree=4, seed=3)
    assert torch.equal(again.edge_index, graph.edge_index)
    other = patterns.expander_per_graph(batch, batch.numel(), degree=4, seed=4)
    assert not torch.equal(other.edge_index, graph.edge_index)
    with pytest.raises(ValueError, match="even"):
        patterns.expander_per_graph(batch, batch.numel(), degree=3)


def test_virtual_nodes_link_each_graph_to_its_own_global_nodes():
    sizes = [2, 3]
    graph = patterns.virtual_nodes(batch_of(sizes), 5, per_graph=2)
    assert graph.num_src == graph.num_dst == 5 + 2 * 2
    adj = dense_adjacency(graph)
    expected = torch.zeros(9, 9, dtype=torch.long)
    for g, nodes in enumerate(([0, 1], [2, 3, 4])):
        virtual = [5 + 2 * g, 6 + 2 * g]
        for v in virtual:
            for n in nodes:
                expected[v, n] = expected[n, v] = 1
            for w in virtual:
                expected[v, w] = 1
    assert torch.equal(adj, expected)


def test_sparse_global_unites_local_expander_and_virtual_edges():
    sizes = [6, 9]
    batch = batch_of(sizes)
    local = ring_edges(sizes)
    graph = patterns.sparse_global(batch, 15, local, degree=2, virtual_per_graph=1, seed=0)
    adj = dense_adjacency(graph)
    assert int(adj.max()) == 1 and graph.num_src == 17
    assert bool((adj[local[1], local[0]] == 1).all())
    expander = patterns.expander_per_graph(batch, 15, degree=2, seed=0).edge_index
    assert bool((adj[expander[1], expander[0]] == 1).all())
    assert int(adj[15, :6].sum()) == 6 and int(adj[15, 6:15].sum()) == 0 and int(adj[16, 6:15].sum()) == 9


# ----------------------------------------------------------------- grouped dense path
@pytest.mark.parametrize("sizes", [[3, 70, 1, 70, 0, 120], [5, 5, 5], [1], [96, 64]])
def test_complete_blocks_of_any_sizes_through_sdpa_equal_reference(sizes):
    torch.manual_seed(0)
    batch = batch_of(sizes)
    N, H, D = batch.numel(), 2, 3
    graph = patterns.complete_per_graph(batch, N)
    q, k, v = (torch.randn(N, H, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = ops.dot_product_attention(q, k, v, graph)
    assert ops.last_backend("dot_product") == "dense"
    grads = torch.autograd.grad(out.pow(2).sum(), (q, k, v))
    ref = ops.dot_product_attention(q, k, v, graph, backend="reference")
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), (q, k, v))
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_the_dense_path_never_builds_the_edges():
    batch = batch_of([20] * 6 + [300] * 2)
    graph = patterns.complete_per_graph(batch, batch.numel())
    assert dense.size_groups(graph) is not None
    q = torch.randn(batch.numel(), 2, 8, requires_grad=True)
    ops.dot_product_attention(q, q, q, graph).sum().backward()
    assert ops.last_backend("dot_product") == "dense" and not graph.is_materialized
    _, weights = ops.dot_product_attention(q, q, q, graph, return_weights=True)  # SDPA cannot give weights
    assert graph.is_materialized and weights.shape == (6 * 400 + 2 * 90_000, 2)


@pytest.mark.parametrize(
    "sizes, reason",
    [
        (list(range(64, 64 + dense.MAX_GROUPS + 1)), "distinct sizes"),
        ([10, 30, 25, 12, 40], "sparse kernel is faster"),  # molecule-sized graphs
    ],
)
def test_other_complete_batches_take_the_sparse_kernel_and_say_why(sizes, reason):
    batch = batch_of(sizes)
    graph = patterns.complete_per_graph(batch, batch.numel())
    q = torch.randn(batch.numel(), 1, 4)
    out = ops.dot_product_attention(q, q, q, graph)
    assert ops.last_backend("dot_product") != "dense"
    assert reason in ops.why_not("dot_product")["dense"]
    torch.testing.assert_close(out, ops.dot_product_attention(q, q, q, graph, backend="reference"))


def test_a_mislabelled_complete_graph_is_not_trusted():
    claimed = patterns.complete_per_graph(batch_of([3, 4]), 7).pattern
    liar = patterns.complete_per_graph(batch_of([2, 5]), 7)
    liar.pattern = claimed  # 29 edges where the claimed sizes make 25: the claim is refused
    q = torch.randn(7, 1, 4, dtype=torch.float64)
    assert dense.size_groups(liar) is None
    ops.dot_product_attention(q, q, q, liar)
    assert ops.last_backend("dot_product") != "dense"


# ----------------------------------------------------------------- GPSConv
def pyg_local(kind, channels, heads):
    if kind == "gat":
        return pyg_nn.GATConv(channels, channels // heads, heads=heads)
    if kind == "gatv2":
        return pyg_nn.GATv2Conv(channels, channels // heads, heads=heads)
    if kind == "transformer":
        return pyg_nn.TransformerConv(channels, channels // heads, heads=heads)
    if kind == "gin":
        return pyg_nn.GINConv(torch.nn.Sequential(torch.nn.Linear(channels, channels), torch.nn.ReLU()))
    return None


@pytest.mark.parametrize(
    "kind, converted",
    [
        ("gat", "GATConv"),
        ("gatv2", "GATv2Conv"),
        ("transformer", "TransformerConv"),
        ("gin", "GINConv"),
        ("none", "NoneType"),
    ],
)
def test_from_pyg_matches_pyg_on_unequal_graphs(kind, converted):
    torch.manual_seed(0)
    sizes = [5, 17, 3, 30, 1, 12, 17]
    batch, edges = batch_of(sizes), ring_edges(sizes)
    x = torch.randn(batch.numel(), 32)
    theirs = pyg_nn.GPSConv(32, pyg_local(kind, 32, 4), heads=4, dropout=0.1, attn_kwargs={"dropout": 0.2})
    theirs(x, edges, batch)  # batch-norm running statistics away from their initial values
    ours = GPSConv.from_pyg(theirs)
    assert type(ours.conv).__name__ == converted
    assert converted == "NoneType" or type(ours.conv).__module__.startswith(
        "graphattn" if kind != "gin" else "torch_geometric"
    )
    theirs.eval(), ours.eval()
    torch.testing.assert_close(ours(x, edges, batch), theirs(x, edges, batch), atol=1e-5, rtol=1e-5)
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_training_mode_outputs_and_gradients_match_pyg():
    torch.manual_seed(1)
    sizes = [4, 9, 9, 2]
    batch, edges = batch_of(sizes), ring_edges(sizes)
    theirs = pyg_nn.GPSConv(16, pyg_nn.GATConv(16, 4, heads=4), heads=2)
    ours = GPSConv.from_pyg(theirs)
    x1 = torch.randn(batch.numel(), 16, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    a, b = theirs(x1, edges, batch), ours(x2, edges, batch)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    (a * torch.arange(a.numel()).view_as(a).sin()).sum().backward()
    (b * torch.arange(b.numel()).view_as(b).sin()).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.attn.in_proj_weight.grad, theirs.attn.in_proj_weight.grad, atol=1e-5, rtol=1e-5)


def test_edge_features_reach_the_local_conv():
    torch.manual_seed(2)
    sizes = [6, 11]
    batch, edges = batch_of(sizes), ring_edges(sizes)
    edge_attr = torch.randn(edges.size(1), 3)
    theirs = pyg_nn.GPSConv(8, pyg_nn.GATConv(8, 4, heads=2, edge_dim=3), heads=2).eval()
    ours = GPSConv.from_pyg(theirs).eval()
    x = torch.randn(17, 8)
    torch.testing.assert_close(
        ours(x, edges, batch, edge_attr=edge_attr), theirs(x, edges, batch, edge_attr=edge_attr), atol=1e-5, rtol=1e-5
    )


def test_sparse_global_pattern_trains_and_scales():
    torch.manual_seed(3)
    sizes = [7, 20]
    batch, edges = batch_of(sizes), ring_edges(sizes)
    layer = GPSConv(8, None, heads=2, global_pattern="sparse", expander_degree=2, virtual_nodes=2, norm=None).double()
    x = torch.randn(27, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t, edges, batch), (x,), eps=1e-6, atol=1e-5)
    layer(x, edges, batch).sum().backward()
    assert layer.virtual.grad is not None and bool(layer.virtual.grad.abs().sum() > 0)
    graph = layer.global_graph(27, edges, batch, x.device)
    assert graph.num_src == 27 + 2 * 2 and graph.pattern.kind == "sparse_global"
    big = 20_000  # complete attention would need 4e8 pairs; the sparse pattern has ~7 per node
    big_edges = ring_edges([big])
    layer = GPSConv(8, pyg_nn.GATConv(8, 4, heads=2), heads=2, global_pattern="sparse")
    out = layer(torch.randn(big, 8), big_edges, None)
    assert out.shape == (big, 8) and bool(torch.isfinite(out).all())
    assert layer.global_graph(big, big_edges, None, out.device).num_edges < 10 * big


def test_pattern_is_shared_by_layers_per_batch_and_rebuilt_when_it_changes():
    layer = GPSConv(4, None, heads=1)
    batch = batch_of([2, 3])
    first = layer.global_graph(5, None, batch, torch.device("cpu"))
    assert layer.global_graph(5, None, batch, torch.device("cpu")) is first
    assert GPSConv(4, None, heads=2).global_graph(5, None, batch, torch.device("cpu")) is first
    assert GPSConv(4, None, global_pattern="sparse").global_graph(5, None, batch, torch.device("cpu")) is not first
    batch[2:] = 0
    batch[:] = torch.tensor([0, 0, 0, 0, 1])
    rebuilt = layer.global_graph(5, None, batch, torch.device("cpu"))
    assert rebuilt is not first and rebuilt.pattern.batch == (4, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attn_type": "bigbird"}, "attn_type"),
        ({"attn_type": "performer", "global_pattern": "sparse"}, "global_pattern"),
        ({"attn_type": "performer", "attn_kwargs": {"head_channels": 0}}, "head_channels"),
        ({"global_pattern": "full"}, "global_pattern"),
        ({"heads": 0}, "heads"),
        ({"dropout": 1.5}, "dropout"),
        ({"global_pattern": "sparse", "virtual_nodes": -1}, "virtual_nodes"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPSConv(8, None, **kwargs)


def test_from_pyg_refuses_other_modules():
    with pytest.raises(TypeError, match="GPSConv"):
        GPSConv.from_pyg(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("form", ["graph", "edge_index"])
def test_a_local_adjacency_edited_in_place_is_not_served_stale(form):
    """The sparse pattern holds the local edges: an edit to them (in a Graph's arrays or an
    edge_index tensor) gives what a fresh layer gives on the edited input."""
    from graphattn import Graph

    torch.manual_seed(4)
    sizes = [6, 9]
    batch, edges = batch_of(sizes), ring_edges(sizes)
    layer = GPSConv(8, None, heads=2, global_pattern="sparse", expander_degree=2, norm=None).double().eval()
    x = torch.randn(15, 8, dtype=torch.float64)
    local = Graph.from_edge_index(edges.clone(), 15) if form == "graph" else edges.clone()
    before = layer(x, local, batch)
    edited = local.col if form == "graph" else local[0]
    edited[edited == 1] = 4  # sources 1 -> 4 (same graph), in place
    fresh_input = (
        Graph.from_edge_index(torch.stack([local.col, local.row]).clone(), 15) if form == "graph" else local.clone()
    )
    expected = copy.deepcopy(layer)(x, fresh_input, batch.clone())
    assert not torch.allclose(expected, before)  # the edit changes the answer
    torch.testing.assert_close(layer(x, local, batch), expected, atol=0, rtol=0)


def test_the_pattern_cache_keeps_no_batch_alive():
    layer = GPSConv(4, None, heads=1, global_pattern="sparse", expander_degree=2, norm=None)
    batch, edges = batch_of([3, 4]), ring_edges([3, 4])
    layer(torch.randn(7, 4), edges, batch)
    batch_ref, edges_ref = weakref.ref(batch), weakref.ref(edges)
    del batch, edges
    gc.collect()
    assert batch_ref() is None and edges_ref() is None


def test_threads_sharing_a_batch_build_its_pattern_once(monkeypatch):
    """Misses racing on one batch wait for the first build instead of each building."""
    import threading
    import time

    from graphattn.nn import gps

    builds, real = [], patterns.complete_per_graph

    def slow_build(*args, **kwargs):
        builds.append(1)
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(gps.patterns, "complete_per_graph", slow_build)
    layer, batch = GPSConv(4, None, heads=1), batch_of([3, 4])
    threads = [
        threading.Thread(target=layer.global_graph, args=(7, None, batch, torch.device("cpu"))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1


@pytest.mark.parametrize("conv", ["gin", "gat", "none"])
@pytest.mark.parametrize("attn_type", ["multihead", "performer"])
def test_repr_is_pygs_for_pygs_arguments(conv, attn_type):
    kwargs = {"heads": 4, "attn_type": attn_type}
    theirs = pyg_nn.GPSConv(16, pyg_local(conv, 16, 4), **kwargs)
    assert repr(GPSConv(16, pyg_local(conv, 16, 4), **kwargs)) == repr(theirs)
    assert repr(GPSConv.from_pyg(theirs)) == repr(theirs)  # graphattn's local layers print as PyG's do
    assert repr(GPSConv(16, None, global_pattern="sparse")).endswith("attn_type=multihead, global_pattern=sparse)")


# ----------------------------------------------------------------- PyG's global attentions
from torch_geometric.nn import attention as pyg_attention  # noqa: E402

from graphattn.nn import global_attention  # noqa: E402


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("kernel", [torch.nn.ReLU(), torch.nn.Softplus()])
def test_performer_from_pyg_matches_pyg_values_and_gradients(qkv_bias, kernel):
    torch.manual_seed(5)
    theirs = pyg_attention.PerformerAttention(16, 4, head_channels=8, kernel=kernel, qkv_bias=qkv_bias)
    ours = global_attention.PerformerAttention.from_pyg(theirs)
    assert torch.equal(ours.fast_attn.projection_matrix, theirs.fast_attn.projection_matrix)
    assert ours.state_dict().keys() == theirs.state_dict().keys() and repr(ours) == repr(theirs)
    x1 = torch.randn(3, 11, 16, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    a, b = theirs(x1), ours(x2)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    a.sin().sum().backward(), b.sin().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.q.weight.grad, theirs.q.weight.grad, atol=1e-5, rtol=1e-5)


def test_performer_padding_is_no_key():
    """A padded graph gives what PyG gives for that graph alone (PyG's own padded keys
    enter its normaliser, so there the answer depends on the batch's largest graph)."""
    torch.manual_seed(6)
    theirs = pyg_attention.PerformerAttention(8, 2, head_channels=4, qkv_bias=True).eval()
    ours = global_attention.PerformerAttention.from_pyg(theirs).eval()
    x, mask = torch.randn(2, 9, 8), torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    got = ours(x, mask)
    torch.testing.assert_close(got[1, :5], theirs(x[1:, :5])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0], theirs(x[:1])[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mask"):
        ours(x, mask.long())


def test_performer_redraws_and_resets_like_pyg():
    ours = global_attention.PerformerAttention(8, 2, head_channels=6)
    assert ours.fast_attn.projection_matrix.shape == (int(6 * math.log(6)), 6)
    before = ours.fast_attn.projection_matrix.clone()
    ours.redraw_projection_matrix()
    assert not torch.equal(before, ours.fast_attn.projection_matrix)
    rows = ours.fast_attn.projection_matrix[:6]  # one full block: orthonormal rows
    torch.testing.assert_close(rows @ rows.t(), torch.eye(6), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        global_attention.PerformerAttention(9, 2)


@pytest.mark.parametrize("sizes", [[6, 6, 6], [5, 17, 3, 1]])
def test_gps_performer_from_pyg_matches_pyg(sizes):
    """Equal graphs (no padding): PyG's batch output. Unequal ones: each graph's own output."""
    torch.manual_seed(7)
    batch, edges = batch_of(sizes), ring_edges(sizes)
    x = torch.randn(batch.numel(), 16)
    theirs = pyg_nn.GPSConv(
        16,
        pyg_nn.GATConv(16, 4, heads=4),
        heads=4,
        attn_type="performer",
        attn_kwargs={"head_channels": 8, "qkv_bias": True},
    )
    theirs(x, edges, batch)  # batch-norm running statistics away from their initial values
    ours = GPSConv.from_pyg(theirs).eval()
    theirs.eval()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    got = ours(x, edges, batch)
    if len(set(sizes)) == 1:
        torch.testing.assert_close(got, theirs(x, edges, batch), atol=1e-5, rtol=1e-5)
    ptr = [0] + torch.tensor(sizes).cumsum(0).tolist()
    for a, b in zip(ptr[:-1], ptr[1:]):
        mine = (edges >= a).all(0) & (edges < b).all(0)
        alone = theirs(x[a:b], edges[:, mine] - a, None)
        torch.testing.assert_close(got[a:b], alone, atol=1e-5, rtol=1e-5)


def test_gps_performer_trains_like_pyg():
    torch.manual_seed(8)
    batch, edges = batch_of([7, 7]), ring_edges([7, 7])
    theirs = pyg_nn.GPSConv(
        8, pyg_nn.GINConv(torch.nn.Linear(8, 8)), heads=2, attn_type="performer", attn_kwargs={"head_channels": 4}
    )
    ours = GPSConv.from_pyg(theirs)
    x1 = torch.randn(14, 8, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    a, b = theirs(x1, edges, batch), ours(x2, edges, batch)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    a.cos().sum().backward(), b.cos().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.attn.k.weight.grad, theirs.attn.k.weight.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("qk_shared", [True, False])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_polynormer_from_pyg_matches_pyg_values_and_gradients(qk_shared, qkv_bias):
    torch.manual_seed(9)
    theirs = pyg_attention.PolynormerAttention(12, 3, head_channels=5, beta=0.7, qkv_bias=qkv_bias, qk_shared=qk_shared)
    ours = global_attention.PolynormerAttention.from_pyg(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys() and repr(ours) == repr(theirs)
    x1 = torch.randn(2, 13, 12, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    a, b = theirs(x1), ours(x2)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    a.sin().sum().backward(), b.sin().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.k.weight.grad, theirs.k.weight.grad, atol=1e-5, rtol=1e-5)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[0, 4:] = False  # padding is no key: graph 0 alone
    torch.testing.assert_close(ours(x2, mask)[0, :4], theirs(x1[:1, :4])[0], atol=1e-5, rtol=1e-5)


def test_qformer_from_pyg_matches_pyg_values_and_gradients():
    torch.manual_seed(10)
    theirs = pyg_attention.QFormer(8, 16, 5, num_heads=2, num_layers=2)
    ours = global_attention.QFormer.from_pyg(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys() and repr(ours) == repr(theirs)
    x1 = torch.randn(3, 7, 8, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    a, b = theirs(x1), ours(x2)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    a.sin().sum().backward(), b.sin().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        ours.encoder.layers[1].self_attn.in_proj_weight.grad,
        theirs.encoder.layers[1].self_attn.in_proj_weight.grad,
        atol=1e-5,
        rtol=1e-5,
    )
