import pytest
import torch
import torch_geometric.nn as pygnn

from graphattn import Graph
from graphattn.nn import DotProductConv, GATConv, GATv2Conv

from conftest import random_graph

LAYERS = {
    "gat": lambda: GATConv(8, 4, heads=2, edge_dim=3),
    "gatv2": lambda: GATv2Conv(8, 4, heads=2, edge_dim=3),
    "dot": lambda: DotProductConv(8, 4, heads=2, edge_dim=3),
}


def _inputs(n=30, e=120, seed=0):
    ei = random_graph(n, n, e, seed=seed)
    return torch.randn(n, 8), ei, torch.randn(ei.size(1), 3)


@pytest.mark.parametrize("name", LAYERS)
def test_graph_cache_reuses_and_invalidates(name):
    layer = LAYERS[name]().eval()
    x, ei, ea = _inputs()
    out1 = layer(x, ei, ea)
    g1 = layer._graph_cache.graph
    layer(x, ei, ea)
    assert layer._graph_cache.graph is g1  # same tensor: no re-sort
    ei2 = ei.clone()
    torch.testing.assert_close(layer(x, ei2, ea), out1)
    assert layer._graph_cache.graph is not g1  # a different tensor object rebuilds
    g2 = layer._graph_cache.graph
    ei2[0, 0] = (ei2[0, 0] + 1) % 30  # in-place edit bumps the version: rebuilt, never stale
    layer(x, ei2, ea)
    assert layer._graph_cache.graph is not g2
    fresh = LAYERS[name]()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x, ei2, ea), fresh.eval()(x, ei2, ea))


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(name, dtype):
    layer = LAYERS[name]().eval()
    x, ei, ea = _inputs()
    ref = layer(x, ei, ea)
    out = layer.to(dtype)(x.to(dtype), ei, ea.to(dtype))
    assert out.dtype == dtype
    tol = 1e-6 if dtype == torch.float64 else 5e-2
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", LAYERS)
def test_deterministic_mode(name):
    torch.use_deterministic_algorithms(True)
    try:
        layer = LAYERS[name]()
        x, ei, ea = _inputs()
        x.requires_grad_(True)
        outs, grads = [], []
        for _ in range(2):
            torch.manual_seed(3)
            layer.dropout = 0.3
            out = layer(x, ei, ea)
            out.sum().backward()
            outs.append(out.detach())
            grads.append(x.grad.clone())
            x.grad = None
        assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    finally:
        torch.use_deterministic_algorithms(False)


def test_lazy_in_channels():
    x, ei, _ = _inputs()
    for layer in (GATConv(-1, 4, heads=2), GATv2Conv(-1, 4), DotProductConv(-1, 4)):
        assert layer(x, ei).shape[0] == 30
    bipartite = GATConv((-1, -1), 4, heads=2)
    out = bipartite((x, x[:20]), Graph.from_edge_index(ei[:, ei[1] < 20], (30, 20)))
    assert out.shape == (20, 8)
    assert not torch.nn.parameter.is_lazy(bipartite.lin_dst.weight)


def test_gat_with_missing_destination_features():
    x, ei, _ = _inputs()
    pyg = pygnn.GATConv((8, 8), 4, heads=2, add_self_loops=False).eval()
    ours = GATConv.from_pyg(pyg).eval()
    g = Graph.from_edge_index(ei, 30)
    torch.testing.assert_close(ours((x, None), g), pyg((x, None), ei), atol=1e-5, rtol=1e-5)


def test_edge_attr_without_edge_dim_is_an_error():
    x, ei, ea = _inputs()
    for layer in (GATConv(8, 4), GATv2Conv(8, 4), DotProductConv(8, 4)):
        with pytest.raises(ValueError, match="without edge_dim"):
            layer(x, ei, ea)


def test_bad_inputs_to_layers():
    layer = GATConv(8, 4)
    x, ei, _ = _inputs()
    with pytest.raises(TypeError, match="integer dtype"):
        layer(x, ei.float())
    with pytest.raises(ValueError, match="shape"):
        layer(x[0], ei)
    with pytest.raises(TypeError, match="sparse adjacency"):
        layer(x, [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="edge_attr has 5 rows"):
        GATConv(8, 4, edge_dim=3)(x, ei, torch.randn(5, 3))


def test_repr():
    assert repr(GATConv(8, 4, heads=2)) == "GATConv(8, 4, heads=2)"
    assert repr(DotProductConv((8, 6), 4)) == "TransformerConv((8, 6), 4, heads=1)"  # one class, PyG's name


def test_in_a_pyg_style_model_trains():
    torch.manual_seed(0)
    x, ei, _ = _inputs(n=60, e=300)
    y = (x[:, 0] > 0).long()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = GATConv(8, 8, heads=4, dropout=0.1)
            self.c2 = GATConv(32, 2, heads=1)

        def forward(self, x, ei):
            return self.c2(torch.nn.functional.elu(self.c1(x, ei)), ei)

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    g = Graph.from_edge_index(ei, 60)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x, g), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


@pytest.mark.compile
@pytest.mark.parametrize("name", ["gat", "gatv2", "dot"])
def test_torch_compile_fullgraph_with_graph(name):
    torch._dynamo.reset()
    layer = LAYERS[name]().eval()
    x, ei, ea = _inputs()
    g = Graph.from_edge_index(ei, 30).with_self_loops() if name != "dot" else Graph.from_edge_index(ei, 30)
    g.edge_index  # materialise user-order index outside the compiled region
    ref = layer(x, g, ea)
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x, g, ea), ref, atol=1e-5, rtol=1e-5)
    x2 = x.clone().requires_grad_(True)
    compiled(x2, g, ea).sum().backward()
    assert torch.isfinite(x2.grad).all()


def test_a_layer_that_has_cached_a_graph_deep_copies_and_pickles():
    """The graph cache holds a lock and weak references: a copy starts with an empty cache
    (``to_hetero`` and ``copy.deepcopy`` of a trained model copy every layer)."""
    import copy
    import pickle

    conv = GATConv(8, 4, heads=2)
    x, ei = torch.randn(10, 8), random_graph(10, 10, 30, seed=0)
    out = conv(x, ei)
    for clone in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        assert clone._graph_cache.graph is None
        torch.testing.assert_close(clone(x, ei), out)
