"""Graph structure: the one object every attention op runs over.

A :class:`Graph` stores a directed (possibly bipartite) edge set in the form the
kernels want: edges sorted by destination (CSR, ``rowptr``/``col``), plus what is
needed to talk to the caller in the caller's own terms: the edge order they
gave (``edge_index`` and the permutation between the two orders), and how edge
attributes map onto the graph when self-loops were removed and added.

Building a graph sorts and validates once; layers reuse it every step.
"""
from __future__ import annotations

import operator
import threading
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


def _check_count(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as an ``int >= minimum``: the one rule for every count, size and length.
    An int, a numpy integer or a one-element integer tensor; a bool, a float (even an
    integral one) or a float tensor is refused, never truncated."""
    is_bool = isinstance(value, bool) or type(value).__name__ == "bool_" or (
        isinstance(value, Tensor) and value.dtype == torch.bool)
    try:
        n = None if is_bool or (isinstance(value, Tensor) and value.numel() != 1) else operator.index(value)
    except TypeError:
        n = None
    need = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    if n is None:
        raise TypeError(f"{name} must be {need}, got {value!r}")
    if n < minimum:
        raise ValueError(f"{name} must be {need}, got {n}")
    return n


def _check_range(idx: Tensor, bound: int, what: str, count_name: str, name: str = "edge_index") -> None:
    if idx.numel() == 0:
        return
    lo = int(idx.min())
    if lo < 0:
        raise ValueError(f"{name} has a negative {what} index ({lo}); indices must be >= 0")
    hi = int(idx.max())
    if hi >= bound:
        raise ValueError(
            f"{name} has {what} index {hi}, out of range for {bound} {count_name} "
            f"(valid indices are 0..{bound - 1})"
        )


def _check_offsets(ptr: Tensor, n: int, nnz: int, name: str) -> None:
    """``ptr`` as the ``n + 1`` compressed offsets of ``nnz`` entries: from 0 to ``nnz``, non-decreasing."""
    if ptr.numel() != n + 1:
        raise ValueError(f"{name} has {ptr.numel()} entries; {n} compressed rows need {n + 1}")
    if int(ptr[0]) != 0 or int(ptr[-1]) != nnz:
        raise ValueError(f"{name} must start at 0 and end at num_edges={nnz}, got {int(ptr[0])} .. {int(ptr[-1])}")
    if n and bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError(f"{name} must be non-decreasing (compressed offsets)")


def _dense(t: Any) -> Any:
    """An index array as the kernels read it: contiguous (a strided view is copied once)."""
    return t.contiguous() if isinstance(t, Tensor) else t


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


def _stamp_of(rowptr: Tensor, col: Tensor, row: Tensor, perm: Optional[Tensor]) -> Tuple[int, ...]:
    """Which index tensors a graph holds and their version counters (any in-place edit changes them)."""
    versions = tuple(getattr(t, "_version", -1) for t in (rowptr, col, row, perm))
    return versions + (id(rowptr), id(col), id(row))


def _offsets(index: Tensor, n: int) -> Tensor:
    """CSR offsets ``[n + 1]`` of a sorted (or any) index: ``offsets[k+1] - offsets[k]``
    is the count of ``k``. Static output shape (unlike ``bincount``), so traceable."""
    counts = torch.zeros(n + 1, dtype=torch.long, device=index.device)
    counts.index_add_(0, index + 1, torch.ones_like(index))
    return counts.cumsum(0)


def _coalesced(adj_t: Tensor, nd: int, ns: int) -> Tensor:
    """A COO ``adj_t`` with its indices checked, coalesced (torch sums repeated entries).
    A tensor flagged coalesced is coalesced again when its indices say it is not (PyG's
    ``to_edge_index`` sets the flag on a caller's tensor without coalescing it)."""
    index = adj_t._indices()
    _check_range(index[0], nd, "row (destination)", "destination nodes", "adj_t")
    _check_range(index[1], ns, "column (source)", "source nodes", "adj_t")
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
    line, what = ("row", ("column (source)", "source nodes")) if csr else ("column", ("row (destination)",
                                                                                        "destination nodes"))
    nnz = adj_t.values().size(0)
    for name, t in zip(names, (ptr, idx)):
        if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D int32 or int64 tensor, got {t.dtype} of shape {list(t.shape)}")
    if idx.numel() != nnz:
        raise ValueError(f"{names[1]} has {idx.numel()} entries but adj_t has {nnz} values")
    ptr, idx = ptr.to(torch.long, copy=True), idx.to(torch.long, copy=True)
    _check_offsets(ptr, n_major, nnz, names[0])
    _check_range(idx, n_minor, *what, name=names[1])
    major = torch.repeat_interleave(torch.arange(n_major, device=idx.device), ptr.diff(), output_size=nnz)
    if nnz > 1 and bool(((idx[1:] <= idx[:-1]) & (major[1:] == major[:-1])).any()):
        raise ValueError(f"{names[1]} must be strictly increasing within each {line} (torch's invariant: sorted, "
                         f"no repeated entry); build the adjacency with .coalesce() before converting it")
    return ptr, idx, major


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
        self._rowptr, self._col, self._row = _dense(rowptr), _dense(col), _dense(row)
        self._index_builder: Optional[Callable[[], Tuple[Tensor, Tensor, Tensor]]] = None
        # Guards what is built on first use (lazy edges, the derived values below), so
        # that threads sharing the graph build each once and never see it half built.
        self._lock = threading.RLock()
        self.perm = _dense(perm)  # None means user order == CSR order
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
        self.pattern = pattern  # after the arrays: the claim is stamped with them
        self._inv_perm: Optional[Tensor] = None
        self._looped: Optional[Graph] = None
        self._transpose: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        self._valid_stamp: Optional[Tuple[int, ...]] = None
        # A renumbering the attention ops run the kernels in (:meth:`reorder_nodes`).
        self._node_order: Optional[NodeOrder] = None
        self._relabeled: Optional[Tuple[NodeOrder, Graph]] = None  # (the order it is for, the graph)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]  # a lock is not copied or pickled: each copy gets its own
        state["_pattern"] = self.pattern  # the claim as it holds now; restamped for the copy's arrays
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self.pattern = state.get("_pattern")

    @property
    def pattern(self) -> Optional[Pattern]:
        """The recorded :class:`Pattern`: a claim about the edges that lets the dispatcher
        replace them by a dense kernel. It holds for the index arrays the graph had when
        it was made; once they are edited in place or replaced, it reads ``None`` (the
        edges, not the stale claim, are computed)."""
        pat = self._pattern
        if pat is None or self._index_builder is not None or torch.compiler.is_compiling():
            return pat
        return pat if self._stamp() == self._pattern_stamp else None

    @pattern.setter
    def pattern(self, value: Optional[Pattern]) -> None:
        self._pattern_stamp = None if self._index_builder is not None else self._stamp()
        self._pattern = value

    def _derived(self, name: str, build: Callable[[], Any]) -> Any:
        """The cached value in attribute ``name``, built by ``build`` on first use under
        the graph's lock and published in one assignment: threads sharing the graph
        build it once, and a reader sees either nothing or the whole value."""
        value = getattr(self, name)
        if value is None:
            with self._lock:
                value = getattr(self, name)
                if value is None:
                    value = build()
                    setattr(self, name, value)
        return value

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
        # The graph owns its indices: a copy (widened to int64, contiguous whatever the
        # caller's strides, e.g. ``pairs.t()``) taken before the range check, so a caller
        # who reuses its buffer can neither change this graph nor slip out-of-range
        # indices past the check.
        owned = edge_index.to(torch.long, memory_format=torch.contiguous_format, copy=True)
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
        """Build a lazy graph's arrays, once: under the lock, and the builder is dropped
        only after the arrays and their stamp are set (a thread that finds it gone finds
        the arrays)."""
        with self._lock:
            if self._index_builder is None:
                return
            self._rowptr, self._col, self._row = arrays = self._index_builder()
            self._valid_stamp = _stamp_of(*arrays, self.perm)  # built by graphattn: valid by construction
            self._pattern_stamp = self._valid_stamp  # the pattern was claimed for what the builder makes
            self._index_builder = None

    def _index(self, name: str) -> Tensor:
        if self._index_builder is not None:
            self._materialize()
        return getattr(self, name)

    rowptr = property(lambda self: self._index("_rowptr"), lambda self, v: setattr(self, "_rowptr", _dense(v)),
                      doc="CSR offsets by destination, ``[num_dst + 1]``.")
    col = property(lambda self: self._index("_col"), lambda self, v: setattr(self, "_col", _dense(v)),
                   doc="Source of each edge, in CSR order.")
    row = property(lambda self: self._index("_row"), lambda self, v: setattr(self, "_row", _dense(v)),
                   doc="Destination of each edge, in CSR order.")

    @property
    def is_materialized(self) -> bool:
        """False while a lazily built pattern's edges have not been needed yet."""
        return self._index_builder is None

    @classmethod
    def from_sparse(cls, adj_t: Any) -> Tuple["Graph", Optional[Tensor]]:
        """Build from a sparse adjacency in PyG's ``adj_t`` convention: rows are
        destinations, columns sources, shape ``(num_dst, num_src[, ...])`` (trailing dense
        dimensions are per-edge values; batched adjacencies are refused). Takes a torch
        sparse COO / CSR / CSC tensor or a ``torch_sparse.SparseTensor``. Returns the
        graph and the adjacency's values in the graph's user order (``None`` if it has
        none).

        A COO ``adj_t`` is the matrix it denotes: it is coalesced first, so entries
        repeated at one ``(row, col)`` are one edge whose value is their sum, as
        ``Tensor.coalesce`` sums them (and as PyG's layers see the matrix). CSR / CSC
        arrays must meet torch's invariants (offsets from 0 to ``nnz``, non-decreasing;
        indices in range, sorted and distinct within each row / column), checked
        before any work. A CSR ``adj_t`` *is* this graph's CSR: its arrays are copied, not sorted.
        """
        if _is_sparse_tensor_class(adj_t):
            row, col, value = adj_t.coo()
            nd, ns = adj_t.sparse_sizes()
            graph = cls.from_edge_index(torch.stack([col, row]), num_src=int(ns), num_dst=int(nd))
            return graph, value
        if not isinstance(adj_t, Tensor) or adj_t.layout == torch.strided:
            raise TypeError(f"expected a sparse adjacency (torch sparse tensor or torch_sparse.SparseTensor), "
                            f"got {type(adj_t).__name__}")
        if adj_t.layout not in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc):
            raise TypeError(f"unsupported sparse layout {adj_t.layout}; pass a COO, CSR or CSC adjacency")
        if adj_t.dim() - adj_t.dense_dim() != 2:
            raise ValueError(f"a sparse adjacency must have two sparse dimensions (num_dst, num_src) and no batch "
                             f"dimensions, got shape {list(adj_t.shape)} with {adj_t.dense_dim()} dense dimension(s); "
                             f"pass one matrix at a time")
        nd, ns = int(adj_t.shape[0]), int(adj_t.shape[1])
        if adj_t.layout == torch.sparse_coo:
            adj_t = _coalesced(adj_t, nd, ns)
            index = adj_t.indices()
            return cls._build(index[1], index[0], ns, nd), adj_t.values()
        if adj_t.layout == torch.sparse_csr:
            rowptr, col, row = _compressed(adj_t, adj_t.crow_indices(), adj_t.col_indices(), nd, ns)
            graph = cls(rowptr, col, row, None, ns, nd)
            graph._valid_stamp = graph._stamp()  # checked by _compressed, as validate() would
            return graph, adj_t.values()
        _, dst, src = _compressed(adj_t, adj_t.ccol_indices(), adj_t.row_indices(), ns, nd)
        return cls._build(src, dst, ns, nd), adj_t.values()

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
        return self._derived("_edge_index", self._user_order_edges)

    def _user_order_edges(self) -> Tensor:
        ei = torch.stack([self.col, self.row], dim=0)
        return ei if self.perm is None else ei[:, self.inv_perm]

    @property
    def inv_perm(self) -> Tensor:
        """``user_tensor = csr_tensor[inv_perm]``."""
        perm = self.perm
        if perm is None:
            return torch.arange(self.num_edges, device=self.device)

        def invert() -> Tensor:
            inv = torch.empty_like(perm)
            inv[perm] = torch.arange(perm.numel(), device=perm.device)
            return inv
        return self._derived("_inv_perm", invert)

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
        def build() -> Tuple[Tensor, Tensor, Tensor]:
            order = torch.sort(self.col, stable=True)[1]
            index = torch.int32 if max(self.num_edges, self.num_src, self.num_dst) < 2**31 else torch.long
            return _offsets(self.col, self.num_src).to(index), self.row[order].to(index), order.to(index)
        return self._derived("_transpose", build)

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
        with self._lock:  # not between a self-looped graph's build and its publication
            self._node_order = order
            self._relabeled = None
            looped = self._looped
            if looped is not None and looped is not self:
                looped.node_order = order  # the loops keep the nodes' numbering

    @property
    def relabeled(self) -> "Graph":
        """The graph the kernels run on when it holds a :attr:`node_order`: node ``v``
        renamed ``node_order.inverse[v]``, edges in the same user order. ``self`` when it
        holds none."""
        order = self._node_order  # one read: the relabelled graph is for this order
        if order is None:
            return self
        self.ensure_valid()
        entry = self._relabeled
        if entry is None or entry[0] is not order:
            with self._lock:
                entry = self._relabeled
                if entry is None or entry[0] is not order:
                    entry = self._relabeled = (order, order.relabel(self))
        return entry[1]

    # ---------------------------------------------------------------- self-loops
    def with_self_loops(self) -> "Graph":
        """This graph with existing self-loops removed and one self-loop per node
        ``i < min(num_src, num_dst)`` appended in user order (PyG's GAT convention).
        Cached on the graph, so a layer asking every step pays once."""
        if self.has_added_self_loops:
            return self
        return self._derived("_looped", self._build_self_loops)

    def _build_self_loops(self) -> "Graph":
        ei = self.edge_index
        src, dst = ei[0], ei[1]
        keep = (src != dst).nonzero().view(-1)
        n = min(self.num_src, self.num_dst)
        loops = torch.arange(n, device=self.device)
        base = keep if self.base_edge_ids is None else self.base_edge_ids[keep]
        looped = Graph._build(torch.cat([src[keep], loops]), torch.cat([dst[keep], loops]), self.num_src,
                              self.num_dst, base_edge_ids=base, num_base_edges=self.num_base_edges,
                              loop_nodes=loops, pattern=None)
        looped.node_order = self.node_order  # the loops keep the nodes' numbering
        return looped

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
    def _stamp(self) -> Tuple[Any, ...]:
        """Version counters of the index tensors: any in-place edit changes it."""
        if self._index_builder is not None:
            return ("lazy",)
        return _stamp_of(self._rowptr, self._col, self._row, self.perm)

    def ensure_valid(self) -> "Graph":
        """Check, once, everything the fused kernels rely on (O(E)); repeated calls cost
        a few attribute reads until an index tensor is replaced or edited in place,
        which clears the cached derived structures and checks again. Returns ``self``."""
        if torch.compiler.is_compiling() or self._stamp() == self._valid_stamp:
            return self
        with self._lock:  # the check again: another thread may have just validated (or materialised) it
            if self._stamp() != self._valid_stamp:
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
        _check_offsets(self.rowptr, nd, E, "Graph.rowptr")
        if self.row.numel() != E:
            raise ValueError(f"Graph.row has {self.row.numel()} entries but col has {E}")
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
