"""Sparse adjacencies and edge_index forms as users hand them over: an uncoalesced COO
``adj_t`` is the matrix it denotes (PyG coalesces; so do we), a transposed view of pairs
runs on every backend, and malformed CSR / CSC arrays are named before any work runs on
them (they used to fail inside torch: "repeats can not be negative", "stack expects ...")."""

import numpy as np
import pytest
import torch

from graphattn import Graph, ops
from graphattn.nn import GATConv
from graphattn.ops import cpu as cpu_backend

from conftest import random_graph

N = 12


def _duplicated_coo():
    ei = random_graph(N, N, 40, seed=3)
    ei = torch.cat([ei, ei[:, :7]], dim=1)  # seven entries given twice
    values = torch.ones(ei.size(1))
    return torch.sparse_coo_tensor(ei.flip(0), values, (N, N))  # adj_t: rows are destinations


def test_an_uncoalesced_coo_adjacency_is_the_matrix_it_denotes():
    adj = _duplicated_coo()
    assert not adj.is_coalesced()
    conv = GATConv(5, 4, heads=2)
    x = torch.randn(N, 5)
    torch.testing.assert_close(conv(x, adj), conv(x, adj.coalesce()))
    graph, values = Graph.from_sparse(adj)
    assert graph.num_edges == adj.coalesce()._nnz()
    torch.testing.assert_close(values, adj.coalesce().values())  # repeated entries summed


def test_a_coo_adjacency_flagged_coalesced_that_is_not_is_coalesced_again():
    adj = _duplicated_coo()
    flagged = torch.sparse_coo_tensor(adj._indices(), adj._values(), adj.shape, is_coalesced=True)
    graph, _ = Graph.from_sparse(flagged)
    assert graph.num_edges == adj.coalesce()._nnz()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_edge_index_as_a_transposed_view_of_pairs(backend):
    if backend == "cpu" and not cpu_backend.is_available():
        pytest.skip("fused CPU kernel not built here")
    pairs = random_graph(N, N, 40, seed=4).t().contiguous()
    view = pairs.t()
    assert not view.is_contiguous()
    q, k, v = (torch.randn(N, 2, 3) for _ in range(3))
    got = ops.dot_product_attention(q, k, v, Graph.from_edge_index(view, N), backend=backend)
    want = ops.dot_product_attention(q, k, v, Graph.from_edge_index(pairs.t().contiguous(), N), backend="reference")
    torch.testing.assert_close(got, want)


def _csr(crow, col, n=4):
    crow, col = torch.tensor(crow), torch.tensor(col)
    return torch.sparse_csr_tensor(crow, col, torch.ones(col.numel()), (n, n), check_invariants=False)


@pytest.mark.parametrize(
    "crow, col, message",
    [
        ([0, 2, 1, 3, 3], [0, 1, 2], "non-decreasing"),
        ([0, 1, 2, 3, 5], [0, 1, 2], "has 3 entries but adj_t has 3 values|end at num_edges"),
        ([0, 1, 2, 3], [0, 1, 2], "has 4 entries; 4 compressed rows need 5"),
        ([0, 1, 2, 3, 3], [0, 1, 9], "col_indices.*index 9, out of range"),
        ([0, 1, 2, 3, 3], [0, -1, 2], "negative"),
        ([0, 2, 2, 3, 3], [1, 0, 2], "strictly increasing within each row"),
        ([0, 2, 2, 3, 3], [1, 1, 2], "strictly increasing within each row"),
    ],
)
def test_malformed_csr_arrays_are_named_before_any_work(crow, col, message):
    with pytest.raises(ValueError, match=message):
        Graph.from_sparse(_csr(crow, col))


def test_malformed_csc_arrays_are_named_too():
    ccol, row = torch.tensor([0, 2, 1, 3, 3]), torch.tensor([0, 1, 2])
    adj = torch.sparse_csc_tensor(ccol, row, torch.ones(3), (4, 4), check_invariants=False)
    with pytest.raises(ValueError, match="ccol_indices.*non-decreasing"):
        Graph.from_sparse(adj)


def test_a_well_formed_csr_and_csc_give_the_coo_graph():
    adj = _duplicated_coo().coalesce()
    want = Graph.from_sparse(adj)[0].edge_index
    for layout in (torch.sparse_csr, torch.sparse_csc):
        got, _ = Graph.from_sparse(adj.to_sparse(layout=layout))
        assert {tuple(e) for e in got.edge_index.t().tolist()} == {tuple(e) for e in want.t().tolist()}


def test_a_batched_adjacency_is_refused_by_name():
    adj = torch.stack([_duplicated_coo().coalesce().to_dense()] * 2).to_sparse(sparse_dim=3)
    with pytest.raises(ValueError, match="no batch dimensions"):
        Graph.from_sparse(adj)


@pytest.mark.parametrize(
    "value, error", [(2.0, TypeError), (True, TypeError), (torch.tensor(2.5), TypeError), (-1, ValueError)]
)
def test_counts_are_integers_never_truncated(value, error):
    with pytest.raises(error, match="num_src must be a non-negative integer"):
        Graph.from_edge_index(torch.tensor([[0], [0]]), num_src=value, num_dst=3)


def test_numpy_and_tensor_integer_counts_are_taken():
    ei = torch.tensor([[0], [1]])
    assert Graph.from_edge_index(ei, num_src=np.int64(3), num_dst=torch.tensor(2)).num_src == 3
