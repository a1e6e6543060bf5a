"""Node orders for memory locality: a renumbering of a graph's nodes that the kernels
run in, applied to node tensors on the way in and undone on the way out.

The fused kernels gather one source row per edge. When a graph's node ids are
scattered (a crawl order, a shuffled dataset, ids given by a database), the sources
of neighbouring destinations lie far apart in memory and every gather misses the
caches and the TLB. Renumbering the nodes so that linked nodes get nearby ids makes
the same gathers hit memory that was just read. Three orders:

* ``"locality"`` (default): a few steps of neighbour averaging smooth random
  coordinates over the graph (linked nodes end with similar coordinates: a cheap
  spectral embedding), then recursive coordinate bisection orders the nodes by
  those coordinates, as a k-d tree would. ``O(steps * E + N log N)``, vectorised,
  on the graph's device. It recovers most of the locality a shuffled
  community-structured graph had (see ``benchmarks/node_order.py``).
* ``"degree"``: nodes by decreasing total degree, so that the hubs most edges read
  share cache lines.
* ``"rcm"``: reverse Cuthill-McKee (scipy's), the classic bandwidth-reducing order.
  It suits mesh-like graphs; on small-world graphs its breadth-first levels grow to
  most of the graph and it gains little.

A :class:`NodeOrder` is used in one of two ways:

* held by a graph (:meth:`graphattn.Graph.reorder_nodes`): every attention op run on
  that graph permutes its node tensors into the order, runs the kernel on the
  relabelled graph, and permutes the output back. Transparent, and each op pays a row
  gather per node tensor in and one for its output, forward and again backward.
* applied to the data once (:meth:`NodeOrder.apply` to features and labels,
  :meth:`NodeOrder.relabel` to the graph, :meth:`NodeOrder.undo` on predictions):
  no per-op cost; what to do when the whole model runs on one graph.
"""

from __future__ import annotations

import warnings
from typing import Union

import torch
from torch import Tensor

from .graph import Graph, register_order_resolver

__all__ = ["NodeOrder", "node_order", "METHODS"]

METHODS = ("locality", "degree", "rcm")


class _PermuteRows(torch.autograd.Function):
    """``x[perm]`` whose backward is a gather by the inverse permutation (instead of
    the scatter-add into zeros that ``index_select``'s backward does)."""

    @staticmethod
    def forward(ctx, x: Tensor, perm: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(perm, inverse)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: Tensor):
        perm, inverse = ctx.saved_tensors
        return _PermuteRows.apply(grad, inverse, perm), None, None


class NodeOrder:
    """A renumbering of ``num_nodes`` nodes: ``perm[k]`` is the original id of the node
    at position ``k`` of the new order, ``inverse[v]`` the new position of original node
    ``v``. Build one with :func:`node_order` or from your own permutation."""

    def __init__(self, perm: Tensor, *, method: str = "given") -> None:
        if not isinstance(perm, Tensor) or perm.dim() != 1 or perm.is_floating_point() or perm.dtype == torch.bool:
            raise ValueError(
                f"a node order must be a 1-D integer tensor (a permutation of 0..num_nodes-1), got "
                f"{getattr(perm, 'dtype', type(perm).__name__)} "
                f"of shape {list(getattr(perm, 'shape', []))}"
            )
        perm = perm.to(torch.long, copy=True)
        n = perm.numel()
        inverse = torch.full_like(perm, -1)
        if n:
            if int(perm.min()) < 0 or int(perm.max()) >= n:
                raise ValueError(
                    f"a node order over {n} nodes must hold the ids 0..{n - 1}; it holds "
                    f"{int(perm.min())}..{int(perm.max())}"
                )
            inverse[perm] = torch.arange(n, device=perm.device)
            if bool((inverse < 0).any()):
                raise ValueError("a node order must hold every node id once; some ids repeat")
        self.perm, self.inverse, self.method = perm, inverse, method

    @property
    def num_nodes(self) -> int:
        return self.perm.numel()

    def _check_rows(self, t: Tensor, what: str) -> None:
        if not isinstance(t, Tensor) or t.dim() == 0 or t.size(0) != self.num_nodes:
            raise ValueError(
                f"{what}: a node tensor needs {self.num_nodes} rows (one per node), got "
                f"{list(t.shape) if isinstance(t, Tensor) else type(t).__name__}"
            )

    def apply(self, x: Tensor) -> Tensor:
        """The rows of node tensor ``x`` (original order) in this order: ``x[perm]``.
        Differentiable; its backward is a gather too."""
        self._check_rows(x, "NodeOrder.apply")
        return _PermuteRows.apply(x, self.perm.to(x.device), self.inverse.to(x.device))

    def undo(self, y: Tensor) -> Tensor:
        """The rows of node tensor ``y`` (this order) back in the original order: ``y[inverse]``."""
        self._check_rows(y, "NodeOrder.undo")
        return _PermuteRows.apply(y, self.inverse.to(y.device), self.perm.to(y.device))

    def relabel(self, graph: Graph) -> Graph:
        """``graph`` with node ``v`` renamed ``inverse[v]``: the same edges in the same
        (user) order, so per-edge tensors need no change. A plain graph (it holds no
        node order and no record of added self-loops: its loops are ordinary edges)."""
        if graph.is_bipartite or graph.num_src != self.num_nodes:
            raise ValueError(
                f"this node order is over {self.num_nodes} nodes; the graph has "
                f"{graph.num_src} source and {graph.num_dst} destination nodes"
            )
        graph.ensure_valid()
        inverse = self.inverse.to(graph.device)
        user_order = slice(None) if graph.perm is None else graph.inv_perm  # from the checked CSR arrays
        src, dst = graph.col[user_order], graph.row[user_order]
        return Graph.from_trusted_edges(inverse[src], inverse[dst], graph.num_src, graph.num_dst)

    def to(self, device: Union[str, torch.device]) -> "NodeOrder":
        moved = NodeOrder.__new__(NodeOrder)
        moved.perm, moved.inverse, moved.method = self.perm.to(device), self.inverse.to(device), self.method
        return moved

    def __repr__(self) -> str:
        return f"NodeOrder(num_nodes={self.num_nodes}, method={self.method!r})"


