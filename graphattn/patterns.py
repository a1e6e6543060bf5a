"""Sequence attention patterns as graphs.

Token ``i`` of the query sequence attends to token ``j`` of the key sequence
when the graph has the edge ``j -> i``. Each builder returns a :class:`Graph`
whose edges are already sorted by query (no sort needed) and that records its
:class:`~graphattn.graph.Pattern`, so the dispatcher can route known shapes
(complete, causal) to dense kernels.

Batches of variable-length sequences become one block-diagonal graph
(:func:`batch`): packed, with no padding tokens as nodes. :func:`pack` and
:func:`unpack` convert between padded ``(B, L, D)`` tensors (plus a
``key_padding_mask``) and packed ``(sum L, D)`` node tensors.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .graph import Graph, Pattern

__all__ = [
    "complete",
    "causal",
    "sliding_window",
    "dilated",
    "global_local",
    "random",
    "bigbird",
    "cross",
    "union",
    "batch",
    "pack",
    "unpack",
    "lengths_from_padding_mask",
    "check_block",
]


def _check_len(name: str, L: int) -> int:
    if isinstance(L, bool) or not isinstance(L, int) or L < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {L!r}")
    return L


def check_block(graph, Lq: int, Lk: int, what: str = "pattern") -> Graph:
    """``graph`` checked as the pattern of one block of ``Lq`` queries over ``Lk`` keys:
    a valid :class:`Graph` with exactly those node counts. A user's pattern callable is
    checked here before its edges are offset into a batch, where an index past its
    block would silently read another sequence's keys."""
    if not isinstance(graph, Graph):
        raise TypeError(f"{what} must return a graphattn.Graph, got {type(graph).__name__}")
    if (graph.num_dst, graph.num_src) != (Lq, Lk):
        raise ValueError(f"{what} gave a graph over ({graph.num_dst} queries, {graph.num_src} keys) for a block of "
                         f"({Lq} queries, {Lk} keys)")
    return graph.ensure_valid()


def _from_mask_rows(query: Tensor, key: Tensor, Lq: int, Lk: int, pattern: Pattern, device=None) -> Graph:
    """Edges key[e] -> query[e]; ``query`` must be non-decreasing."""
    q = query.to(device=device, dtype=torch.long)
    k = key.to(device=device, dtype=torch.long)
    return Graph._build(k, q, Lk, Lq, pattern=pattern)


def _offset_pattern(L: int, offsets: Tensor, pattern: Pattern, device=None) -> Graph:
    """Edges ``(i + off) -> i`` for every offset that stays inside ``[0, L)``."""
    i = torch.arange(L, device=device).unsqueeze(1)
    j = i + offsets.to(device).unsqueeze(0)
    keep = (j >= 0) & (j < L)
    q = i.expand_as(j)[keep]
    return _from_mask_rows(q, j[keep], L, L, pattern, device)


def complete(Lq: int, Lk: Optional[int] = None, *, device=None) -> Graph:
    """Every query attends to every key (a transformer's full attention)."""
    Lq = _check_len("Lq", Lq)
    Lk = Lq if Lk is None else _check_len("Lk", Lk)
    q = torch.arange(Lq, device=device).repeat_interleave(Lk)
    k = torch.arange(Lk, device=device).repeat(Lq)
    kind = "complete" if Lk == Lq else "cross"
    return _from_mask_rows(q, k, Lq, Lk, Pattern(kind), device)


def cross(Lq: int, Lk: int, *, device=None) -> Graph:
    """Complete bipartite graph: ``Lq`` queries attend to all ``Lk`` keys of another sequence."""
    g = complete(Lq, Lk, device=device)
    g.pattern = Pattern("cross")
    return g


def causal(L: int, *, device=None) -> Graph:
    """Token ``i`` attends to tokens ``0..i`` (lower-triangular)."""
    L = _check_len("L", L)
    return sliding_window(L, L - 1 if L else 0, 0, device=device, _kind="causal")


