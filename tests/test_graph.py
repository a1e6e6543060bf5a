import networkx as nx
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.utils import add_self_loops, remove_self_loops

from graphattn import Graph
from graphattn.nn import GATConv

from conftest import random_graph


def test_csr_matches_edges_and_orders_round_trip():
    ei = random_graph(30, 30, 200)
    g = Graph.from_edge_index(ei, 30)
    assert g.num_edges == ei.size(1) and g.num_src == g.num_dst == 30
    assert torch.equal(g.edge_index, ei)
    # CSR: destinations sorted, rowptr counts in-degree, perm maps user -> CSR
    assert torch.all(g.row[1:] >= g.row[:-1])
    assert torch.equal(g.rowptr.diff(), torch.bincount(ei[1], minlength=30))
    assert torch.equal(g.col, ei[0][g.perm]) and torch.equal(g.row, ei[1][g.perm])
    t = torch.randn(ei.size(1), 3)
    assert torch.equal(g.to_user_order(g.to_csr_order(t)), t)
    # stable: duplicates keep their relative order
    assert torch.equal(g.perm, torch.sort(ei[1], stable=True)[1])


def test_sorted_input_keeps_identity_permutation():
    ei = torch.tensor([[0, 2, 1, 0], [0, 0, 1, 2]])
    g = Graph.from_edge_index(ei)
    assert g.perm is None
    assert torch.equal(g.to_csr_order(torch.arange(4)), torch.arange(4))
    assert torch.equal(g.rowptr, torch.tensor([0, 2, 3, 4]))


def test_empty_graph_and_isolated_nodes():
    g = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), 5)
    assert g.num_edges == 0 and torch.equal(g.rowptr, torch.zeros(6, dtype=torch.long))
    gl = g.with_self_loops()
    assert torch.equal(gl.edge_index, torch.arange(5).repeat(2, 1))


def test_bipartite_counts_and_transpose():
    ei = torch.tensor([[0, 4, 4, 1], [2, 0, 1, 2]])
    g = Graph.from_edge_index(ei, (5, 3))
    assert g.is_bipartite and (g.num_src, g.num_dst) == (5, 3)
    colptr, row_by_src, eid = g.transpose_csr()
    assert colptr.dtype == row_by_src.dtype == eid.dtype == torch.int32  # compact where the graph allows
    assert torch.equal(colptr.diff().long(), torch.bincount(ei[0], minlength=5))
    assert torch.equal(g.col[eid], torch.sort(g.col, stable=True)[0])
    assert torch.equal(row_by_src.long(), g.row[eid])


@pytest.mark.parametrize("fill_value", ["mean", "add", "sum", "max", "min", "mul", 0.5, 2])
def test_self_loops_match_pyg_remove_then_add(fill_value):
    ei = random_graph(20, 20, 80, seed=3)
    ea = torch.randn(ei.size(1), 4)
    g = Graph.from_edge_index(ei, 20).with_self_loops()
    ref_ei, ref_ea = remove_self_loops(ei, ea)
    pyg_fill = "add" if fill_value == "sum" else fill_value
    ref_ei, ref_ea = add_self_loops(ref_ei, ref_ea, fill_value=pyg_fill, num_nodes=20)
    assert torch.equal(g.edge_index, ref_ei)
    torch.testing.assert_close(g.edge_attr_for_edges(ea, fill_value), ref_ea)


