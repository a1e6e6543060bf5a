import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch_geometric.utils import softmax as pyg_softmax

from graphattn import Graph, edge_softmax

from conftest import backend_params, needs_backend, random_graph


@pytest.mark.parametrize("shape", [(), (4,), (2, 3)])
def test_matches_pyg_softmax(shape):
    ei = random_graph(40, 40, 300)
    s = torch.randn((ei.size(1),) + shape) * 3
    g = Graph.from_edge_index(ei, 40)
    ref = pyg_softmax(s, ei[1], num_nodes=40)
    torch.testing.assert_close(edge_softmax(s, g), ref)
    torch.testing.assert_close(edge_softmax(s, ei[1], num_nodes=40), ref)


@given(
    n=st.integers(1, 12),
    e=st.integers(0, 40),
    h=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_property_rows_are_softmaxes(n, e, h, seed):
    gen = torch.Generator().manual_seed(seed)
    dst = torch.randint(0, n, (e,), generator=gen)
    s = torch.randn(e, h, generator=gen, dtype=torch.float64) * 10
    y = edge_softmax(s, dst, num_nodes=n)
    for i in range(n):
        m = dst == i
        if m.any():
            torch.testing.assert_close(y[m], torch.softmax(s[m], dim=0))


def test_huge_and_minus_inf_logits_never_nan():
    dst = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    s = torch.tensor([1e30, -1e30, float("-inf"), float("-inf"), float("-inf"), 3.0, 3.0])
    y = edge_softmax(s, dst, num_nodes=4)  # node 3: no in-edges
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y, torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]))
    s.requires_grad_(True)
    edge_softmax(s, dst, num_nodes=4).pow(2).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_empty():
    y = edge_softmax(torch.empty(0, 2), torch.empty(0, dtype=torch.long), num_nodes=3)
    assert y.shape == (0, 2)


def test_gradcheck_float64():
    ei = random_graph(8, 8, 30)
    g = Graph.from_edge_index(ei, 8)
    s = torch.randn(ei.size(1), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: edge_softmax(t, g), (s,))
    assert torch.autograd.gradgradcheck(lambda t: edge_softmax(t, g), (s,))


def test_backward_saves_only_the_output():
    dst = torch.tensor([0, 0, 1])
    s = torch.randn(3, 2, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = edge_softmax(s, dst, num_nodes=2)
    floats = [t for t in saved if t.is_floating_point()]
    assert len(floats) == 1 and floats[0].shape == y.shape
    torch.testing.assert_close(floats[0], y)


def test_half_precision_computed_in_fp32():
    dst = torch.tensor([0, 0, 0, 1])
    s = torch.tensor([100.0, 99.0, 98.0, 5.0])
    for dt in (torch.float16, torch.bfloat16):
        y = edge_softmax(s.to(dt), dst)
        assert y.dtype == dt
        torch.testing.assert_close(y.float(), edge_softmax(s, dst), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: edge_softmax(torch.randn(3), torch.tensor([0, 1])), ValueError, r"index must have shape \[3\]"),
        (lambda: edge_softmax(torch.randn(2), torch.tensor([0.0, 1.0])), TypeError, "integer"),
        (lambda: edge_softmax(torch.tensor([1, 2]), torch.tensor([0, 1])), TypeError, "floating-point"),
        (lambda: edge_softmax(torch.randn(2), torch.tensor([0, 5]), num_nodes=3), ValueError, "out of range"),
        (
            lambda: edge_softmax(torch.randn(5), Graph.from_edge_index(torch.tensor([[0], [1]]))),
            ValueError,
            "5 rows but the graph has 1 edges",
        ),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


from graphattn import ops  # noqa: E402

GRAPH_BACKENDS = backend_params("reference", "cpu")  # a backend that cannot run here skips, saying why


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@pytest.mark.parametrize("sorted_input", [False, True])
def test_graph_backends_match_pyg_and_each_other(backend, sorted_input):
    ei = random_graph(30, 30, 200, seed=7)
    if sorted_input:
        ei = ei[:, torch.sort(ei[1], stable=True)[1]]
    g = Graph.from_edge_index(ei, 30)
    assert (g.perm is None) == sorted_input
    s = torch.randn(ei.size(1), 3, dtype=torch.float64) * 4
    s[:3] = float("-inf")
    y = edge_softmax(s, g, backend=backend)
    assert ops.last_backend("edge_softmax") == backend
    ref = edge_softmax(s, ei[1], num_nodes=30, backend="reference")
    torch.testing.assert_close(y, ref)
    dst_with_inf = ei[1][:3]
    clean = ~torch.isin(ei[1], dst_with_inf)  # rows untouched by the -inf scores
    torch.testing.assert_close(y[clean], pyg_softmax(s, ei[1], num_nodes=30)[clean])
    t = torch.randn(ei.size(1), 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: edge_softmax(x, g, backend=backend), (t,))


@needs_backend("cpu")
def test_cpu_edge_softmax_saves_only_output_and_handles_empty_and_half():
    g = Graph.from_edge_index(random_graph(10, 10, 40), 10)
    s = torch.randn(g.num_edges, 2, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = edge_softmax(s, g, backend="cpu")
    floats = [t for t in saved if t.is_floating_point()]
    assert len(floats) == 1 and torch.equal(floats[0], y)
    empty = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), 4)
    assert edge_softmax(torch.empty(0, 2), empty, backend="cpu").shape == (0, 2)
    yh = edge_softmax(s.detach().bfloat16(), g, backend="cpu")
    assert yh.dtype == torch.bfloat16
    torch.testing.assert_close(yh.float(), y.detach(), atol=1e-2, rtol=1e-2)


