"""Builders, self-loop rules and sparse export: functions around :class:`~graphattn.graph.Graph`.

Each builder turns what a caller has (an ``edge_index``, a sparse adjacency, a networkx
graph, a PyG ``Data``) into :class:`GraphArrays`, the parts a graph is made of; the
``Graph.from_*`` classmethods are thin wrappers that make the graph from them. The
self-loop rules (PyG's remove-then-add, and ``fill_value`` for the added loops' edge
attributes) and the export to torch sparse tensors live here too.

This module never imports :mod:`graphattn.graph`: the graph depends on its builders,
not the other way round.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._csr import by_destination, check_count, check_index_tensor, check_offsets, check_range, offsets

__all__ = [
    "GraphArrays",
    "trusted_edges",
    "edge_index_arrays",
    "sparse_arrays",
    "networkx_edge_index",
    "pyg_edge_index",
    "self_looped",
    "edge_attr_for_edges",
    "to_sparse",
    "is_sparse_tensor_class",
    "undirected_pairs",
    "both_directions",
    "FillValue",
]

FillValue = Union[float, int, Tensor, str]

_REDUCE_FILLS = ("mean", "add", "sum", "max", "min", "mul")


class GraphArrays(NamedTuple):
    """The parts of a graph, as a builder hands them to the :class:`~graphattn.graph.Graph`
    constructor: the CSR arrays and node counts, the user-order ``edge_index`` the arrays
    were sorted from (when the graph may own it), the self-loop maps (see
    :meth:`~graphattn.graph.Graph.edge_attr_for_edges`), and ``checked``: whether the
    arrays were made or checked here, so the graph is valid as built (otherwise it is
    checked in full before a kernel reads it)."""

    rowptr: Tensor
    col: Tensor
    row: Tensor
    perm: Optional[Tensor]
    num_src: int
    num_dst: int
    edge_index: Optional[Tensor] = None
    base_edge_ids: Optional[Tensor] = None
    num_base_edges: Optional[int] = None
    loop_nodes: Optional[Tensor] = None
    checked: bool = True


def trusted_edges(
    src: Tensor,
    dst: Tensor,
    num_src: int,
    num_dst: int,
    *,
    base_edge_ids: Optional[Tensor] = None,
    num_base_edges: Optional[int] = None,
    loop_nodes: Optional[Tensor] = None,
    edge_index: Optional[Tensor] = None,
    checked: bool = True,
) -> GraphArrays:
    """The arrays of the edges ``src[e] -> dst[e]`` (in-range int64, not checked), sorted
    by destination. They are stacked into the graph's own ``edge_index`` unless
    ``edge_index`` is given, a ``[2, E]`` tensor no caller holds whose rows they are."""
    if edge_index is None:
        edge_index = torch.stack([src, dst], dim=0)
    src, dst = edge_index[0], edge_index[1]  # views of a tensor no caller holds
    rowptr, col, row, perm = by_destination(src, dst, num_dst)
    return GraphArrays(
        rowptr, col, row, perm, num_src, num_dst, edge_index, base_edge_ids, num_base_edges, loop_nodes, checked
    )


def _node_counts(
    edge_index: Tensor, num_nodes: Optional[Union[int, Tuple[int, int]]], num_src: Optional[int], num_dst: Optional[int]
) -> Tuple[int, int]:
    """``(num_src, num_dst)`` from the arguments of :func:`edge_index_arrays`, inferred as
    ``max index + 1`` where none is given, checked as counts that fit the index dtype."""
    if isinstance(num_nodes, (tuple, list)):
        if len(num_nodes) != 2:
            raise ValueError(f"num_nodes as a tuple must be (num_src, num_dst), got {num_nodes!r}")
        ns, nd = num_nodes
    else:
        ns = nd = num_nodes
    ns = num_src if num_src is not None else ns
    nd = num_dst if num_dst is not None else nd
    src, dst = edge_index[0], edge_index[1]
    if ns is None:
        ns = int(src.max()) + 1 if src.numel() else 0
    if nd is None:
        nd = int(dst.max()) + 1 if dst.numel() else 0
    ns, nd = check_count("num_src", ns), check_count("num_dst", nd)
    if edge_index.dtype != torch.int64:
        info = torch.iinfo(edge_index.dtype)
        for name, count in (("num_src", ns), ("num_dst", nd)):
            if count - 1 > info.max:
                raise ValueError(
                    f"{name}={count} does not fit edge_index's dtype {edge_index.dtype} "
                    f"(max index {info.max}); pass edge_index as torch.long"
                )
    return ns, nd


def edge_index_arrays(
    edge_index: Tensor,
    num_nodes: Optional[Union[int, Tuple[int, int]]] = None,
    *,
    num_src: Optional[int] = None,
    num_dst: Optional[int] = None,
    validate: bool = True,
) -> GraphArrays:
    """The arrays of a PyG-style ``edge_index`` (see :meth:`Graph.from_edge_index
    <graphattn.graph.Graph.from_edge_index>`); ``checked`` is ``validate``."""
    edge_index = check_index_tensor(edge_index)
    ns, nd = _node_counts(edge_index, num_nodes, num_src, num_dst)
    # The graph owns its indices: a copy (widened to int64, contiguous whatever the
    # caller's strides, e.g. ``pairs.t()``) taken before the range check, so a caller
    # who reuses its buffer can neither change this graph nor slip out-of-range
    # indices past the check.
    owned = edge_index.to(torch.long, memory_format=torch.contiguous_format, copy=True)
    if validate:
        check_range(owned[0], ns, "source", "source nodes")
        check_range(owned[1], nd, "destination", "destination nodes")
    return trusted_edges(owned[0], owned[1], ns, nd, edge_index=owned, checked=validate)


def is_sparse_tensor_class(obj: Any) -> bool:
    """A ``torch_sparse.SparseTensor`` (an optional dependency: never imported here)."""
    return type(obj).__name__ == "SparseTensor" and hasattr(obj, "coo") and hasattr(obj, "sparse_sizes")


def _coalesced(adj_t: Tensor, nd: int, ns: int) -> Tensor:
    """A COO ``adj_t`` with its indices checked, coalesced (torch sums repeated entries).
    A tensor flagged coalesced is coalesced again when its indices say it is not (PyG's
    ``to_edge_index`` sets the flag on a caller's tensor without coalescing it)."""
    index = adj_t._indices()
    check_range(index[0], nd, "row (destination)", "destination nodes", "adj_t")
    check_range(index[1], ns, "column (source)", "source nodes", "adj_t")
    if not adj_t.is_coalesced():
        return adj_t.coalesce()
    key = index[0] * ns + index[1]
    if key.numel() > 1 and bool((key[1:] <= key[:-1]).any()):
        return torch.sparse_coo_tensor(index, adj_t._values(), adj_t.shape, check_invariants=False).coalesce()
    return adj_t


def _compressed(adj_t: Tensor, ptr: Tensor, idx: Tensor, n_major: int, n_minor: int) -> Tuple[Tensor, Tensor, Tensor]:
    """A CSR / CSC ``adj_t``'s ``(offsets, indices, major index of each entry)`` as int64
    copies, after checking the arrays meet torch's invariants: nothing is computed from
    them before."""
    csr = adj_t.layout == torch.sparse_csr
    names = ("adj_t.crow_indices()", "adj_t.col_indices()") if csr else ("adj_t.ccol_indices()", "adj_t.row_indices()")
    line, what = (
        ("row", ("column (source)", "source nodes")) if csr else ("column", ("row (destination)", "destination nodes"))
    )
    nnz = adj_t.values().size(0)
    for name, t in zip(names, (ptr, idx)):
        if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D int32 or int64 tensor, got {t.dtype} of shape {list(t.shape)}")
    if idx.numel() != nnz:
        raise ValueError(f"{names[1]} has {idx.numel()} entries but adj_t has {nnz} values")
    ptr, idx = ptr.to(torch.long, copy=True), idx.to(torch.long, copy=True)
    check_offsets(ptr, n_major, nnz, names[0])
    check_range(idx, n_minor, *what, name=names[1])
    major = torch.repeat_interleave(torch.arange(n_major, device=idx.device), ptr.diff(), output_size=nnz)
    if nnz > 1 and bool(((idx[1:] <= idx[:-1]) & (major[1:] == major[:-1])).any()):
        raise ValueError(
            f"{names[1]} must be strictly increasing within each {line} (torch's invariant: sorted, "
            f"no repeated entry); build the adjacency with .coalesce() before converting it"
        )
    return ptr, idx, major


def _check_sparse_layout(adj_t: Any) -> None:
    if not isinstance(adj_t, Tensor) or adj_t.layout == torch.strided:
        raise TypeError(
            f"expected a sparse adjacency (torch sparse tensor or torch_sparse.SparseTensor), "
            f"got {type(adj_t).__name__}"
        )
    if adj_t.layout not in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc):
        raise TypeError(f"unsupported sparse layout {adj_t.layout}; pass a COO, CSR or CSC adjacency")
    if adj_t.dim() - adj_t.dense_dim() != 2:
        raise ValueError(
            f"a sparse adjacency must have two sparse dimensions (num_dst, num_src) and no batch "
            f"dimensions, got shape {list(adj_t.shape)} with {adj_t.dense_dim()} dense dimension(s); "
            f"pass one matrix at a time"
        )


