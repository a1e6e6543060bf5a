"""Neighbour sampling in plain PyTorch, for mini-batch training without pyg-lib.

PyG's ``NeighborLoader`` needs ``pyg-lib`` or ``torch-sparse`` (compiled
extensions). :class:`NeighborSampler` draws the same kind of batch with tensor
operations only: for each batch of seed nodes, up to ``k`` in-neighbours per node
per hop (``num_neighbors = [k1, k2, ...]``), the sampled edges relabelled to local
ids, seeds first. It is slower than pyg-lib on large graphs; use it when the
compiled samplers are unavailable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import torch
from torch import Tensor

from ..graph import Graph

__all__ = ["NeighborSampler", "SampledBatch", "neighbor_loader_available"]


def neighbor_loader_available() -> bool:
    """Whether PyG's ``NeighborLoader`` can sample here (pyg-lib or torch-sparse installed)."""
    import torch_geometric.typing as t

    return bool(getattr(t, "WITH_PYG_LIB", False) or getattr(t, "WITH_TORCH_SPARSE", False))


@dataclass
class SampledBatch:
    """``n_id``: global ids of the sampled nodes (the ``batch_size`` seeds first);
    ``edge_index``: sampled edges ``[2, E]`` in local ids (row 0 = source, a sampled
    in-neighbour of row 1)."""

    n_id: Tensor
    edge_index: Tensor
    batch_size: int


class NeighborSampler:
    """Iterate over mini-batches of ``input_nodes`` with sampled ``num_neighbors``-hop
    neighbourhoods (the in-neighbours along ``edge_index``, row 0 = source).

    A node with at most ``k`` in-neighbours keeps all of them; otherwise ``k`` are
    drawn uniformly without replacement. ``-1`` keeps every neighbour at that hop.
    ``generator`` makes the batches reproducible.
    """

    def __init__(
        self,
        edge_index: Tensor,
        num_nodes: int,
        num_neighbors: Sequence[int],
        input_nodes: Optional[Tensor] = None,
        batch_size: int = 1024,
        shuffle: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if not num_neighbors or any(k == 0 or k < -1 for k in num_neighbors):
            raise ValueError(f"num_neighbors must be a non-empty list of positive counts or -1, got {num_neighbors}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # the CSR by destination is the Graph's (one validation, one sort): sources
        # grouped by destination, in the caller's order within each group
        graph = Graph.from_edge_index(edge_index.cpu(), num_nodes)
        self.col, self.rowptr = graph.col, graph.rowptr
        self.num_nodes = num_nodes
        self.num_neighbors = list(num_neighbors)
        self.input_nodes = torch.arange(num_nodes) if input_nodes is None else input_nodes.cpu().view(-1)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self._local = torch.full((num_nodes,), -1, dtype=torch.long)

    def __len__(self) -> int:
        return (self.input_nodes.numel() + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[SampledBatch]:
        nodes = self.input_nodes
        if self.shuffle:
            nodes = nodes[torch.randperm(nodes.numel(), generator=self.generator)]
        for start in range(0, nodes.numel(), self.batch_size):
            yield self.sample(nodes[start : start + self.batch_size])

    def _hop(self, frontier: Tensor, k: int) -> Tensor:
        """Edge positions (into ``col``) of up to ``k`` sampled in-neighbours of each frontier node."""
        start, deg = self.rowptr[frontier], self.rowptr[frontier + 1] - self.rowptr[frontier]
        keep_all = deg <= k if k >= 0 else torch.ones_like(deg, dtype=torch.bool)
        s, d = start[keep_all], deg[keep_all]
        owner = torch.repeat_interleave(torch.arange(s.numel()), d)
        first = torch.cumsum(d, 0) - d
        all_pos = s[owner] + (torch.arange(owner.numel()) - first[owner])
        if keep_all.all():
            return all_pos
        s, d = start[~keep_all], deg[~keep_all]
        # k distinct picks per node: the k smallest of one uniform key per neighbour.
        owner = torch.repeat_interleave(torch.arange(s.numel()), d)
        first = torch.cumsum(d, 0) - d
        keys = torch.rand(owner.numel(), generator=self.generator, dtype=torch.float64)
        order = torch.argsort(owner.double() + keys)  # owner-major, random within each owner
        rank = torch.arange(owner.numel()) - first[owner[order]]
        picked = order[rank < k]
        pos = s[owner[picked]] + (picked - first[owner[picked]])
        return torch.cat([all_pos, pos])

    def sample(self, seeds: Tensor) -> SampledBatch:
        local = self._local
        n_id: List[Tensor] = [seeds]
        local[seeds] = torch.arange(seeds.numel())
        count = seeds.numel()
        frontier = seeds
        src_parts, dst_parts = [], []
        try:
            for k in self.num_neighbors:
                pos = self._hop(frontier, k)
                if pos.numel() == 0:
                    break
                src = self.col[pos]
                dst = torch.searchsorted(self.rowptr, pos, right=True) - 1
                new = torch.unique(src[local[src] < 0])
                local[new] = torch.arange(count, count + new.numel())
                count += new.numel()
                n_id.append(new)
                src_parts.append(local[src])
                dst_parts.append(local[dst])
                frontier = new
                if new.numel() == 0:
                    break
            ids = torch.cat(n_id)
        finally:
            local[torch.cat(n_id)] = -1
        if src_parts:
            edge_index = torch.stack([torch.cat(src_parts), torch.cat(dst_parts)])
        else:
            edge_index = torch.empty(2, 0, dtype=torch.long)
        return SampledBatch(ids, edge_index, seeds.numel())