def test_scatter_backend_wiring_with_pure_torch_stand_ins_for_its_reductions(monkeypatch):
    """torch-scatter is optional (and absent from CI): its two reductions replaced by pure-torch
    ones with its semantics (an empty segment's max is 0), the backend's path through the
    shared SegmentSoftmax is the reference's, bit for bit, and its gradient checks."""
    from graphattn.ops import scatter

    calls = []

    def scatter_max(t, index, n):  # torch_scatter.scatter_max(...)[0]
        calls.append("max")
        return t.new_zeros((n,) + t.shape[1:]).scatter_reduce(
            0, index.view((-1,) + (1,) * (t.dim() - 1)).expand_as(t), t, reduce="amax", include_self=False
        )

    def scatter_sum(t, index, n):  # torch_scatter.scatter_add
        calls.append("sum")
        return t.new_zeros((n,) + t.shape[1:]).index_add_(0, index, t)

    monkeypatch.setattr(scatter, "_SCATTER_INSTALLED", True)
    monkeypatch.setattr(scatter, "_scatter_max", scatter_max)
    monkeypatch.setattr(scatter, "_scatter_sum", scatter_sum)
    dst = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    s = torch.tensor([1e30, -1e30, float("-inf"), float("-inf"), float("-inf"), 3.0, 3.0], dtype=torch.float64)
    y = edge_softmax(s, dst, num_nodes=4, backend="scatter")
    assert ops.last_backend("edge_softmax") == "scatter" and calls == ["max", "sum"]
    assert torch.equal(y, edge_softmax(s, dst, num_nodes=4, backend="reference"))
    t = torch.randn(20, 2, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 5, (20,))
    assert torch.autograd.gradcheck(lambda x: edge_softmax(x, idx, num_nodes=5, backend="scatter"), (t,))
    assert edge_softmax(t.half(), idx, num_nodes=5, backend="scatter").dtype == torch.half


@needs_backend("scatter")  # torch-scatter is an optional extra
def test_torch_scatter_backend_matches_reference():
    dst = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    s = torch.tensor([1e30, -1e30, float("-inf"), float("-inf"), float("-inf"), 3.0, 3.0], dtype=torch.float64)
    y = edge_softmax(s, dst, num_nodes=4, backend="scatter")
    torch.testing.assert_close(y, edge_softmax(s, dst, num_nodes=4, backend="reference"))
    t = torch.randn(20, 2, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 5, (20,))
    assert torch.autograd.gradcheck(lambda x: edge_softmax(x, idx, num_nodes=5, backend="scatter"), (t,))
    edge_softmax(t, idx, num_nodes=5)
    assert ops.last_backend("edge_softmax") == "reference"  # slower here: only when asked for