def sliding_window(L: int, left: int, right: int = 0, *, device=None, _kind: str = "band") -> Graph:
    """Token ``i`` attends to tokens ``i-left .. i+right`` (a band, clipped at the ends).
    ``right=0`` is causal sliding-window attention (Longformer / Mistral style)."""
    L = _check_len("L", L)
    left, right = _check_len("left", left), _check_len("right", right)
    offsets = torch.arange(-left, right + 1)
    params = () if _kind == "causal" else (("left", left), ("right", right))
    return _offset_pattern(L, offsets, Pattern(_kind, params), device)


def dilated(L: int, window: int, dilation: int, *, causal_only: bool = False, device=None) -> Graph:
    """Token ``i`` attends to ``i + k * dilation`` for ``|k| <= window`` (``k <= 0`` when
    ``causal_only``): a wider receptive field at the same number of edges."""
    L = _check_len("L", L)
    window = _check_len("window", window)
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")
    ks = torch.arange(-window, 1 if causal_only else window + 1)
    return _offset_pattern(L, ks * dilation, Pattern("dilated", (("window", window), ("dilation", dilation))), device)


def _global_ids(L: int, global_tokens: Union[int, Sequence[int], Tensor]) -> Tensor:
    if isinstance(global_tokens, int):
        ids = torch.arange(min(global_tokens, L))
    else:
        ids = torch.as_tensor(list(global_tokens) if not isinstance(global_tokens, Tensor) else global_tokens)
        ids = ids.long().unique()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= L):
        raise ValueError(f"global token ids must be in [0, {L}), got {ids.tolist()}")
    return ids


def global_local(L: int, window: int, global_tokens: Union[int, Sequence[int], Tensor] = 1, *,
                 device=None) -> Graph:
    """Sliding window of ``window`` tokens on each side, plus global tokens that
    attend to everything and are attended to by everything (Longformer).
    ``global_tokens`` is a count (the first tokens) or a list of positions."""
    band = sliding_window(L, window, window, device=device)
    ids = _global_ids(L, global_tokens).to(band.device)
    allq = torch.arange(L, device=band.device)
    extra_k = torch.cat([ids.repeat(L), allq.repeat(ids.numel())])  # global keys for all; all keys for globals
    extra_q = torch.cat([allq.repeat_interleave(ids.numel()), ids.repeat_interleave(L)])
    g = union(band, Graph._build(extra_k, extra_q, L, L))
    g.pattern = Pattern("global_local", (("window", window), ("global", tuple(ids.tolist()))))
    return g


def random(L: int, per_query: int, seed: int = 0, *, Lk: Optional[int] = None, device=None) -> Graph:
    """Each query attends to ``per_query`` keys drawn uniformly without replacement
    (BigBird's random part), reproducible by ``seed``."""
    L = _check_len("L", L)
    Lk = L if Lk is None else _check_len("Lk", Lk)
    per_query = min(_check_len("per_query", per_query), Lk)
    gen = torch.Generator().manual_seed(seed)
    keys = torch.rand(L, Lk, generator=gen).argsort(dim=1)[:, :per_query].sort(dim=1).values
    q = torch.arange(L).repeat_interleave(per_query)
    g = _from_mask_rows(q, keys.reshape(-1), L, Lk, Pattern("random", (("per_query", per_query), ("seed", seed))),
                        device)
    return g


def bigbird(L: int, window: int, global_tokens: Union[int, Sequence[int]] = 2, random_per_query: int = 3,
            seed: int = 0, *, device=None) -> Graph:
    """BigBird's union of a sliding window, global tokens and random keys."""
    g = union(global_local(L, window, global_tokens, device=device),
              random(L, random_per_query, seed, device=device))
    g.pattern = Pattern("bigbird", (("window", window), ("random", random_per_query), ("seed", seed)))
    return g


def union(*graphs: Graph) -> Graph:
    """Edges present in any of the graphs (duplicates removed), sorted by query."""
    if not graphs:
        raise ValueError("union needs at least one graph")
    ns, nd = graphs[0].num_src, graphs[0].num_dst
    for g in graphs[1:]:
        if (g.num_src, g.num_dst) != (ns, nd):
            raise ValueError(f"cannot unite graphs of sizes {(ns, nd)} and {(g.num_src, g.num_dst)}")
    key = torch.cat([g.row * ns + g.col for g in graphs]).unique()  # sorted: by query, then key
    q, k = key // max(ns, 1), key % max(ns, 1)
    kinds = tuple(g.pattern.kind if g.pattern is not None else "graph" for g in graphs)
    return Graph._build(k, q, ns, nd, pattern=Pattern("union", (("of", kinds),)))


