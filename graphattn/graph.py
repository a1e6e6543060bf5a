"""Graph structure: the one object every attention op runs over.

A :class:`Graph` stores a directed (possibly bipartite) edge set in the form the
kernels want: edges sorted by destination (CSR, ``rowptr``/``col``), plus what is
needed to talk to the caller in the caller's own terms: the edge order they
gave (``edge_index`` and the permutation between the two orders), and how edge
attributes map onto the graph when self-loops were removed and added.

Building a graph sorts and validates once; layers reuse it every step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .ordering import NodeOrder

__all__ = ["Graph", "Pattern", "FillValue", "undirected_pairs", "both_directions"]

FillValue = Union[float, int, Tensor, str]

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_REDUCE_FILLS = ("mean", "add", "sum", "max", "min", "mul")


@dataclass(frozen=True)
class Pattern:
    """What is known about a graph's shape, so the dispatcher may use a dense kernel.

    ``kind`` is one of ``"complete"``, ``"causal"``, ``"band"`` (``left``/``right``
    neighbours, clipped at the ends), ``"cross"`` (complete bipartite) or any other
    name a pattern builder records (``"dilated"``, ``"random"``, ...). ``batch`` is
    the per-sequence lengths when the graph is a block-diagonal batch of sequences.
    """

    kind: str
    params: Tuple[Tuple[str, Any], ...] = ()
    batch: Optional[Tuple[int, ...]] = None

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)


def _check_index_tensor(edge_index: Any) -> Tensor:
    if not isinstance(edge_index, Tensor):
        raise TypeError(
            f"edge_index must be a torch.Tensor of shape [2, num_edges], got {type(edge_index).__name__}"
        )
    if edge_index.is_floating_point() or edge_index.is_complex() or edge_index.dtype == torch.bool:
        raise TypeError(
            f"edge_index must have an integer dtype (torch.long or torch.int32), got {edge_index.dtype}"
        )
    if edge_index.dtype not in _INDEX_DTYPES:
        raise TypeError(f"edge_index has unsupported integer dtype {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(
            f"edge_index must have shape [2, num_edges] (row 0 = source, row 1 = destination), "
            f"got shape {list(edge_index.shape)}"
        )
    return edge_index


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, Tensor):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _check_range(idx: Tensor, bound: int, what: str, count_name: str) -> None:
    if idx.numel() == 0:
        return
    lo = int(idx.min())
    if lo < 0:
        raise ValueError(f"edge_index has a negative {what} index ({lo}); indices must be >= 0")
    hi = int(idx.max())
    if hi >= bound:
        raise ValueError(
            f"edge_index has {what} index {hi}, out of range for {bound} {count_name} "
            f"(valid indices are 0..{bound - 1})"
        )


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


def _is_sparse_tensor_class(obj: Any) -> bool:
    """A ``torch_sparse.SparseTensor`` (an optional dependency: never imported here)."""
    return type(obj).__name__ == "SparseTensor" and hasattr(obj, "coo") and hasattr(obj, "sparse_sizes")


def _offsets(index: Tensor, n: int) -> Tensor:
    """CSR offsets ``[n + 1]`` of a sorted (or any) index: ``offsets[k+1] - offsets[k]``
    is the count of ``k``. Static output shape (unlike ``bincount``), so traceable."""
    counts = torch.zeros(n + 1, dtype=torch.long, device=index.device)
    counts.index_add_(0, index + 1, torch.ones_like(index))
    return counts.cumsum(0)


class Graph:
    """A destination-sorted (CSR) edge set, reusable across training steps.

    Edge ``e = (j -> i)`` has source ``j`` in ``[0, num_src)`` and destination
    ``i`` in ``[0, num_dst)``; ``num_src != num_dst`` describes a bipartite graph
    (cross-attention, PyG's ``(x_src, x_dst)`` layers).

    Two edge orders exist and every edge tensor says which it is in:

    * **user order**: the order of :attr:`edge_index`, the order in which ops take
      per-edge inputs (biases) and return attention weights. It is the caller's
      own order, with existing self-loops removed and one self-loop per node
      appended when :meth:`with_self_loops` built the graph (PyG's convention).
    * **CSR order**: sorted by destination (stable), used by the kernels.
      ``csr_tensor = user_tensor[perm]``.

    Build with :meth:`from_edge_index`, :meth:`from_networkx` or :meth:`from_pyg`.
    """

    def __init__(
        self,
        rowptr: Tensor,
        col: Tensor,
        row: Tensor,
        perm: Optional[Tensor],
        num_src: int,
        num_dst: int,
        *,
        edge_index: Optional[Tensor] = None,
        base_edge_ids: Optional[Tensor] = None,
        num_base_edges: Optional[int] = None,
        loop_nodes: Optional[Tensor] = None,
        pattern: Optional[Pattern] = None,
    ) -> None:
        # The builders below pass tensors they made and sorted themselves (and mark the
        # graph valid); a Graph constructed directly is checked in full on first use
        # (:meth:`ensure_valid`), since the fused kernels index with these arrays.
        self._rowptr, self._col, self._row = rowptr, col, row
        self._index_builder: Optional[Callable[[], Tuple[Tensor, Tensor, Tensor]]] = None
        self.perm = perm  # None means user order == CSR order
        self.num_src = num_src
        self.num_dst = num_dst
        self._edge_index = edge_index
        # How user-order edges relate to the edges the caller built the graph from
        # (for edge_attr): base_edge_ids[k] is the base edge of user edge k, for the
        # first len(base_edge_ids) user edges; the rest are self-loops on loop_nodes.
        self.base_edge_ids = base_edge_ids
        self.num_base_edges = num_base_edges if num_base_edges is not None else (
            col.numel() if col is not None else None)
        self.loop_nodes = loop_nodes
        self.pattern = pattern
        self._inv_perm: Optional[Tensor] = None
        self._looped: Optional[Graph] = None
        self._transpose: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        self._valid_stamp: Optional[Tuple[int, ...]] = None
        # A renumbering the attention ops run the kernels in (:meth:`reorder_nodes`).
        self._node_order: Optional[NodeOrder] = None
        self._relabeled: Optional[Graph] = None

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_edge_index(
        cls,
        edge_index: Tensor,
        num_nodes: Optional[Union[int, Tuple[int, int]]] = None,
        *,
        num_src: Optional[int] = None,
        num_dst: Optional[int] = None,
        add_self_loops: bool = False,
        pattern: Optional[Pattern] = None,
        validate: bool = True,
    ) -> "Graph":
        """Build from a PyG-style ``edge_index`` (``[2, E]``, row 0 = source, row 1 = destination).

        Args:
            edge_index: integer tensor ``[2, E]``; int32 is accepted and widened.
            num_nodes: node count, or ``(num_src, num_dst)`` for a bipartite graph.
                Inferred as ``max index + 1`` when omitted.
            num_src, num_dst: the two counts separately (override ``num_nodes``).
            add_self_loops: remove existing self-loops and add one per node
                ``i < min(num_src, num_dst)``, as PyG's ``GATConv`` does.
            validate: check indices are in range (set False only for trusted input).
        """
        edge_index = _check_index_tensor(edge_index)
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
        ns = _check_count("num_src", ns)
        nd = _check_count("num_dst", nd)
        if edge_index.dtype != torch.int64:
            info = torch.iinfo(edge_index.dtype)
            for name, count in (("num_src", ns), ("num_dst", nd)):
                if count - 1 > info.max:
                    raise ValueError(
                        f"{name}={count} does not fit edge_index's dtype {edge_index.dtype} "
                        f"(max index {info.max}); pass edge_index as torch.long"
                    )
        # The graph owns its indices: a copy (widened to int64) taken before the range
        # check, so a caller who reuses its buffer can neither change this graph nor
        # slip out-of-range indices past the check.
        owned = edge_index.to(torch.long, copy=True)
        if validate:
            _check_range(owned[0], ns, "source", "source nodes")
            _check_range(owned[1], nd, "destination", "destination nodes")
        graph = cls._build(owned[0], owned[1], ns, nd, pattern=pattern, edge_index=owned)
        if not validate:
            graph._valid_stamp = None  # unchecked input: checked in full before any kernel reads it
        return graph.with_self_loops() if add_self_loops else graph

    @classmethod
    def _build(
        cls,
        src: Tensor,
        dst: Tensor,
        num_src: int,
        num_dst: int,
        *,
        base_edge_ids: Optional[Tensor] = None,
        num_base_edges: Optional[int] = None,
        loop_nodes: Optional[Tensor] = None,
        pattern: Optional[Pattern] = None,
        edge_index: Optional[Tensor] = None,
    ) -> "Graph":
        """A graph from in-range int64 ``src``/``dst`` made by graphattn itself (pass
        ``edge_index`` when they are the rows of a tensor the graph may own)."""
        if edge_index is None:
            edge_index = torch.stack([src, dst], dim=0)
        src, dst = edge_index[0], edge_index[1]  # views of a tensor no caller holds
        if dst.numel() > 1 and bool((dst[1:] < dst[:-1]).any()):
            dst_sorted, perm = torch.sort(dst, stable=True)
            col = src[perm]
        else:
            dst_sorted, perm, col = dst, None, src
        rowptr = _offsets(dst_sorted, num_dst)
        graph = cls(
            rowptr,
            col,
            dst_sorted,
            perm,
            num_src,
            num_dst,
            edge_index=edge_index,
            base_edge_ids=base_edge_ids,
            num_base_edges=num_base_edges,
            loop_nodes=loop_nodes,
            pattern=pattern,
        )
        graph._valid_stamp = graph._stamp()
        return graph

    @classmethod
    def _lazy(cls, num_nodes: int, num_edges: int, device, build: Callable[[], Tuple[Tensor, Tensor]], *,
              pattern: Pattern) -> "Graph":
        """A graph whose CSR arrays ``build() -> (rowptr, col)`` are made on first use.
        For patterns a dense kernel runs from ``pattern`` alone (complete blocks): when
        the dispatcher picks such a kernel, the edges are never materialised."""
        graph = cls(None, None, None, None, num_nodes, num_nodes, num_base_edges=num_edges, pattern=pattern)

        def build_all():
            rowptr, col = build()
            degree = rowptr.diff()
            row = torch.repeat_interleave(torch.arange(num_nodes, device=col.device), degree, output_size=num_edges)
            return rowptr, col, row

        graph._index_builder = build_all
        graph._lazy_shape = (num_edges, torch.device(device) if device is not None else torch.device("cpu"))
        graph._valid_stamp = graph._stamp()
        return graph

    def _materialize(self) -> None:
        build, self._index_builder = self._index_builder, None
        self._rowptr, self._col, self._row = build()
        self._valid_stamp = self._stamp()  # built by graphattn: valid by construction

    def _index(self, name: str) -> Tensor:
        if self._index_builder is not None:
            self._materialize()
        return getattr(self, name)

    rowptr = property(lambda self: self._index("_rowptr"), lambda self, v: setattr(self, "_rowptr", v),
                      doc="CSR offsets by destination, ``[num_dst + 1]``.")
    col = property(lambda self: self._index("_col"), lambda self, v: setattr(self, "_col", v),
                   doc="Source of each edge, in CSR order.")
    row = property(lambda self: self._index("_row"), lambda self, v: setattr(self, "_row", v),
                   doc="Destination of each edge, in CSR order.")

    @property
    def is_materialized(self) -> bool:
        """False while a lazily built pattern's edges have not been needed yet."""
        return self._index_builder is None

    @classmethod
    def from_sparse(cls, adj_t: Any) -> Tuple["Graph", Optional[Tensor]]:
        """Build from a sparse adjacency in PyG's ``adj_t`` convention: rows are
        destinations, columns sources, shape ``(num_dst, num_src[, ...])``. Takes a torch
        sparse COO / CSR / CSC tensor or a ``torch_sparse.SparseTensor``. Returns the
        graph and the adjacency's values in the graph's user order (``None`` if it has
        none). A CSR ``adj_t`` *is* this graph's CSR: its arrays are copied, not sorted.
        """
        if _is_sparse_tensor_class(adj_t):
            row, col, value = adj_t.coo()
            nd, ns = adj_t.sparse_sizes()
            graph = cls.from_edge_index(torch.stack([col, row]), num_src=int(ns), num_dst=int(nd))
            return graph, value
        if not isinstance(adj_t, Tensor) or adj_t.layout == torch.strided:
            raise TypeError(f"expected a sparse adjacency (torch sparse tensor or torch_sparse.SparseTensor), "
                            f"got {type(adj_t).__name__}")
        if adj_t.dim() < 2:
            raise ValueError(f"a sparse adjacency must have shape (num_dst, num_src, ...), got {list(adj_t.shape)}")
        nd, ns = int(adj_t.shape[0]), int(adj_t.shape[1])
        if adj_t.layout == torch.sparse_csr:
            rowptr = adj_t.crow_indices().to(torch.long, copy=True)
            col = adj_t.col_indices().to(torch.long, copy=True)
            if rowptr.numel() != nd + 1:
                raise ValueError("batched sparse CSR adjacencies are not supported; pass one (num_dst, num_src) matrix")
            row = torch.repeat_interleave(torch.arange(nd, device=col.device), rowptr.diff())
            graph = cls(rowptr, col, row, None, ns, nd)
            graph.ensure_valid()  # the caller's arrays: checked in full, once
            return graph, adj_t.values()
        if adj_t.layout == torch.sparse_csc:
            colptr = adj_t.ccol_indices().to(torch.long)
            dst = adj_t.row_indices().to(torch.long)
            src = torch.repeat_interleave(torch.arange(ns, device=dst.device), colptr.diff())
            values = adj_t.values()
        elif adj_t.layout == torch.sparse_coo:
            index = adj_t._indices()
            dst, src, values = index[0], index[1], adj_t._values()
        else:
            raise TypeError(f"unsupported sparse layout {adj_t.layout}")
        graph = cls.from_edge_index(torch.stack([src, dst]), num_src=ns, num_dst=nd)
        return graph, values

    def to_sparse(self, values: Tensor, layout: torch.layout = torch.sparse_coo) -> Tensor:
        """A torch sparse tensor in the ``adj_t`` convention (``(num_dst, num_src, ...)``)
        holding per-edge ``values`` given in user order, in ``layout`` (COO, CSR or CSC)."""
        ei = self.edge_index
        src, dst = ei[0], ei[1]
        shape = (self.num_dst, self.num_src) + tuple(values.shape[1:])
        if layout == torch.sparse_coo:
            return torch.sparse_coo_tensor(torch.stack([dst, src]), values, shape)
        if layout == torch.sparse_csr:
            major, minor, n_major = dst, src, self.num_dst
        elif layout == torch.sparse_csc:
            major, minor, n_major = src, dst, self.num_src
        else:
            raise TypeError(f"unsupported sparse layout {layout}")
        order = torch.sort(major * max(1, max(self.num_src, self.num_dst)) + minor, stable=True)[1]
        ptr = _offsets(major[order], n_major)
        make = torch.sparse_csr_tensor if layout == torch.sparse_csr else torch.sparse_csc_tensor
        return make(ptr, minor[order], values[order], shape)

    @classmethod
    def from_networkx(
        cls, graph: Any, *, add_self_loops: bool = False, nodelist: Optional[Sequence[Any]] = None
    ) -> "Graph":
        """Build from a networkx graph; nodes are numbered in ``nodelist`` order
        (default: ``graph.nodes`` order). An undirected graph gives both directions
        of every edge, as PyG's ``from_networkx`` does."""
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
        ei = torch.tensor(pairs, dtype=torch.long).t().reshape(2, -1)
        return cls.from_edge_index(ei, len(nodes), add_self_loops=add_self_loops)

    @classmethod
    def from_pyg(cls, data: Any, *, add_self_loops: bool = False) -> "Graph":
        """Build from a PyG ``Data`` object (its ``edge_index`` and ``num_nodes``)."""
        if not hasattr(data, "edge_index") or data.edge_index is None:
            raise TypeError(f"expected a torch_geometric.data.Data with an edge_index, got {type(data).__name__}")
        return cls.from_edge_index(data.edge_index, data.num_nodes, add_self_loops=add_self_loops)

    # ---------------------------------------------------------------- properties
    @property
    def num_edges(self) -> int:
        return self._lazy_shape[0] if self._index_builder is not None else self.col.numel()

    @property
    def device(self) -> torch.device:
        return self._lazy_shape[1] if self._index_builder is not None else self.col.device

    @property
    def is_bipartite(self) -> bool:
        return self.num_src != self.num_dst

    @property
    def has_added_self_loops(self) -> bool:
        return self.loop_nodes is not None

    @property
    def edge_index(self) -> Tensor:
        """``[2, E]`` in user order (row 0 = source)."""
        if self._edge_index is None:
            ei = torch.stack([self.col, self.row], dim=0)
            self._edge_index = ei if self.perm is None else ei[:, self.inv_perm]
        return self._edge_index

    @property
    def inv_perm(self) -> Tensor:
        """``user_tensor = csr_tensor[inv_perm]``."""
        if self.perm is None:
            return torch.arange(self.num_edges, device=self.device)
        if self._inv_perm is None:
            inv = torch.empty_like(self.perm)
            inv[self.perm] = torch.arange(self.perm.numel(), device=self.device)
            self._inv_perm = inv
        return self._inv_perm

    def to_csr_order(self, edge_tensor: Tensor) -> Tensor:
        """A per-edge tensor in user order, reordered to CSR order."""
        return edge_tensor if self.perm is None else edge_tensor.index_select(0, self.perm)

    def to_user_order(self, edge_tensor: Tensor) -> Tensor:
        """A per-edge tensor in CSR order, reordered to user order."""
        return edge_tensor if self.perm is None else edge_tensor.index_select(0, self.inv_perm)

    def transpose_csr(self) -> Tuple[Tensor, Tensor, Tensor]:
        """CSR by *source*: ``(colptr, row_by_src, edge_id)`` with ``edge_id`` the
        CSR-order edge of each entry. Cached; used by backward passes. Held in int32
        where the graph allows (fewer than 2^31 edges and nodes): half the memory of
        int64, 1 GB less at ogbn-products' size."""
        if self._transpose is None:
            order = torch.sort(self.col, stable=True)[1]
            index = torch.int32 if max(self.num_edges, self.num_src, self.num_dst) < 2**31 else torch.long
            self._transpose = (_offsets(self.col, self.num_src).to(index), self.row[order].to(index),
                               order.to(index))
        return self._transpose

    # ---------------------------------------------------------------- node order
    def reorder_nodes(self, order: Union[str, "NodeOrder"] = "locality", **options: Any) -> "Graph":
        """A new graph over the same arrays, holding a node order for memory locality
        that the attention ops apply and undo transparently: node tensors in, outputs
        and gradients out, and edge tensors all stay in the caller's numbering and
        order. The ops run the kernels on :attr:`relabeled` with the node tensors permuted (a
        row gather per node tensor in and one for the output, forward and backward).

        ``order`` is a :class:`~graphattn.ordering.NodeOrder` or a method name
        (``"locality"``, ``"degree"``, ``"rcm"``; ``options`` go to
        :func:`graphattn.ordering.node_order`). Square graphs without a dense pattern
        only: a pattern's numbering is what its dense kernels run on. When one model
        runs many ops on the same graph, relabelling the data once
        (``order.apply(x)``, ``order.relabel(graph)``, ``order.undo(out)``) avoids the
        per-op permutations."""
        from .ordering import NodeOrder, node_order

        self._check_orderable(None)
        if not isinstance(order, NodeOrder):
            order = node_order(self.ensure_valid(), order, **options)
        ordered = self._copy_checked(lambda t: t)  # the same arrays
        ordered.node_order = order
        return ordered

    def _check_orderable(self, order: Optional["NodeOrder"]) -> None:
        if self.pattern is not None:
            raise ValueError(f"this graph has a '{self.pattern.kind}' pattern: its numbering is what the dense "
                             "kernels run on, so it is not reordered")
        if order is not None and (self.is_bipartite or order.num_nodes != self.num_src):
            raise ValueError(f"a node order over {order.num_nodes} nodes does not fit a graph with {self.num_src} "
                             f"source and {self.num_dst} destination nodes")

    @property
    def node_order(self) -> Optional["NodeOrder"]:
        """The renumbering the attention ops run the kernels in, or ``None``. Assigning
        one (or ``None``) drops the relabelled graph built for the previous order and
        carries the new order to the cached self-looped graph."""
        return self._node_order

    @node_order.setter
    def node_order(self, order: Optional["NodeOrder"]) -> None:
        if order is not None:
            self._check_orderable(order)
            if order.perm.device != self.device:
                order = order.to(self.device)  # not copied again on every op
        self._node_order = order
        self._relabeled = None
        if self._looped is not None and self._looped is not self:
            self._looped.node_order = order  # the loops keep the nodes' numbering

    @property
    def relabeled(self) -> "Graph":
        """The graph the kernels run on when it holds a :attr:`node_order`: node ``v``
        renamed ``node_order.inverse[v]``, edges in the same user order. ``self`` when it
        holds none."""
        if self._node_order is None:
            return self
        self.ensure_valid()
        if self._relabeled is None:
            self._relabeled = self._node_order.relabel(self)
        return self._relabeled

    # ---------------------------------------------------------------- self-loops
    def with_self_loops(self) -> "Graph":
        """This graph with existing self-loops removed and one self-loop per node
        ``i < min(num_src, num_dst)`` appended in user order (PyG's GAT convention).
        Cached on the graph, so a layer asking every step pays once."""
        if self.has_added_self_loops:
            return self
        if self._looped is None:
            ei = self.edge_index
            src, dst = ei[0], ei[1]
            keep = (src != dst).nonzero().view(-1)
            n = min(self.num_src, self.num_dst)
            loops = torch.arange(n, device=self.device)
            base = keep if self.base_edge_ids is None else self.base_edge_ids[keep]
            self._looped = Graph._build(
                torch.cat([src[keep], loops]),
                torch.cat([dst[keep], loops]),
                self.num_src,
                self.num_dst,
                base_edge_ids=base,
                num_base_edges=self.num_base_edges,
                loop_nodes=loops,
                pattern=None,
            )
            self._looped.node_order = self.node_order  # the loops keep the nodes' numbering
        return self._looped

    def edge_attr_for_edges(self, edge_attr: Tensor, fill_value: FillValue = "mean") -> Tensor:
        """Map ``edge_attr`` given for the edges the graph was built from onto this
        graph's user-order edges: rows of removed self-loops are dropped and the rows
        of added self-loops are filled like PyG's ``add_self_loops``: a scalar or a
        tensor, or a reduction (``"mean"``, ``"add"``/``"sum"``, ``"max"``, ``"min"``,
        ``"mul"``) of the attributes of the node's incoming (kept) edges."""
        if not isinstance(edge_attr, Tensor):
            raise TypeError(f"edge_attr must be a tensor, got {type(edge_attr).__name__}")
        if edge_attr.size(0) != self.num_base_edges:
            raise ValueError(
                f"edge_attr has {edge_attr.size(0)} rows but the graph was built from "
                f"{self.num_base_edges} edges; give one row per edge of edge_index"
            )
        if self.base_edge_ids is None:
            return edge_attr
        kept = edge_attr.index_select(0, self.base_edge_ids)
        if self.loop_nodes is None:
            return kept
        n = self.loop_nodes.numel()
        feat_shape = edge_attr.shape[1:]
        if isinstance(fill_value, str):
            if fill_value not in _REDUCE_FILLS:
                raise ValueError(f"fill_value must be a number, a tensor or one of {_REDUCE_FILLS}, got {fill_value!r}")
            reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}.get(fill_value, fill_value)
            dst = self.edge_index[1, : kept.size(0)]
            # Reduce over every destination (a bipartite graph may have more
            # destinations than loops), then keep the looped nodes. Nodes without
            # in-edges get the reduction's empty value as in PyG: 1 for a product, else 0.
            init = kept.new_ones if reduce == "prod" else kept.new_zeros
            loop_attr = init((self.num_dst,) + tuple(feat_shape))
            index = dst.view((-1,) + (1,) * len(feat_shape)).expand_as(kept)
            loop_attr = loop_attr.scatter_reduce(0, index, kept, reduce=reduce, include_self=False)[:n]
        elif isinstance(fill_value, Tensor):
            loop_attr = fill_value.to(device=edge_attr.device, dtype=edge_attr.dtype).expand((n,) + tuple(feat_shape))
        elif isinstance(fill_value, (int, float)) and not isinstance(fill_value, bool):
            loop_attr = edge_attr.new_full((n,) + tuple(feat_shape), float(fill_value))
        else:
            raise TypeError(f"fill_value must be a number, a tensor or a string, got {type(fill_value).__name__}")
        return torch.cat([kept, loop_attr], dim=0)

    # ---------------------------------------------------------------- validity
    def _stamp(self) -> Tuple[int, ...]:
        """Version counters of the index tensors: any in-place edit changes it."""
        if self._index_builder is not None:
            return ("lazy",)
        ts = (self.rowptr, self.col, self.row, self.perm)
        return tuple(-1 if t is None else t._version for t in ts) + (id(self.rowptr), id(self.col), id(self.row))

    def ensure_valid(self) -> "Graph":
        """Check, once, everything the fused kernels rely on (O(E)); repeated calls cost
        a few attribute reads until an index tensor is replaced or edited in place,
        which clears the cached derived structures and checks again. Returns ``self``."""
        if torch.compiler.is_compiling():
            return self
        stamp = self._stamp()
        if stamp == self._valid_stamp:
            return self
        self.validate()
        self._inv_perm = self._looped = self._transpose = self._relabeled = None
        self._edge_index = None
        self._valid_stamp = self._stamp()
        return self

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem that would make a kernel read
        out of range or disagree with the reference: dtypes, shapes, devices, CSR
        offsets, index ranges, ``row`` against ``rowptr``, ``perm`` a permutation."""
        ns, nd = _check_count("num_src", self.num_src), _check_count("num_dst", self.num_dst)
        for name in ("rowptr", "col", "row"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dtype != torch.long or t.dim() != 1:
                raise ValueError(f"Graph.{name} must be a 1-D torch.long tensor, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)} of shape {list(getattr(t, 'shape', []))}")
            if t.device != self.rowptr.device:
                raise ValueError(f"Graph.{name} is on {t.device} but rowptr is on {self.rowptr.device}")
        E = self.col.numel()
        if self.rowptr.numel() != nd + 1:
            raise ValueError(f"Graph.rowptr has {self.rowptr.numel()} entries; num_dst={nd} needs {nd + 1}")
        if self.row.numel() != E:
            raise ValueError(f"Graph.row has {self.row.numel()} entries but col has {E}")
        if int(self.rowptr[0]) != 0 or int(self.rowptr[-1]) != E:
            raise ValueError(f"Graph.rowptr must start at 0 and end at num_edges={E}, got "
                             f"{int(self.rowptr[0])} .. {int(self.rowptr[-1])}")
        if nd and bool((self.rowptr[1:] < self.rowptr[:-1]).any()):
            raise ValueError("Graph.rowptr must be non-decreasing (CSR offsets by destination)")
        _check_range(self.col, ns, "source", "source nodes")
        expected_row = torch.repeat_interleave(torch.arange(nd, device=self.rowptr.device), self.rowptr.diff())
        if not torch.equal(self.row, expected_row):
            raise ValueError("Graph.row must be each CSR edge's destination (the row its rowptr range says)")
        if self.perm is not None:
            p = self.perm
            if not isinstance(p, Tensor) or p.dtype != torch.long or p.shape != (E,):
                raise ValueError(f"Graph.perm must be a torch.long tensor of shape [{E}]")
            if E and not torch.equal(torch.sort(p)[0], torch.arange(E, device=p.device)):
                raise ValueError("Graph.perm must be a permutation of 0..num_edges-1")

    # -------------------------------------------------------------------- misc
    def to(self, device: Union[str, torch.device]) -> "Graph":
        """A copy of the graph on ``device`` (the CSR arrays and maps move)."""
        device = torch.device(device)
        if device == self.device:
            return self

        def mv(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.to(device)

        moved = self._copy_checked(mv)
        moved.node_order = self.node_order  # the setter moves it to the graph's device
        return moved

    def _copy_checked(self, move: Callable[[Optional[Tensor]], Optional[Tensor]]) -> "Graph":
        """A graph over ``move`` of each of this graph's (checked) arrays, trusted as
        checked, with the same pattern and no node order."""
        self.ensure_valid()
        copy = Graph(move(self.rowptr), move(self.col), move(self.row), move(self.perm), self.num_src, self.num_dst,
                     edge_index=move(self._edge_index), base_edge_ids=move(self.base_edge_ids),
                     num_base_edges=self.num_base_edges, loop_nodes=move(self.loop_nodes), pattern=self.pattern)
        copy._valid_stamp = copy._stamp()  # copies of (or the same) checked arrays
        return copy

    def check_nodes(self, num_src: Optional[int], num_dst: Optional[int], what: str = "x") -> None:
        """Raise if node-feature tensors do not match the graph's node counts (``None``:
        that side has no tensor to check)."""
        if num_src is not None and num_src != self.num_src:
            raise ValueError(
                f"{what}: {num_src} source-node rows but the graph has {self.num_src} source nodes"
            )
        if num_dst is not None and num_dst != self.num_dst:
            raise ValueError(
                f"{what}: {num_dst} destination-node rows but the graph has {self.num_dst} destination nodes"
            )

    def __repr__(self) -> str:
        nodes = f"num_nodes={self.num_src}" if not self.is_bipartite else f"num_src={self.num_src}, num_dst={self.num_dst}"
        extra = ", self_loops=added" if self.has_added_self_loops else ""
        pat = f", pattern={self.pattern.kind}" if self.pattern is not None else ""
        order = f", node_order={self.node_order.method}" if self.node_order is not None else ""
        return f"Graph({nodes}, num_edges={self.num_edges}{extra}{pat}{order})"
