"""Parity with PyG: a graphattn layer built by from_pyg equals the PyG layer
(outputs, attention weights, returned edge_index, gradients) within 1e-5 in fp32."""

import itertools

import pytest
import torch
import torch_geometric.nn as pygnn

from graphattn import Graph
from graphattn.nn import DotProductConv, GATConv, GATv2Conv

from conftest import random_graph

N, E, IN = 40, 220, 12
TOL = dict(atol=1e-5, rtol=1e-5)


def _data(bipartite=False, edge_dim=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    if bipartite:
        ns, nd = 30, 20
        ei = random_graph(ns, nd, E, seed=seed, self_loops=False)
        x = (torch.randn(ns, IN, generator=g), torch.randn(nd, IN + 3, generator=g))
    else:
        ei = random_graph(N, N, E, seed=seed)
        x = torch.randn(N, IN, generator=g)
    ea = torch.randn(ei.size(1), edge_dim, generator=g) if edge_dim else None
    return x, ei, ea


def _check(pyg, ours, x, ei, ea, graph_input=False):
    pyg.eval()
    ours.eval()
    out_p, (ei_p, a_p) = pyg(x, ei, ea, return_attention_weights=True)
    ours_ei = ei
    if graph_input:
        ns, nd = (x[0].size(0), x[1].size(0)) if isinstance(x, tuple) else (x.size(0), x.size(0))
        ours_ei = Graph.from_edge_index(ei, (ns, nd))
    out_o, (ei_o, a_o) = ours(x, ours_ei, ea, return_attention_weights=True)
    torch.testing.assert_close(out_o, out_p, **TOL)
    assert torch.equal(ei_o, ei_p)
    torch.testing.assert_close(a_o, a_p, **TOL)
    # gradients of every parameter and of the inputs
    ours.train()
    pyg.train()
    xs = [t.detach().requires_grad_() for t in (x if isinstance(x, tuple) else (x,))]
    xin = tuple(xs) if isinstance(x, tuple) else xs[0]
    w = torch.randn_like(out_p)
    (pyg(xin, ei, ea) * w).sum().backward()
    gp = [t.grad.clone() for t in xs]
    for t in xs:
        t.grad = None
    (ours(xin, ours_ei, ea) * w).sum().backward()
    for a, b in zip(gp, [t.grad for t in xs]):
        torch.testing.assert_close(b, a, **TOL)
    pp = dict(pyg.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, pp[name].grad, **TOL, msg=lambda m: f"{name}: {m}")


GAT_GRID = list(itertools.product([1, 3], [True, False], [True, False], [None, 3], [False, True], [True, False]))


@pytest.mark.parametrize("heads,concat,loops,edge_dim,residual,bias", GAT_GRID)
def test_gatconv(heads, concat, loops, edge_dim, residual, bias):
    x, ei, ea = _data(edge_dim=edge_dim)
    pyg = pygnn.GATConv(
        IN,
        5,
        heads=heads,
        concat=concat,
        add_self_loops=loops,
        edge_dim=edge_dim,
        residual=residual,
        bias=bias,
        negative_slope=0.15,
    )
    _check(pyg, GATConv.from_pyg(pyg), x, ei, ea)


@pytest.mark.parametrize("heads,concat,loops,edge_dim,residual,bias", GAT_GRID)
def test_gatv2conv(heads, concat, loops, edge_dim, residual, bias):
    x, ei, ea = _data(edge_dim=edge_dim)
    pyg = pygnn.GATv2Conv(
        IN,
        5,
        heads=heads,
        concat=concat,
        add_self_loops=loops,
        edge_dim=edge_dim,
        residual=residual,
        bias=bias,
        share_weights=(heads == 3 and bias),
    )
    _check(pyg, GATv2Conv.from_pyg(pyg), x, ei, ea)


@pytest.mark.parametrize("fill_value", ["mean", "add", "max", "min", "mul", 0.5, "tensor"])
@pytest.mark.parametrize("cls", ["GATConv", "GATv2Conv"])
def test_fill_values(cls, fill_value):
    x, ei, ea = _data(edge_dim=3, seed=2)
    fill = torch.tensor([0.1, -0.2, 0.3]) if fill_value == "tensor" else fill_value
    pyg = getattr(pygnn, cls)(IN, 4, heads=2, edge_dim=3, fill_value=fill)
    ours = {"GATConv": GATConv, "GATv2Conv": GATv2Conv}[cls].from_pyg(pyg)
    _check(pyg, ours, x, ei, ea)


@pytest.mark.parametrize("loops", [True, False])
@pytest.mark.parametrize("cls", ["GATConv", "GATv2Conv", "TransformerConv"])
def test_bipartite(cls, loops):
    x, ei, ea = _data(bipartite=True, edge_dim=3)
    ins = (IN, IN + 3)
    if cls == "TransformerConv":
        pyg = pygnn.TransformerConv(ins, 4, heads=2, edge_dim=3)
        ours = DotProductConv.from_pyg(pyg)
    else:
        pyg = getattr(pygnn, cls)(ins, 4, heads=2, add_self_loops=loops, edge_dim=3, residual=True)
        ours = {"GATConv": GATConv, "GATv2Conv": GATv2Conv}[cls].from_pyg(pyg)
    _check(pyg, ours, x, ei, ea)
    _check(pyg, ours, x, ei, ea, graph_input=True)


TR_GRID = list(itertools.product([1, 3], [True, False], [True, False], [None, 3], [True, False], [True, False]))


@pytest.mark.parametrize("heads,concat,beta,edge_dim,bias,root_weight", TR_GRID)
def test_transformerconv(heads, concat, beta, edge_dim, bias, root_weight):
    x, ei, ea = _data(edge_dim=edge_dim)
    pyg = pygnn.TransformerConv(
        IN, 5, heads=heads, concat=concat, beta=beta, edge_dim=edge_dim, bias=bias, root_weight=root_weight
    )
    _check(pyg, DotProductConv.from_pyg(pyg), x, ei, ea)


@pytest.mark.parametrize("cls", ["GATConv", "GATv2Conv", "TransformerConv"])
def test_graph_input_equals_edge_index_input(cls):
    x, ei, ea = _data(edge_dim=3, seed=5)
    pyg = getattr(pygnn, cls)(IN, 4, heads=2, edge_dim=3)
    ours = {"GATConv": GATConv, "GATv2Conv": GATv2Conv, "TransformerConv": DotProductConv}[cls].from_pyg(pyg)
    _check(pyg, ours, x, ei, ea, graph_input=True)


def test_from_pyg_rejects_other_layers():
    with pytest.raises(TypeError, match="GATConv"):
        GATConv.from_pyg(pygnn.GCNConv(3, 3))
    with pytest.raises(TypeError, match="TransformerConv"):
        DotProductConv.from_pyg(pygnn.GATConv(3, 3))


def test_state_dicts_are_interchangeable():
    pyg = pygnn.GATConv(IN, 4, heads=2, edge_dim=3, residual=True)
    ours = GATConv(IN, 4, heads=2, edge_dim=3, residual=True)
    ours.load_state_dict(pyg.state_dict())
    pyg.load_state_dict(ours.state_dict())
