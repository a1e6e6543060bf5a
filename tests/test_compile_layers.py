"""``torch.compile(fullgraph=True)`` of every public layer: no graph break anywhere in
dispatch (backend availability is decided at import, never by an import-system call
inside a traced function), and the compiled forward and backward equal eager. Run on
every supported torch (``make test`` and ``make test-compat``)."""

import pytest
import torch

from graphattn import Graph, patterns
from graphattn.nn import (
    AGNNConv,
    DotProductConv,
    GATConv,
    GATv2Conv,
    GPSConv,
    GraphTransformerEncoderLayer,
    LinearAttention,
    MultiheadGraphAttention,
    TransformerConv,
)

from conftest import random_graph

pytestmark = pytest.mark.compile

N = 24


def _graph_inputs():
    ei = random_graph(N, N, 96, seed=3)
    return torch.randn(N, 8), Graph.from_edge_index(ei, N), torch.randn(ei.size(1), 3)


def _graph_case(make, with_edges=True):
    def case():
        x, g, ea = _graph_inputs()
        layer = make()
        args = (x, g, ea) if with_edges else (x, g)
        return layer, args

    return case


def _gps_case():
    x, g, _ = _graph_inputs()
    batch = torch.cat([torch.zeros(10, dtype=torch.long), torch.ones(N - 10, dtype=torch.long)])
    return GPSConv(8, GATConv(8, 8), heads=2), (x, g, batch)


def _sequence_case(make):
    def case():
        return make(), (torch.randn(2, 12, 16),) * 3

    return case


def _encoder_case():
    layer = GraphTransformerEncoderLayer(
        16,
        2,
        dim_feedforward=32,
        dropout=0.0,
        batch_first=True,
        pattern=lambda Lq, Lk: patterns.sliding_window(Lq, 3, 3),
    )
    return layer, (torch.randn(2, 12, 16),)


CASES = {
    "GATConv": _graph_case(lambda: GATConv(8, 4, heads=2, edge_dim=3)),
    "GATv2Conv": _graph_case(lambda: GATv2Conv(8, 4, heads=2, edge_dim=3)),
    "TransformerConv": _graph_case(lambda: TransformerConv(8, 4, heads=2, edge_dim=3)),
    "DotProductConv": _graph_case(lambda: DotProductConv(8, 4, heads=2, edge_dim=3)),
    "AGNNConv": _graph_case(lambda: AGNNConv(), with_edges=False),
    "GPSConv": _gps_case,
    "MultiheadGraphAttention": _sequence_case(lambda: MultiheadGraphAttention(16, 2, batch_first=True)),
    "MultiheadGraphAttention-window": _sequence_case(
        lambda: MultiheadGraphAttention(
            16, 2, batch_first=True, pattern=lambda Lq, Lk: patterns.sliding_window(Lq, 2, 2)
        )
    ),
    "LinearAttention": _sequence_case(lambda: LinearAttention(16, 2, batch_first=True)),
    "GraphTransformerEncoderLayer": _encoder_case,
}


# Layers that build their attention graph inside forward do it eagerly, behind
# torch.compiler.disable, and so compile with that one graph break (the attention itself is
# traced): GPSConv from the values of ``batch`` (which node is in which graph), the sequence
# layers from a user's pattern callable and the masks' values. The graph layers take a
# prebuilt Graph and trace whole.
NOT_FULLGRAPH = {"GPSConv", "MultiheadGraphAttention", "MultiheadGraphAttention-window", "GraphTransformerEncoderLayer"}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", CASES)
def test_fullgraph_compile_matches_eager(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer, args = CASES[name]()
    layer.eval()
    eager = _first(layer(*args))  # builds cached graphs and patterns outside the compiled region
    compiled = torch.compile(layer, fullgraph=name not in NOT_FULLGRAPH, dynamic=False)
    torch.testing.assert_close(_first(compiled(*args)), eager, atol=1e-5, rtol=1e-5)
    leaves = [
        a.detach().clone().requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point() else a for a in args
    ]
    _first(compiled(*leaves)).sum().backward()
    grads = [a.grad for a in leaves if torch.is_tensor(a) and a.requires_grad]
    eager_leaves = [
        a.detach().clone().requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point() else a for a in args
    ]
    _first(layer(*eager_leaves)).sum().backward()
    eager_grads = [a.grad for a in eager_leaves if torch.is_tensor(a) and a.requires_grad]
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