def sparse_arrays(adj_t: Any) -> Tuple[GraphArrays, Optional[Tensor]]:
    """The arrays of a sparse adjacency in PyG's ``adj_t`` convention and its values in
    the graph's user order (see :meth:`Graph.from_sparse <graphattn.graph.Graph.from_sparse>`)."""
    if is_sparse_tensor_class(adj_t):
        row, col, value = adj_t.coo()
        nd, ns = adj_t.sparse_sizes()
        return edge_index_arrays(torch.stack([col, row]), num_src=int(ns), num_dst=int(nd)), value
    _check_sparse_layout(adj_t)
    nd, ns = int(adj_t.shape[0]), int(adj_t.shape[1])
    if adj_t.layout == torch.sparse_coo:
        adj_t = _coalesced(adj_t, nd, ns)
        index = adj_t.indices()
        return trusted_edges(index[1], index[0], ns, nd), adj_t.values()
    if adj_t.layout == torch.sparse_csr:
        rowptr, col, row = _compressed(adj_t, adj_t.crow_indices(), adj_t.col_indices(), nd, ns)
        return GraphArrays(rowptr, col, row, None, ns, nd), adj_t.values()  # checked by _compressed
    _, dst, src = _compressed(adj_t, adj_t.ccol_indices(), adj_t.row_indices(), ns, nd)
    return trusted_edges(src, dst, ns, nd), adj_t.values()