def node_order(
    graph: Graph, method: str = "locality", *, dims: int = 3, steps: int = 10, leaf: int = 64, seed: int = 0
) -> NodeOrder:
    """A locality order for a square graph's nodes (see the module docstring).

    Args:
        method: ``"locality"``, ``"degree"`` or ``"rcm"``.
        dims, steps, seed: the ``"locality"`` embedding: coordinates per node, averaging
            steps, and the seed of the random start (the order is deterministic given it).
        leaf: ``"locality"`` stops bisecting groups of at most this many nodes.
    """
    if graph.is_bipartite:
        raise ValueError(
            "node orders are for graphs with one node set; this graph is bipartite "
            f"({graph.num_src} sources, {graph.num_dst} destinations)"
        )
    if method == "locality":
        for name, v in (("dims", dims), ("steps", steps), ("leaf", leaf)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        coords = _smoothed_coordinates(graph, dims, steps, seed)
        return NodeOrder(_bisection_order(coords, leaf=leaf), method=method)
    if method == "degree":
        colptr = graph.transpose_csr()[0]
        degree = graph.rowptr.diff() + colptr.diff()
        return NodeOrder(torch.argsort(degree, descending=True, stable=True), method=method)
    if method == "rcm":
        return NodeOrder(_rcm(graph), method=method)
    raise ValueError(f"unknown node order method {method!r}; choose one of {METHODS}")


# Graph.reorder_nodes("locality") resolves a method name through this: the graph never
# imports this module (ordering depends on graph, not back).
register_order_resolver(node_order)


def _smoothed_coordinates(graph: Graph, dims: int, steps: int, seed: int) -> Tensor:
    """``dims`` random coordinates per node, averaged ``steps`` times over each node's
    in- and out-neighbours and itself, standardised after each step (so they do not
    shrink to the mean): nodes that are linked end with nearby coordinates."""
    n, device = graph.num_dst, graph.device
    generator = torch.Generator(device=device).manual_seed(seed)
    coords = torch.randn(n, dims, generator=generator, device=device)
    if n == 0 or graph.num_edges == 0:
        return coords
    ones = torch.ones(graph.num_edges, device=device)
    colptr, row_by_src, _ = graph.transpose_csr()
    with warnings.catch_warnings():  # torch's "sparse CSR is in beta" notice; the arrays are checked ones
        warnings.simplefilter("ignore", UserWarning)
        into = torch.sparse_csr_tensor(graph.rowptr, graph.col, ones, (n, n), check_invariants=False)
        out_of = torch.sparse_csr_tensor(colptr, row_by_src, ones, (n, n), check_invariants=False)
    count = (graph.rowptr.diff() + colptr.diff() + 1).to(coords.dtype).unsqueeze(1)
    for _ in range(steps):
        coords = (into @ coords + out_of @ coords + coords) / count
        coords = (coords - coords.mean(0)) / coords.std(0, correction=0).clamp_min(torch.finfo(coords.dtype).tiny)
    return coords


def _bisection_order(coords: Tensor, parts: int = 4, leaf: int = 64) -> Tensor:
    """Nodes ordered by recursive coordinate bisection: every group is split into
    ``parts`` slices of equal count along one coordinate (cycling through them), until
    groups hold about ``leaf`` nodes; the last level orders each group by the next
    coordinate. All groups of a level are split at once (two sorts per level)."""
    n, dims = coords.shape
    group = torch.zeros(n, dtype=torch.long, device=coords.device)
    groups, level = 1, 0
    while n > leaf * groups:
        order = _by_group_then(group, coords[:, level % dims])
        sorted_group = group[order]
        size = torch.bincount(sorted_group, minlength=groups)
        first = size.cumsum(0) - size
        rank = torch.arange(n, device=coords.device) - first[sorted_group]
        group[order] = sorted_group * parts + rank * parts // size[sorted_group]
        groups, level = groups * parts, level + 1
    return _by_group_then(group, coords[:, level % dims])


def _by_group_then(group: Tensor, coord: Tensor) -> Tensor:
    """Positions sorted by ``group``, ties by ``coord``."""
    order = torch.argsort(coord, stable=True)
    return order[torch.argsort(group[order], stable=True)]


def _rcm(graph: Graph) -> Tensor:
    try:
        import numpy as np
        import scipy.sparse as sp
        from scipy.sparse.csgraph import reverse_cuthill_mckee
    except ImportError as e:  # pragma: no cover - scipy is in the dev environment
        raise ImportError("the 'rcm' node order uses scipy: pip install 'graphattn[data]' (or scipy)") from e
    n = graph.num_dst
    if n == 0:  # scipy refuses an empty matrix
        return torch.zeros(0, dtype=torch.long, device=graph.device)
    ei = graph.edge_index.cpu().numpy()
    ones = np.ones(ei.shape[1], dtype=np.float32)
    adjacency = sp.coo_matrix((ones, (ei[1], ei[0])), shape=(n, n)).tocsr()
    symmetric = (adjacency + adjacency.T).tocsr()
    perm = reverse_cuthill_mckee(symmetric, symmetric_mode=True)
    return torch.from_numpy(np.ascontiguousarray(perm, dtype=np.int64)).to(graph.device)