def test_self_loops_tensor_fill_and_1d_attr():
    ei = torch.tensor([[0, 1, 1], [1, 0, 1]])
    g = Graph.from_edge_index(ei, add_self_loops=True)
    assert g.has_added_self_loops and g.with_self_loops() is g
    out = g.edge_attr_for_edges(torch.tensor([[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]), torch.tensor([7.0, 8.0]))
    assert torch.equal(out, torch.tensor([[1.0, 2.0], [3.0, 4.0], [7.0, 8.0], [7.0, 8.0]]))


def test_self_loops_are_cached_and_bipartite_uses_min_count():
    ei = torch.tensor([[0, 3, 2], [1, 0, 1]])
    g = Graph.from_edge_index(ei, (4, 2))
    assert g.with_self_loops() is g.with_self_loops()
    assert torch.equal(g.with_self_loops().edge_index[:, 3:], torch.tensor([[0, 1], [0, 1]]))
    # more destinations than loops: the reduction must not index past the loops
    gb = Graph.from_edge_index(torch.tensor([[0, 1], [3, 0]]), (2, 4)).with_self_loops()
    assert gb.edge_attr_for_edges(torch.ones(2, 1), "max").shape == (4, 1)
    ea = torch.randn(3, 2)
    filled = g.with_self_loops().edge_attr_for_edges(ea, "mean")
    torch.testing.assert_close(filled[3], ea[1])
    torch.testing.assert_close(filled[4], (ea[0] + ea[2]) / 2)


def test_from_networkx_and_pyg():
    G = nx.path_graph(4)
    g = Graph.from_networkx(G)
    assert g.num_edges == 6
    assert set(map(tuple, g.edge_index.t().tolist())) == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)}
    D = nx.DiGraph([("a", "b"), ("b", "c")])
    gd = Graph.from_networkx(D, nodelist=["c", "b", "a"])
    assert gd.edge_index.t().tolist() == [[2, 1], [1, 0]]
    data = Data(edge_index=torch.tensor([[0, 1], [1, 2]]), num_nodes=5)
    gp = Graph.from_pyg(data)
    assert gp.num_src == 5 and gp.num_edges == 2
    with pytest.raises(TypeError, match="Data"):
        Graph.from_pyg(object())


def test_int32_index_accepted_and_widened():
    ei = torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)
    g = Graph.from_edge_index(ei)
    assert g.col.dtype == torch.long and g.edge_index.dtype == torch.long


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: Graph.from_edge_index([[0, 1], [1, 0]]), TypeError, "torch.Tensor"),
        (lambda: Graph.from_edge_index(torch.tensor([[0.0, 1.0], [1.0, 0.0]])), TypeError, "integer dtype"),
        (lambda: Graph.from_edge_index(torch.tensor([[True], [False]])), TypeError, "integer dtype"),
        (lambda: Graph.from_edge_index(torch.tensor([0, 1, 2])), ValueError, r"shape \[2, num_edges\]"),
        (lambda: Graph.from_edge_index(torch.zeros(3, 4, dtype=torch.long)), ValueError, r"shape \[2, num_edges\]"),
        (lambda: Graph.from_edge_index(torch.tensor([[0, -1], [1, 0]])), ValueError, "negative source"),
        (lambda: Graph.from_edge_index(torch.tensor([[0, 1], [1, -3]])), ValueError, "negative destination"),
        (
            lambda: Graph.from_edge_index(torch.tensor([[0, 7], [1, 0]]), 5),
            ValueError,
            "source index 7, out of range for 5",
        ),
        (lambda: Graph.from_edge_index(torch.tensor([[0, 1], [9, 0]]), (5, 4)), ValueError, "destination index 9"),
        (lambda: Graph.from_edge_index(torch.tensor([[0], [1]]), -2), ValueError, "non-negative"),
        (
            lambda: Graph.from_edge_index(torch.tensor([[0], [1]], dtype=torch.int32), 2**31 + 5),
            ValueError,
            "does not fit",
        ),
        (
            lambda: Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), 2).edge_attr_for_edges(torch.randn(3, 2)),
            ValueError,
            "edge_attr has 3 rows but the graph was built from 2 edges",
        ),
        (
            lambda: Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), 2, add_self_loops=True).edge_attr_for_edges(
                torch.randn(2, 2), "median"
            ),
            ValueError,
            "fill_value",
        ),
    ],
)
def test_bad_input_errors_name_the_problem(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_layer_rejects_mismatched_node_counts():
    conv = GATConv(4, 2)
    g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), 5)
    with pytest.raises(ValueError, match="3 source-node rows but the graph has 5"):
        conv(torch.randn(3, 4), g)
    with pytest.raises(ValueError, match="out of range for 3"):
        conv(torch.randn(3, 4), torch.tensor([[0, 3], [1, 0]]))