def networkx_edge_index(graph: Any, nodelist: Optional[Sequence[Any]] = None) -> Tuple[Tensor, int]:
    """``(edge_index, num_nodes)`` of a networkx graph, nodes numbered in ``nodelist``
    order (default: ``graph.nodes`` order); an undirected graph gives both directions of
    every edge, as PyG's ``from_networkx`` does."""
    nodes = list(graph.nodes) if nodelist is None else list(nodelist)
    index = {n: i for i, n in enumerate(nodes)}
    if len(index) != len(nodes):
        raise ValueError("nodelist has repeated nodes")
    pairs = []
    for u, v in graph.edges():
        if u not in index or v not in index:
            raise ValueError(f"edge ({u!r}, {v!r}) has a node missing from nodelist")
        pairs.append((index[u], index[v]))
        if not graph.is_directed():
            pairs.append((index[v], index[u]))
    return torch.tensor(pairs, dtype=torch.long).t().reshape(2, -1), len(nodes)


def pyg_edge_index(data: Any) -> Tuple[Tensor, Any]:
    """``(edge_index, num_nodes)`` of a PyG ``Data`` object."""
    if not hasattr(data, "edge_index") or data.edge_index is None:
        raise TypeError(f"expected a torch_geometric.data.Data with an edge_index, got {type(data).__name__}")
    return data.edge_index, data.num_nodes


def self_looped(
    edge_index: Tensor,
    num_src: int,
    num_dst: int,
    base_edge_ids: Optional[Tensor],
    num_base_edges: Optional[int],
    *,
    checked: bool,
) -> GraphArrays:
    """PyG's rule for attention layers: the user-order edges ``edge_index`` with their
    self-loops removed and one self-loop per node ``i < min(num_src, num_dst)`` appended,
    recording for each kept edge its base edge (``base_edge_ids``) and the looped nodes
    (``loop_nodes``). ``checked``: whether ``edge_index`` comes from a checked graph."""
    src, dst = edge_index[0], edge_index[1]
    keep = (src != dst).nonzero().view(-1)
    loops = torch.arange(min(num_src, num_dst), device=edge_index.device)
    base = keep if base_edge_ids is None else base_edge_ids[keep]
    return trusted_edges(
        torch.cat([src[keep], loops]),
        torch.cat([dst[keep], loops]),
        num_src,
        num_dst,
        base_edge_ids=base,
        num_base_edges=num_base_edges,
        loop_nodes=loops,
        checked=checked,
    )