def batch(lengths: Sequence[int], pattern: Callable[..., Graph] = complete,
          key_lengths: Optional[Sequence[int]] = None, **kwargs) -> Graph:
    """One block-diagonal graph for a batch of sequences of the given lengths.

    ``pattern(L, **kwargs)`` (or ``pattern(Lq, Lk, **kwargs)`` when ``key_lengths``
    is given, for cross-attention) builds each block; node ``b``'s tokens are
    numbered after those of sequences ``0..b-1`` (the packed layout of :func:`pack`).
    The graph's pattern records the block kind and the lengths.
    """
    lengths = [_check_len("lengths[i]", int(x)) for x in lengths]
    klens = lengths if key_lengths is None else [_check_len("key_lengths[i]", int(x)) for x in key_lengths]
    if len(klens) != len(lengths):
        raise ValueError(f"{len(lengths)} query lengths but {len(klens)} key lengths")
    rows, cols, kind, block_params = [], [], None, ()
    q_off = k_off = 0
    for Lq, Lk in zip(lengths, klens):
        g = pattern(Lq, **kwargs) if key_lengths is None else pattern(Lq, Lk, **kwargs)
        check_block(g, Lq, Lk, f"pattern for the block of length {Lq}")
        kind = g.pattern.kind if g.pattern is not None else "graph"
        block_params = g.pattern.params if g.pattern is not None else ()
        rows.append(g.row + q_off)
        cols.append(g.col + k_off)
        q_off += Lq
        k_off += Lk
    row = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
    col = torch.cat(cols) if cols else torch.empty(0, dtype=torch.long)
    params = tuple(block_params) + ((("key_lengths", tuple(klens)),) if key_lengths is not None else ())
    return Graph._build(col, row, k_off, q_off, pattern=Pattern(kind or "complete", params, tuple(lengths)))


def lengths_from_padding_mask(key_padding_mask: Tensor) -> Tensor:
    """Lengths from a ``(B, L)`` boolean mask (True = padding), which must pad at the end."""
    if key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2:
        raise ValueError("key_padding_mask must be a boolean (B, L) tensor (True marks padding)")
    valid = ~key_padding_mask
    lengths = valid.sum(1)
    L = key_padding_mask.size(1)
    expected = torch.arange(L, device=valid.device).unsqueeze(0) < lengths.unsqueeze(1)
    if not torch.equal(expected, valid):
        raise ValueError("key_padding_mask must mark a suffix of each sequence as padding (right padding)")
    return lengths


def pack(x: Tensor, lengths: Optional[Union[Tensor, Sequence[int]]] = None,
         key_padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """``(B, L, ...)`` padded -> ``(sum(lengths), ...)`` packed, with the lengths."""
    if lengths is None:
        if key_padding_mask is None:
            lengths = torch.full((x.size(0),), x.size(1), dtype=torch.long)
        else:
            lengths = lengths_from_padding_mask(key_padding_mask)
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=x.device)
    if lengths.numel() != x.size(0) or (lengths.numel() and int(lengths.max()) > x.size(1)):
        raise ValueError(f"lengths {lengths.tolist()} do not fit a batch of shape {tuple(x.shape[:2])}")
    mask = torch.arange(x.size(1), device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    return x[mask], lengths


def unpack(packed: Tensor, lengths: Union[Tensor, Sequence[int]], max_len: Optional[int] = None,
           padding_value: float = 0.0) -> Tensor:
    """``(sum(lengths), ...)`` packed -> ``(B, max_len, ...)`` padded."""
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=packed.device)
    L = int(lengths.max()) if max_len is None and lengths.numel() else (max_len or 0)
    out = packed.new_full((lengths.numel(), L) + tuple(packed.shape[1:]), padding_value)
    mask = torch.arange(L, device=packed.device).unsqueeze(0) < lengths.unsqueeze(1)
    out[mask] = packed
    return out
