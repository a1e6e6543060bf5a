"""Graph structure: the one object every attention op runs over.

A :class:`Graph` stores a directed (possibly bipartite) edge set in the form the
kernels want: edges sorted by destination (CSR, ``rowptr``/``col``), plus what is
needed to talk to the caller in the caller's own terms: the edge order they
gave (``edge_index`` and the permutation between the two orders), and how edge
attributes map onto the graph when self-loops were removed and added.

Building a graph sorts and validates once; layers reuse it every step. The graph is
the CSR value (its arrays, validated once and re-checked only after an in-place edit,
and what it derives from them, cached by the arrays' version stamps); the builders,
the self-loop rules and the sparse export are functions in
:mod:`graphattn._graph_build`, node orders are in :mod:`graphattn.ordering`, and
neither is imported back from here.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch
from torch import Tensor

from . import _graph_build as build
from ._csr import check_count, check_offsets, check_range, dense, offsets, stamp_of
from ._graph_build import FillValue, GraphArrays, both_directions, undirected_pairs

__all__ = [
    "Graph",
    "Pattern",
    "PatternKind",
    "FillValue",
    "NodeRenumbering",
    "register_order_resolver",
    "undirected_pairs",
    "both_directions",
]


class PatternKind(str, enum.Enum):
    """The shapes a :class:`Pattern` can record, one member per builder of
    :mod:`graphattn.patterns`.

    The dispatcher acts on four: ``COMPLETE`` (every query attends to every key of its
    block), ``CAUSAL`` (token ``i`` to tokens ``0..i``), ``BAND`` (``left``/``right``
    neighbours, clipped at the ends) and ``CROSS`` (complete bipartite); the others only
    describe the graph. ``GRAPH`` is a block built without a recorded pattern (in
    :func:`~graphattn.patterns.batch` and :func:`~graphattn.patterns.union`).

    Members are strings (``PatternKind.CAUSAL == "causal"``, ``str()`` and f-strings give
    the value), and a name outside this list is a ``ValueError``.
    """

    COMPLETE = "complete"
    CAUSAL = "causal"
    BAND = "band"
    CROSS = "cross"
    DILATED = "dilated"
    GLOBAL_LOCAL = "global_local"
    RANDOM = "random"
    BIGBIRD = "bigbird"
    UNION = "union"
    EXPANDER = "expander"
    VIRTUAL = "virtual"
    SPARSE_GLOBAL = "sparse_global"
    GRAPH = "graph"

    __str__ = str.__str__  # the value, as the plain strings these replaced printed
    __format__ = str.__format__

    @classmethod
    def _missing_(cls, value: object) -> "PatternKind":
        allowed = ", ".join(repr(k.value) for k in cls)
        raise ValueError(f"unknown pattern kind {value!r}; the kinds are {allowed}")


@dataclass(frozen=True)
class Pattern:
    """What is known about a graph's shape, so the dispatcher may use a dense kernel.

    ``kind`` is a :class:`PatternKind` (its string value is accepted and converted; any
    other name is a ``ValueError``). ``params`` are the builder's arguments (e.g. a
    band's ``left``/``right``). ``batch`` is the per-sequence lengths when the graph is a
    block-diagonal batch of sequences.
    """

    kind: PatternKind
    params: Tuple[Tuple[str, Any], ...] = ()
    batch: Optional[Tuple[int, ...]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", PatternKind(self.kind))

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)


@runtime_checkable
class NodeRenumbering(Protocol):
    """What a graph holds as its node order (:attr:`Graph.node_order`), e.g. a
    :class:`graphattn.ordering.NodeOrder`: ``perm[k]`` is the original id of the node at
    position ``k``; ``apply`` / ``undo`` permute node tensors into the order and back;
    ``relabel(graph)`` is ``graph`` with its nodes renamed into the order."""

    perm: Tensor
    method: str

    @property
    def num_nodes(self) -> int: ...

    def apply(self, x: Tensor) -> Tensor: ...

    def undo(self, y: Tensor) -> Tensor: ...

    def relabel(self, graph: "Graph") -> "Graph": ...

    def to(self, device: Union[str, torch.device]) -> "NodeRenumbering": ...


_order_resolver: Optional[Callable[..., NodeRenumbering]] = None


def register_order_resolver(resolve: Callable[..., NodeRenumbering]) -> None:
    """Install ``resolve(graph, method, **options) -> order``, what :meth:`Graph.reorder_nodes`
    calls for an order given by name. :mod:`graphattn.ordering` installs its
    :func:`~graphattn.ordering.node_order` when imported (``import graphattn`` imports it,
    and so does any ``import graphattn.graph``), so the dependency runs one way:
    ordering uses the graph, the graph never imports ordering."""
    global _order_resolver
    _order_resolver = resolve


class _DerivedCache:
    """What a graph computes from its arrays on first use, by name, each entry stamped
    with the graph's version stamp (and an optional key object) it was built for.

    A read returns an entry only for the current stamp and the same key, so an in-place
    edit or a replaced array makes every older entry stale: nothing is cleared by hand.
    A miss builds under the cache's lock and publishes ``(stamp, key, value)`` in one
    assignment: threads sharing the graph build each value once and never see one half
    built. A copied or pickled cache starts empty (its stamps name the original's tensors).
    """

    def __init__(self) -> None:
        self._entries: Dict[str, Tuple[Any, Any, Any]] = {}
        self.lock = threading.RLock()

    def __reduce__(self):
        return _DerivedCache, ()

    def peek(self, name: str, stamp: Any, key: Any = None) -> Any:
        """The value cached for ``stamp`` and ``key``, or ``None``."""
        entry = self._entries.get(name)  # one read: stamp, key and value belong together
        return entry[2] if entry is not None and entry[0] == stamp and entry[1] is key else None

    def get(self, name: str, stamp: Any, make: Callable[[], Any], key: Any = None) -> Any:
        """The value cached for ``stamp`` and ``key``, made by ``make()`` on a miss, once."""
        value = self.peek(name, stamp, key)
        if value is None:
            with self.lock:
                value = self.peek(name, stamp, key)  # another thread may have just made it
                if value is None:
                    value = make()
                    self._entries[name] = (stamp, key, value)
        return value

    def put(self, name: str, stamp: Any, value: Any) -> None:
        self._entries[name] = (stamp, None, value)

    def latest(self, name: str, key: Any = None) -> Any:
        """The value last cached under ``name`` for ``key``, whatever its stamp (``None`` if
        none): for traced code, which reads no version counters."""
        entry = self._entries.get(name)
        return entry[2] if entry is not None and entry[1] is key else None


class _LazyEdges:
    """A pattern's CSR arrays, made by ``make() -> (rowptr, col)`` on first need (see
    :meth:`Graph.from_csr_builder`); ``num_edges`` and ``device`` answer before that."""

    def __init__(self, make: Callable[[], Tuple[Tensor, Tensor]], num_edges: int, device: torch.device) -> None:
        self.make, self.num_edges, self.device = make, num_edges, device
        self.lock = threading.Lock()

    def __reduce__(self):
        return _LazyEdges, (self.make, self.num_edges, self.device)

    def arrays(self, num_nodes: int) -> Tuple[Tensor, Tensor, Tensor]:
        rowptr, col = self.make()
        degree = rowptr.diff()
        row = torch.repeat_interleave(torch.arange(num_nodes, device=col.device), degree, output_size=self.num_edges)
        return rowptr, col, row


def _transposed(col: Tensor, row: Tensor, num_src: int, num_dst: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``(colptr, row_by_src, edge_id)`` of CSR arrays, int32 where the sizes allow."""
    order = torch.sort(col, stable=True)[1]
    index = torch.int32 if max(col.numel(), num_src, num_dst) < 2**31 else torch.long
    return offsets(col, num_src).to(index), row[order].to(index), order.to(index)


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

    Build with :meth:`from_edge_index`, :meth:`from_sparse`, :meth:`from_networkx` or
    :meth:`from_pyg` (checked input), or :meth:`from_trusted_edges` (edges the caller
    made in range itself). What the graph derives from its arrays (the self-looped
    graph, the transposed CSR, the inverse permutation, the relabelled graph, the
    user-order ``edge_index``) is built on first use, once, and kept for as long as the
    arrays are unchanged.
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
        """A graph over these CSR arrays, checked in full on first use
        (:meth:`ensure_valid`), since the fused kernels index with them. ``edge_index``,
        if given, is taken as the user-order edges the arrays were sorted from."""
        self._rowptr, self._col, self._row = dense(rowptr), dense(col), dense(row)
        self.perm = dense(perm)  # None means user order == CSR order
        self.num_src = num_src
        self.num_dst = num_dst
        # How user-order edges relate to the edges the caller built the graph from
        # (for edge_attr): base_edge_ids[k] is the base edge of user edge k, for the
        # first len(base_edge_ids) user edges; the rest are self-loops on loop_nodes.
        self.base_edge_ids = base_edge_ids
        self.num_base_edges = (
            num_base_edges if num_base_edges is not None else (col.numel() if col is not None else None)
        )
        self.loop_nodes = loop_nodes
        self._lazy: Optional[_LazyEdges] = None  # arrays made on first need (from_csr_builder)
        self._derived = _DerivedCache()
        # A renumbering the attention ops run the kernels in (:meth:`reorder_nodes`).
        self._node_order: Optional[NodeRenumbering] = None
        self._pattern: Optional[Pattern] = None
        self._pattern_stamp: Optional[Tuple[Any, ...]] = None
        self.pattern = pattern  # after the arrays: the claim is stamped with them
        if edge_index is not None:
            self._derived.put("edge_index", self._stamp(), edge_index)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pattern"] = self.pattern  # the claim as it holds now; restamped for the copy's arrays
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.pattern = state.get("_pattern")

    # ---------------------------------------------------------------- builders
    @classmethod
    def _of(cls, arrays: GraphArrays, pattern: Optional[Pattern] = None) -> "Graph":
        """The graph of a builder's arrays: valid as built when ``arrays.checked``
        (and then holding its ``edge_index``), else checked in full on first use."""
        graph = cls(
            arrays.rowptr,
            arrays.col,
            arrays.row,
            arrays.perm,
            arrays.num_src,
            arrays.num_dst,
            edge_index=arrays.edge_index if arrays.checked else None,
            base_edge_ids=arrays.base_edge_ids,
            num_base_edges=arrays.num_base_edges,
            loop_nodes=arrays.loop_nodes,
            pattern=pattern,
        )
        if arrays.checked:
            graph._derived.put("valid", graph._stamp(), True)
        return graph

    @classmethod
    def from_trusted_edges(
        cls, src: Tensor, dst: Tensor, num_src: int, num_dst: int, *, pattern: Optional[Pattern] = None
    ) -> "Graph":
        """A graph from edges ``src[e] -> dst[e]`` that the caller vouches for: nothing
        is checked. What patterns, node orders and the sequence layers build their
        graphs with; a caller's own edges go through :meth:`from_edge_index`, which
        copies, widens and checks them.

        The contract: ``src`` and ``dst`` are 1-D ``torch.long`` tensors of one length on
        one device, every ``src[e]`` in ``[0, num_src)`` and every ``dst[e]`` in
        ``[0, num_dst)``, ``num_src`` and ``num_dst`` non-negative ints; ``pattern``, if
        given, describes exactly these edges (the dispatcher may run a dense kernel from
        it instead). In return, the graph is valid as built (no O(E) check runs unless
        its arrays are later edited in place); the given order is its user order; the
        edges are stacked into an ``edge_index`` the graph owns (later edits of ``src`` or
        ``dst`` do not reach it) and sorted by destination, stably, unless already sorted.
        """
        return cls._of(build.trusted_edges(src, dst, num_src, num_dst), pattern)

    @classmethod
    def from_csr_builder(
        cls,
        num_nodes: int,
        num_edges: int,
        make: Callable[[], Tuple[Tensor, Tensor]],
        *,
        device: Optional[Union[str, torch.device]] = None,
        pattern: Optional[Pattern] = None,
    ) -> "Graph":
        """A square graph whose CSR arrays ``make() -> (rowptr, col)`` are made on first
        use, for patterns a dense kernel runs from ``pattern`` alone (complete blocks):
        when the dispatcher picks such a kernel the edges are never materialised.
        Trusted like :meth:`from_trusted_edges`: ``make`` must return ``num_nodes + 1``
        offsets and ``num_edges`` sources in range, sorted by destination, on ``device``;
        it is called once."""
        graph = cls(None, None, None, None, num_nodes, num_nodes, num_base_edges=num_edges)
        graph._lazy = _LazyEdges(make, num_edges, torch.device(device) if device is not None else torch.device("cpu"))
        graph.pattern = pattern  # a claim about what ``make`` will build
        return graph

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
        arrays = build.edge_index_arrays(edge_index, num_nodes, num_src=num_src, num_dst=num_dst, validate=validate)
        graph = cls._of(arrays, pattern)
        return graph.with_self_loops() if add_self_loops else graph

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
        arrays, values = build.sparse_arrays(adj_t)
        return cls._of(arrays), values

    @classmethod
    def from_networkx(
        cls, graph: Any, *, add_self_loops: bool = False, nodelist: Optional[Sequence[Any]] = None
    ) -> "Graph":
        """Build from a networkx graph; nodes are numbered in ``nodelist`` order
        (default: ``graph.nodes`` order). An undirected graph gives both directions
        of every edge, as PyG's ``from_networkx`` does."""
        edge_index, num_nodes = build.networkx_edge_index(graph, nodelist)
        return cls.from_edge_index(edge_index, num_nodes, add_self_loops=add_self_loops)

    @classmethod
    def from_pyg(cls, data: Any, *, add_self_loops: bool = False) -> "Graph":
        """Build from a PyG ``Data`` object (its ``edge_index`` and ``num_nodes``)."""
        edge_index, num_nodes = build.pyg_edge_index(data)
        return cls.from_edge_index(edge_index, num_nodes, add_self_loops=add_self_loops)

    def to_sparse(self, values: Tensor, layout: torch.layout = torch.sparse_coo) -> Tensor:
        """A torch sparse tensor in the ``adj_t`` convention (``(num_dst, num_src, ...)``)
        holding per-edge ``values`` given in user order, in ``layout`` (COO, CSR or CSC)."""
        return build.to_sparse(self.edge_index, values, self.num_src, self.num_dst, layout)

    # ---------------------------------------------------------------- arrays
    def _materialize(self) -> None:
        """Make a lazy graph's arrays, once: under the lazy edges' lock, and ``_lazy`` is
        dropped only after the arrays and their stamps are set (a thread that finds it
        gone finds the arrays)."""
        lazy = self._lazy
        if lazy is None:
            return
        with lazy.lock:
            if self._lazy is None:
                return
            self._rowptr, self._col, self._row = arrays = lazy.arrays(self.num_dst)
            stamp = stamp_of(*arrays, self.perm)
            self._derived.put("valid", stamp, True)  # built by graphattn: valid by construction
            self._pattern_stamp = stamp  # the pattern was claimed for what the builder makes
            self._lazy = None

    def _index(self, name: str) -> Tensor:
        if self._lazy is not None:
            self._materialize()
        return getattr(self, name)

    rowptr = property(
        lambda self: self._index("_rowptr"),
        lambda self, v: setattr(self, "_rowptr", dense(v)),
        doc="CSR offsets by destination, ``[num_dst + 1]``.",
    )
    col = property(
        lambda self: self._index("_col"),
        lambda self, v: setattr(self, "_col", dense(v)),
        doc="Source of each edge, in CSR order.",
    )
    row = property(
        lambda self: self._index("_row"),
        lambda self, v: setattr(self, "_row", dense(v)),
        doc="Destination of each edge, in CSR order.",
    )

    @property
    def is_materialized(self) -> bool:
        """False while a lazily built pattern's edges have not been needed yet."""
        return self._lazy is None

    @property
    def num_edges(self) -> int:
        lazy = self._lazy  # one read: another thread may materialise the graph meanwhile
        return lazy.num_edges if lazy is not None else self.col.numel()

    @property
    def device(self) -> torch.device:
        lazy = self._lazy
        return lazy.device if lazy is not None else self.col.device

    @property
    def is_bipartite(self) -> bool:
        return self.num_src != self.num_dst

    @property
    def has_added_self_loops(self) -> bool:
        return self.loop_nodes is not None

    @property
    def pattern(self) -> Optional[Pattern]:
        """The recorded :class:`Pattern`: a claim about the edges that lets the dispatcher
        replace them by a dense kernel. It holds for the index arrays the graph had when
        it was made; once they are edited in place or replaced, it reads ``None`` (the
        edges, not the stale claim, are computed)."""
        pat = self._pattern
        if pat is None or self._lazy is not None or torch.compiler.is_compiling():
            return pat
        return pat if self._stamp() == self._pattern_stamp else None

    @pattern.setter
    def pattern(self, value: Optional[Pattern]) -> None:
        self._pattern_stamp = None if self._lazy is not None else self._stamp()
        self._pattern = value

    # ---------------------------------------------------------------- validity
    def _stamp(self) -> Tuple[Any, ...]:
        """Version counters of the index tensors: any in-place edit changes it."""
        if self._lazy is not None:
            return ("lazy",)
        return stamp_of(self._rowptr, self._col, self._row, self.perm)

    def _cached(self, name: str, make: Callable[[], Any], key: Any = None) -> Any:
        """The derived value ``name`` for the arrays as they are now (and ``key``)."""
        if torch.compiler.is_compiling():  # traced code reads what eager runs cached
            value = self._derived.latest(name, key)
            return make() if value is None else value
        self._materialize()
        return self._derived.get(name, self._stamp(), make, key)

    def _is_checked(self) -> bool:
        """Whether the arrays as they are now were checked (or made by graphattn)."""
        return self._lazy is not None or self._derived.peek("valid", self._stamp()) is not None

    def ensure_valid(self) -> "Graph":
        """Check, once, everything the fused kernels rely on (O(E)); repeated calls cost
        a few attribute reads until an index tensor is replaced or edited in place,
        which makes the cached derived structures stale and checks again. Returns ``self``."""
        if self._lazy is None and not torch.compiler.is_compiling():
            self._derived.get("valid", self._stamp(), self._checked)
        return self

    def _checked(self) -> bool:
        self.validate()
        return True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem that would make a kernel read
        out of range or disagree with the reference: dtypes, shapes, devices, CSR
        offsets, index ranges, ``row`` against ``rowptr``, ``perm`` a permutation."""
        ns, nd = check_count("num_src", self.num_src), check_count("num_dst", self.num_dst)
        for name in ("rowptr", "col", "row"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dtype != torch.long or t.dim() != 1:
                raise ValueError(
                    f"Graph.{name} must be a 1-D torch.long tensor, got "
                    f"{getattr(t, 'dtype', type(t).__name__)} of shape {list(getattr(t, 'shape', []))}"
                )
            if t.device != self.rowptr.device:
                raise ValueError(f"Graph.{name} is on {t.device} but rowptr is on {self.rowptr.device}")
        E = self.col.numel()
        check_offsets(self.rowptr, nd, E, "Graph.rowptr")
        if self.row.numel() != E:
            raise ValueError(f"Graph.row has {self.row.numel()} entries but col has {E}")
        check_range(self.col, ns, "source", "source nodes")
        expected_row = torch.repeat_interleave(torch.arange(nd, device=self.rowptr.device), self.rowptr.diff())
        if not torch.equal(self.row, expected_row):
            raise ValueError("Graph.row must be each CSR edge's destination (the row its rowptr range says)")
        if self.perm is not None:
            p = self.perm
            if not isinstance(p, Tensor) or p.dtype != torch.long or p.shape != (E,):
                raise ValueError(f"Graph.perm must be a torch.long tensor of shape [{E}]")
            if E and not torch.equal(torch.sort(p)[0], torch.arange(E, device=p.device)):
                raise ValueError("Graph.perm must be a permutation of 0..num_edges-1")

    # ---------------------------------------------------------------- edge orders
    @property
    def edge_index(self) -> Tensor:
        """``[2, E]`` in user order (row 0 = source)."""
        return self._cached("edge_index", self._user_order_edges)

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

        return self._cached("inv_perm", invert)

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
        return self._cached("transpose", lambda: _transposed(self.col, self.row, self.num_src, self.num_dst))

    # ---------------------------------------------------------------- node order
    def reorder_nodes(self, order: Union[str, NodeRenumbering] = "locality", **options: Any) -> "Graph":
        """A new graph over the same arrays, holding a node order for memory locality
        that the attention ops apply and undo transparently: node tensors in, outputs
        and gradients out, and edge tensors all stay in the caller's numbering and
        order. The ops run the kernels on :attr:`relabeled` with the node tensors permuted (a
        row gather per node tensor in and one for the output, forward and backward).

        ``order`` is a :class:`~graphattn.ordering.NodeOrder` (any
        :class:`NodeRenumbering`) or a method name (``"locality"``, ``"degree"``,
        ``"rcm"``; ``options`` go to :func:`graphattn.ordering.node_order`). Square graphs
        without a dense pattern only: a pattern's numbering is what its dense kernels run
        on. When one model runs many ops on the same graph, relabelling the data once
        (``order.apply(x)``, ``order.relabel(graph)``, ``order.undo(out)``) avoids the
        per-op permutations."""
        self._check_orderable(None)
        if not isinstance(order, NodeRenumbering):
            if _order_resolver is None:  # pragma: no cover - importing graphattn registers it
                raise RuntimeError("no node order methods are registered; import graphattn.ordering")
            order = _order_resolver(self.ensure_valid(), order, **options)
        ordered = self._copy_checked(lambda t: t)  # the same arrays
        ordered.node_order = order
        return ordered

    def _check_orderable(self, order: Optional[NodeRenumbering]) -> None:
        if self.pattern is not None:
            raise ValueError(
                f"this graph has a '{self.pattern.kind}' pattern: its numbering is what the dense "
                "kernels run on, so it is not reordered"
            )
        if order is not None and (self.is_bipartite or order.num_nodes != self.num_src):
            raise ValueError(
                f"a node order over {order.num_nodes} nodes does not fit a graph with {self.num_src} "
                f"source and {self.num_dst} destination nodes"
            )

    @property
    def node_order(self) -> Optional[NodeRenumbering]:
        """The renumbering the attention ops run the kernels in, or ``None``. Assigning
        one (or ``None``) makes the relabelled graph built for the previous order stale
        and carries the new order to the cached self-looped graph."""
        return self._node_order

    @node_order.setter
    def node_order(self, order: Optional[NodeRenumbering]) -> None:
        if order is not None:
            self._check_orderable(order)
            if order.perm.device != self.device:
                order = order.to(self.device)  # not copied again on every op
        with self._derived.lock:  # not between a self-looped graph's build and its publication
            self._node_order = order
            looped = self._derived.peek("looped", self._stamp())
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
        return self._cached("relabeled", lambda: order.relabel(self), key=order)

    @property
    def _relabeled(self) -> Optional["Graph"]:
        """The relabelled graph if already built for the current order, else ``None``
        (what tests look at to see that the ops used it)."""
        return self._derived.peek("relabeled", self._stamp(), self._node_order)

    # ---------------------------------------------------------------- self-loops
    def with_self_loops(self) -> "Graph":
        """This graph with existing self-loops removed and one self-loop per node
        ``i < min(num_src, num_dst)`` appended in user order (PyG's GAT convention).
        Cached on the graph, so a layer asking every step pays once."""
        if self.has_added_self_loops:
            return self
        return self._cached("looped", self._self_looped)

    def _self_looped(self) -> "Graph":
        edge_index = self.edge_index
        looped = Graph._of(
            build.self_looped(
                edge_index,
                self.num_src,
                self.num_dst,
                self.base_edge_ids,
                self.num_base_edges,
                checked=self._is_checked(),
            )
        )
        looped.node_order = self.node_order  # the loops keep the nodes' numbering
        return looped

    def edge_attr_for_edges(self, edge_attr: Tensor, fill_value: FillValue = "mean") -> Tensor:
        """Map ``edge_attr`` given for the edges the graph was built from onto this
        graph's user-order edges: rows of removed self-loops are dropped and the rows
        of added self-loops are filled like PyG's ``add_self_loops``: a scalar or a
        tensor, or a reduction (``"mean"``, ``"add"``/``"sum"``, ``"max"``, ``"min"``,
        ``"mul"``) of the attributes of the node's incoming (kept) edges."""
        return build.edge_attr_for_edges(
            edge_attr,
            fill_value,
            num_base_edges=self.num_base_edges,
            base_edge_ids=self.base_edge_ids,
            loop_nodes=self.loop_nodes,
            dst=lambda: self.edge_index[1],
            num_dst=self.num_dst,
        )

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
        held = self._derived.peek("edge_index", self._stamp())
        return Graph._of(
            GraphArrays(
                move(self.rowptr),
                move(self.col),
                move(self.row),
                move(self.perm),
                self.num_src,
                self.num_dst,
                move(held),
                move(self.base_edge_ids),
                self.num_base_edges,
                move(self.loop_nodes),
            ),
            self.pattern,
        )

    def check_nodes(self, num_src: Optional[int], num_dst: Optional[int], what: str = "x") -> None:
        """Raise if node-feature tensors do not match the graph's node counts (``None``:
        that side has no tensor to check)."""
        if num_src is not None and num_src != self.num_src:
            raise ValueError(f"{what}: {num_src} source-node rows but the graph has {self.num_src} source nodes")
        if num_dst is not None and num_dst != self.num_dst:
            raise ValueError(
                f"{what}: {num_dst} destination-node rows but the graph has {self.num_dst} destination nodes"
            )

    def __repr__(self) -> str:
        nodes = (
            f"num_nodes={self.num_src}" if not self.is_bipartite else f"num_src={self.num_src}, num_dst={self.num_dst}"
        )
        extra = ", self_loops=added" if self.has_added_self_loops else ""
        pat = f", pattern={self.pattern.kind}" if self.pattern is not None else ""
        order = f", node_order={self.node_order.method}" if self.node_order is not None else ""
        return f"Graph({nodes}, num_edges={self.num_edges}{extra}{pat}{order})"