def _loop_attr(kept: Tensor, fill_value: FillValue, n: int, dst: Callable[[], Tensor], num_dst: int) -> Tensor:
    """The ``n`` added self-loops' rows filled from the kept edges' rows ``kept``."""
    feat_shape = tuple(kept.shape[1:])
    if isinstance(fill_value, str):
        if fill_value not in _REDUCE_FILLS:
            raise ValueError(f"fill_value must be a number, a tensor or one of {_REDUCE_FILLS}, got {fill_value!r}")
        reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}.get(fill_value, fill_value)
        # Reduce over every destination (a bipartite graph may have more destinations
        # than loops), then keep the looped nodes. Nodes without in-edges get the
        # reduction's empty value as in PyG: 1 for a product, else 0.
        init = kept.new_ones if reduce == "prod" else kept.new_zeros
        index = dst()[: kept.size(0)].view((-1,) + (1,) * len(feat_shape)).expand_as(kept)
        return init((num_dst,) + feat_shape).scatter_reduce(0, index, kept, reduce=reduce, include_self=False)[:n]
    if isinstance(fill_value, Tensor):
        return fill_value.to(device=kept.device, dtype=kept.dtype).expand((n,) + feat_shape)
    if isinstance(fill_value, (int, float)) and not isinstance(fill_value, bool):
        return kept.new_full((n,) + feat_shape, float(fill_value))
    raise TypeError(f"fill_value must be a number, a tensor or a string, got {type(fill_value).__name__}")


def edge_attr_for_edges(
    edge_attr: Tensor,
    fill_value: FillValue,
    *,
    num_base_edges: Optional[int],
    base_edge_ids: Optional[Tensor],
    loop_nodes: Optional[Tensor],
    dst: Callable[[], Tensor],
    num_dst: int,
) -> Tensor:
    """``edge_attr``, given for the ``num_base_edges`` edges a graph was built from, on
    the graph's user-order edges (see :meth:`Graph.edge_attr_for_edges
    <graphattn.graph.Graph.edge_attr_for_edges>`); ``dst()`` gives the destination of
    each user-order edge, read only to reduce over incoming edges."""
    if not isinstance(edge_attr, Tensor):
        raise TypeError(f"edge_attr must be a tensor, got {type(edge_attr).__name__}")
    if edge_attr.size(0) != num_base_edges:
        raise ValueError(
            f"edge_attr has {edge_attr.size(0)} rows but the graph was built from "
            f"{num_base_edges} edges; give one row per edge of edge_index"
        )
    if base_edge_ids is None:
        return edge_attr
    kept = edge_attr.index_select(0, base_edge_ids)
    if loop_nodes is None:
        return kept
    return torch.cat([kept, _loop_attr(kept, fill_value, loop_nodes.numel(), dst, num_dst)], dim=0)


def to_sparse(
    edge_index: Tensor, values: Tensor, num_src: int, num_dst: int, layout: torch.layout = torch.sparse_coo
) -> Tensor:
    """A torch sparse tensor in the ``adj_t`` convention (``(num_dst, num_src, ...)``)
    holding per-edge ``values`` of the user-order edges ``edge_index``, in ``layout``
    (COO, CSR or CSC)."""
    src, dst = edge_index[0], edge_index[1]
    shape = (num_dst, num_src) + tuple(values.shape[1:])
    if layout == torch.sparse_coo:
        return torch.sparse_coo_tensor(torch.stack([dst, src]), values, shape)
    if layout == torch.sparse_csr:
        major, minor, n_major = dst, src, num_dst
    elif layout == torch.sparse_csc:
        major, minor, n_major = src, dst, num_src
    else:
        raise TypeError(f"unsupported sparse layout {layout}")
    order = torch.sort(major * max(1, max(num_src, num_dst)) + minor, stable=True)[1]
    make = torch.sparse_csr_tensor if layout == torch.sparse_csr else torch.sparse_csc_tensor
    return make(offsets(major[order], n_major), minor[order], values[order], shape)


def undirected_pairs(edge_index: Tensor) -> Tensor:
    """Each undirected edge of ``edge_index`` once, as ``[2, P]`` pairs ``i < j`` in sorted
    order; self-loops dropped, either direction (or both) counts as the edge."""
    a, b = edge_index[0], edge_index[1]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    keep = lo != hi
    return torch.unique(torch.stack([lo[keep], hi[keep]]), dim=1)


def both_directions(pairs: Tensor) -> Tensor:
    """``[2, P]`` pairs as ``[2, 2P]`` directed edges: the pairs, then their reverses."""
    return torch.cat([pairs, pairs.flip(0)], dim=1)
