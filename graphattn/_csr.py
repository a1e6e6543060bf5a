"""Index arrays: the checks every count and index passes, and the destination sort.

The lowest layer under :class:`~graphattn.graph.Graph` and its builders
(:mod:`graphattn._graph_build`): plain functions of tensors and ints, with errors
that name the problem. It imports nothing of graphattn.
"""

from __future__ import annotations

import operator
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "check_index_tensor",
    "check_count",
    "check_range",
    "check_offsets",
    "dense",
    "offsets",
    "by_destination",
    "stamp_of",
]

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_index_tensor(edge_index: Any) -> Tensor:
    """``edge_index`` checked as an integer tensor of shape ``[2, num_edges]``."""
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor of shape [2, num_edges], got {type(edge_index).__name__}")
    if edge_index.is_floating_point() or edge_index.is_complex() or edge_index.dtype == torch.bool:
        raise TypeError(f"edge_index must have an integer dtype (torch.long or torch.int32), got {edge_index.dtype}")
    if edge_index.dtype not in _INDEX_DTYPES:
        raise TypeError(f"edge_index has unsupported integer dtype {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(
            f"edge_index must have shape [2, num_edges] (row 0 = source, row 1 = destination), "
            f"got shape {list(edge_index.shape)}"
        )
    return edge_index


def check_count(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as an ``int >= minimum``: the one rule for every count, size and length.
    An int, a numpy integer or a one-element integer tensor; a bool, a float (even an
    integral one) or a float tensor is refused, never truncated."""
    is_bool = (
        isinstance(value, bool)
        or type(value).__name__ == "bool_"
        or (isinstance(value, Tensor) and value.dtype == torch.bool)
    )
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


def check_range(idx: Tensor, bound: int, what: str, count_name: str, name: str = "edge_index") -> None:
    """Raise unless every entry of ``idx`` lies in ``[0, bound)``."""
    if idx.numel() == 0:
        return
    lo = int(idx.min())
    if lo < 0:
        raise ValueError(f"{name} has a negative {what} index ({lo}); indices must be >= 0")
    hi = int(idx.max())
    if hi >= bound:
        raise ValueError(
            f"{name} has {what} index {hi}, out of range for {bound} {count_name} (valid indices are 0..{bound - 1})"
        )


def check_offsets(ptr: Tensor, n: int, nnz: int, name: str) -> None:
    """``ptr`` as the ``n + 1`` compressed offsets of ``nnz`` entries: from 0 to ``nnz``, non-decreasing."""
    if ptr.numel() != n + 1:
        raise ValueError(f"{name} has {ptr.numel()} entries; {n} compressed rows need {n + 1}")
    if int(ptr[0]) != 0 or int(ptr[-1]) != nnz:
        raise ValueError(f"{name} must start at 0 and end at num_edges={nnz}, got {int(ptr[0])} .. {int(ptr[-1])}")
    if n and bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError(f"{name} must be non-decreasing (compressed offsets)")


def dense(t: Any) -> Any:
    """An index array as the kernels read it: contiguous (a strided view is copied once)."""
    return t.contiguous() if isinstance(t, Tensor) else t


def offsets(index: Tensor, n: int) -> Tensor:
    """CSR offsets ``[n + 1]`` of a sorted (or any) index: ``offsets[k+1] - offsets[k]``
    is the count of ``k``. Static output shape (unlike ``bincount``), so traceable."""
    counts = torch.zeros(n + 1, dtype=torch.long, device=index.device)
    counts.index_add_(0, index + 1, torch.ones_like(index))
    return counts.cumsum(0)


def by_destination(src: Tensor, dst: Tensor, num_dst: int) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """``(rowptr, col, row, perm)``: the edges ``src[e] -> dst[e]`` sorted by destination
    (stable), with ``perm`` the sort (``None`` when ``dst`` is already non-decreasing:
    no sort, and the CSR arrays are ``src`` and ``dst`` themselves)."""
    if dst.numel() > 1 and bool((dst[1:] < dst[:-1]).any()):
        row, perm = torch.sort(dst, stable=True)
        col = src[perm]
    else:
        row, perm, col = dst, None, src
    return offsets(row, num_dst), col, row, perm


def stamp_of(rowptr: Tensor, col: Tensor, row: Tensor, perm: Optional[Tensor]) -> Tuple[int, ...]:
    """Which index tensors a graph holds and their version counters (any in-place edit changes them)."""
    versions = tuple(getattr(t, "_version", -1) for t in (rowptr, col, row, perm))
    return versions + (id(rowptr), id(col), id(row))
