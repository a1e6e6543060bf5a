"""Sequence attention patterns as graphs.

Token ``i`` of the query sequence attends to token ``j`` of the key sequence
when the graph has the edge ``j -> i``. Each builder returns a :class:`Graph`
whose edges are already sorted by query (no sort needed) and that records its
:class:`~graphattn.graph.Pattern` (a :class:`PatternKind` and the builder's arguments),
so the dispatcher can route known shapes (complete, causal, band, cross) to dense kernels.

Batches of variable-length sequences become one block-diagonal graph
(:func:`batch`): packed, with no padding tokens as nodes. :func:`pack` and
:func:`unpack` convert between padded ``(B, L, D)`` tensors (plus a
``key_padding_mask``) and packed ``(sum L, D)`` node tensors.

Graph-level patterns take a PyG ``batch`` vector (node -> graph, sorted) instead:
:func:`complete_per_graph` (every node attends to every node of its own graph,
no padding: a graph transformer's global attention), :func:`expander_per_graph`
(random regular edges inside each graph, Exphormer) and :func:`virtual_nodes`
(one or more global nodes per graph, Graphormer's graph token / Exphormer's
virtual nodes), which :func:`sparse_global` unites with the local edges.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._csr import check_count as _check_count
from .graph import Graph, Pattern, PatternKind

__all__ = [
    "PatternKind",
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
    "graph_sizes",
    "complete_per_graph",
    "expander_per_graph",
    "virtual_nodes",
    "sparse_global",
]


def _check_len(name: str, L) -> int:
    """One count (a length, window or size): the graphs' count rule, an int, numpy integer or
    one-element integer tensor, never a float or bool truncated."""
    return _check_count(name, L)


def _check_lengths(name: str, lengths, total: Optional[int] = None, total_of: str = "") -> List[int]:
    """``lengths`` (a list/tuple of counts or a 1-D integer tensor/array) as a list of
    ints, each by :func:`_check_len`: the one rule for every pattern function taking
    sequence lengths. With ``total``, their sum must be it (``total_of``, e.g.
    ``"packed has {} rows"``, says what holds that many)."""
    if not isinstance(lengths, Tensor) and hasattr(lengths, "__array__") and not isinstance(lengths, (list, tuple)):
        lengths = torch.as_tensor(lengths)  # a numpy array
    if isinstance(lengths, Tensor):
        if lengths.dim() != 1 or lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
            raise TypeError(
                f"{name} must be a list of ints or a 1-D integer tensor, got a {lengths.dtype} tensor "
                f"of shape {tuple(lengths.shape)}"
            )
        lengths = lengths.tolist()
    elif not isinstance(lengths, (list, tuple, range)):
        raise TypeError(f"{name} must be a list of ints or a 1-D integer tensor, got {type(lengths).__name__}")
    out = [_check_len(f"{name}[{i}]", n) for i, n in enumerate(lengths)]
    if total is not None and sum(out) != total:
        raise ValueError(f"{name} sum to {sum(out)} but {total_of.format(total)}")
    return out


def check_block(graph, Lq: int, Lk: int, what: str = "pattern") -> Graph:
    """``graph`` checked as the pattern of one block of ``Lq`` queries over ``Lk`` keys:
    a valid :class:`Graph` with exactly those node counts. A user's pattern callable is
    checked here before its edges are offset into a batch, where an index past its
    block would silently read another sequence's keys."""
    if not isinstance(graph, Graph):
        raise TypeError(f"{what} must return a graphattn.Graph, got {type(graph).__name__}")
    if (graph.num_dst, graph.num_src) != (Lq, Lk):
        raise ValueError(
            f"{what} gave a graph over ({graph.num_dst} queries, {graph.num_src} keys) for a block of "
            f"({Lq} queries, {Lk} keys)"
        )
    return graph.ensure_valid()


def _from_mask_rows(query: Tensor, key: Tensor, Lq: int, Lk: int, pattern: Pattern, device=None) -> Graph:
    """Edges key[e] -> query[e]; ``query`` must be non-decreasing."""
    q = query.to(device=device, dtype=torch.long)
    k = key.to(device=device, dtype=torch.long)
    return Graph.from_trusted_edges(k, q, Lk, Lq, pattern=pattern)


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
    kind = PatternKind.COMPLETE if Lk == Lq else PatternKind.CROSS
    return _from_mask_rows(q, k, Lq, Lk, Pattern(kind), device)


def cross(Lq: int, Lk: int, *, device=None) -> Graph:
    """Complete bipartite graph: ``Lq`` queries attend to all ``Lk`` keys of another sequence."""
    g = complete(Lq, Lk, device=device)
    g.pattern = Pattern(PatternKind.CROSS)
    return g


def causal(L: int, *, device=None) -> Graph:
    """Token ``i`` attends to tokens ``0..i`` (lower-triangular)."""
    L = _check_len("L", L)
    return _band(L, L - 1 if L else 0, 0, Pattern(PatternKind.CAUSAL), device)


def sliding_window(L: int, left: int, right: int = 0, *, device=None) -> Graph:
    """Token ``i`` attends to tokens ``i-left .. i+right`` (a band, clipped at the ends).
    ``right=0`` is causal sliding-window attention (Longformer / Mistral style)."""
    L = _check_len("L", L)
    left, right = _check_len("left", left), _check_len("right", right)
    return _band(L, left, right, Pattern(PatternKind.BAND, (("left", left), ("right", right))), device)


def _band(L: int, left: int, right: int, pattern: Pattern, device=None) -> Graph:
    """Edges ``j -> i`` for ``i-left <= j <= i+right`` (checked counts), recorded as ``pattern``:
    the edges of both :func:`sliding_window` and :func:`causal` (the band ``left=L-1, right=0``)."""
    return _offset_pattern(L, torch.arange(-left, right + 1), pattern, device)


def dilated(L: int, window: int, dilation: int, *, causal_only: bool = False, device=None) -> Graph:
    """Token ``i`` attends to ``i + k * dilation`` for ``|k| <= window`` (``k <= 0`` when
    ``causal_only``): a wider receptive field at the same number of edges."""
    L = _check_len("L", L)
    window = _check_len("window", window)
    dilation = _check_count("dilation", dilation, minimum=1)
    ks = torch.arange(-window, 1 if causal_only else window + 1)
    pattern = Pattern(PatternKind.DILATED, (("window", window), ("dilation", dilation)))
    return _offset_pattern(L, ks * dilation, pattern, device)


def _global_ids(L: int, global_tokens: Union[int, Sequence[int], Tensor]) -> Tensor:
    if isinstance(global_tokens, (list, tuple, range)) or (
        isinstance(global_tokens, Tensor) and global_tokens.dim() == 1
    ):
        ids = torch.tensor(_check_lengths("global_tokens", global_tokens), dtype=torch.long).unique()
    else:
        ids = torch.arange(min(_check_len("global_tokens", global_tokens), L))
    if ids.numel() and int(ids.max()) >= L:
        raise ValueError(f"global token ids must be in [0, {L}), got {ids.tolist()}")
    return ids


def global_local(L: int, window: int, global_tokens: Union[int, Sequence[int], Tensor] = 1, *, device=None) -> Graph:
    """Sliding window of ``window`` tokens on each side, plus global tokens that
    attend to everything and are attended to by everything (Longformer).
    ``global_tokens`` is a count (the first tokens) or a list of positions."""
    band = sliding_window(L, window, window, device=device)
    ids = _global_ids(L, global_tokens).to(band.device)
    allq = torch.arange(L, device=band.device)
    extra_k = torch.cat([ids.repeat(L), allq.repeat(ids.numel())])  # global keys for all; all keys for globals
    extra_q = torch.cat([allq.repeat_interleave(ids.numel()), ids.repeat_interleave(L)])
    g = union(band, Graph.from_trusted_edges(extra_k, extra_q, L, L))
    g.pattern = Pattern(PatternKind.GLOBAL_LOCAL, (("window", window), ("global", tuple(ids.tolist()))))
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
    pattern = Pattern(PatternKind.RANDOM, (("per_query", per_query), ("seed", seed)))
    return _from_mask_rows(q, keys.reshape(-1), L, Lk, pattern, device)


def bigbird(
    L: int,
    window: int,
    global_tokens: Union[int, Sequence[int]] = 2,
    random_per_query: int = 3,
    seed: int = 0,
    *,
    device=None,
) -> Graph:
    """BigBird's union of a sliding window, global tokens and random keys."""
    g = union(global_local(L, window, global_tokens, device=device), random(L, random_per_query, seed, device=device))
    g.pattern = Pattern(PatternKind.BIGBIRD, (("window", window), ("random", random_per_query), ("seed", seed)))
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
    kinds = tuple(_kind_of(g) for g in graphs)
    return Graph.from_trusted_edges(k, q, ns, nd, pattern=Pattern(PatternKind.UNION, (("of", kinds),)))


def _kind_of(graph: Graph) -> PatternKind:
    """The kind ``graph`` records, ``GRAPH`` when it records none."""
    return graph.pattern.kind if graph.pattern is not None else PatternKind.GRAPH


def batch(
    lengths: Sequence[int],
    pattern: Callable[..., Graph] = complete,
    key_lengths: Optional[Sequence[int]] = None,
    **kwargs,
) -> Graph:
    """One block-diagonal graph for a batch of sequences of the given lengths.

    ``pattern(L, **kwargs)`` (or ``pattern(Lq, Lk, **kwargs)`` when ``key_lengths``
    is given, for cross-attention) builds each block; node ``b``'s tokens are
    numbered after those of sequences ``0..b-1`` (the packed layout of :func:`pack`).
    The graph's pattern records the block kind and the lengths.
    """
    lengths = _check_lengths("lengths", lengths)
    klens = lengths if key_lengths is None else _check_lengths("key_lengths", key_lengths)
    if len(klens) != len(lengths):
        raise ValueError(f"{len(lengths)} query lengths but {len(klens)} key lengths")
    rows, cols, kind, block_params = [], [], None, ()
    q_off = k_off = 0
    for Lq, Lk in zip(lengths, klens):
        g = pattern(Lq, **kwargs) if key_lengths is None else pattern(Lq, Lk, **kwargs)
        check_block(g, Lq, Lk, f"pattern for the block of length {Lq}")
        kind = _kind_of(g)
        block_params = g.pattern.params if g.pattern is not None else ()
        rows.append(g.row + q_off)
        cols.append(g.col + k_off)
        q_off += Lq
        k_off += Lk
    row = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
    col = torch.cat(cols) if cols else torch.empty(0, dtype=torch.long)
    params = tuple(block_params) + ((("key_lengths", tuple(klens)),) if key_lengths is not None else ())
    return Graph.from_trusted_edges(
        col, row, k_off, q_off, pattern=Pattern(kind or PatternKind.COMPLETE, params, tuple(lengths))
    )


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


def pack(
    x: Tensor, lengths: Optional[Union[Tensor, Sequence[int]]] = None, key_padding_mask: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """``(B, L, ...)`` padded -> ``(sum(lengths), ...)`` packed, with the lengths."""
    if x.dim() < 2:
        raise ValueError(f"x must be a padded (B, L, ...) tensor, got shape {tuple(x.shape)}")
    B, L = x.shape[:2]
    if lengths is None:
        if key_padding_mask is None:
            lengths = [L] * B
        else:
            if tuple(key_padding_mask.shape) != (B, L):
                raise ValueError(
                    f"key_padding_mask has shape {tuple(key_padding_mask.shape)} but x's batch is {(B, L)}"
                )
            lengths = lengths_from_padding_mask(key_padding_mask)
    lengths = _check_lengths("lengths", lengths)
    if len(lengths) != B:
        raise ValueError(f"lengths has {len(lengths)} sequences but x has a batch of {B}")
    if lengths and max(lengths) > L:
        raise ValueError(f"lengths has a sequence of {max(lengths)} tokens but x's sequences hold {L}")
    lengths = torch.tensor(lengths, dtype=torch.long, device=x.device)
    mask = torch.arange(L, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    return x[mask], lengths


def unpack(
    packed: Tensor, lengths: Union[Tensor, Sequence[int]], max_len: Optional[int] = None, padding_value: float = 0.0
) -> Tensor:
    """``(sum(lengths), ...)`` packed -> ``(B, max_len, ...)`` padded."""
    if packed.dim() < 1:
        raise ValueError("packed must be a (sum(lengths), ...) tensor, got a scalar")
    lengths = _check_lengths("lengths", lengths, total=packed.size(0), total_of="packed has {} rows")
    longest = max(lengths, default=0)
    L = longest if max_len is None else _check_len("max_len", max_len)
    if L < longest:
        raise ValueError(f"max_len={L} is shorter than the longest sequence in lengths ({longest})")
    lengths = torch.tensor(lengths, dtype=torch.long, device=packed.device)
    out = packed.new_full((lengths.numel(), L) + tuple(packed.shape[1:]), padding_value)
    mask = torch.arange(L, device=packed.device).unsqueeze(0) < lengths.unsqueeze(1)
    out[mask] = packed
    return out


# ------------------------------------------------------------ graph-level patterns
def graph_sizes(batch: Optional[Tensor], num_nodes: int) -> Tensor:
    """Nodes per graph from PyG's ``batch`` vector (``None``: one graph of
    ``num_nodes``). ``batch`` must be sorted (PyG's ``Batch`` always is): the
    patterns below number each graph's nodes contiguously."""
    num_nodes = _check_len("num_nodes", num_nodes)
    if batch is None:
        return torch.tensor([num_nodes], dtype=torch.long)
    if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"batch must be a 1-D int64 tensor (node -> graph), got "
            f"{getattr(batch, 'dtype', type(batch).__name__)} "
            f"of shape {tuple(getattr(batch, 'shape', ()))}"
        )
    if batch.numel() != num_nodes:
        raise ValueError(f"batch has {batch.numel()} entries for {num_nodes} nodes")
    if num_nodes == 0:
        return torch.zeros(0, dtype=torch.long)
    b = batch.long().cpu()
    if int(b.min()) < 0:
        raise ValueError(f"batch holds a negative graph id ({int(b.min())})")
    if bool((b[1:] < b[:-1]).any()):
        raise ValueError("batch must be sorted (each graph's nodes contiguous), as PyG's Batch makes it")
    return torch.bincount(b)


def complete_per_graph(batch: Optional[Tensor], num_nodes: int, *, max_edges: int = 2**31 - 1) -> Graph:
    """Block-diagonal complete graph: node ``i`` attends to every node of its own
    graph (itself included) and to none of the others, with no padding.

    ``sum(n_g^2)`` edges, built vectorised (no loop over graphs) and only when a
    kernel needs them: the pattern records ``complete`` with the graph sizes, and
    the dense backend runs such a graph as one SDPA call per distinct graph size
    from the sizes alone (the sparse kernels take it when weights are asked for,
    or when sizes are too many to group).
    More than ``max_edges`` edges is refused with a pointer to
    :func:`sparse_global` (a 100k-node graph would need 10^10 edges).
    """
    sizes = graph_sizes(batch, num_nodes)
    device = batch.device if isinstance(batch, Tensor) else None
    num_edges = int((sizes * sizes).sum())
    if num_edges > max_edges:
        raise ValueError(
            f"complete attention over these graphs needs {num_edges:,} edges (largest graph "
            f"{int(sizes.max()):,} nodes), more than max_edges={max_edges:,}; use "
            f"patterns.sparse_global (expander edges + virtual nodes) for graphs this large"
        )
    lengths = tuple(int(n) for n in sizes.tolist())

    def build() -> Tuple[Tensor, Tensor]:
        n = sizes.to(device)
        first_node = (n.cumsum(0) - n).repeat_interleave(n)  # each node's graph's first node
        degree = n.repeat_interleave(n)  # every node receives from its whole graph
        rowptr = torch.cat([degree.new_zeros(1), degree.cumsum(0)])
        # Row i holds first_node[i], first_node[i] + 1, ...: a running count minus where the row starts.
        col = torch.arange(num_edges, device=device) + torch.repeat_interleave(
            first_node - rowptr[:-1], degree, output_size=num_edges
        )
        return rowptr, col

    return Graph.from_csr_builder(
        num_nodes, num_edges, build, device=device, pattern=Pattern(PatternKind.COMPLETE, (), lengths)
    )


def _within_graph_permutation(sizes: Tensor, gen: torch.Generator) -> Tensor:
    """A random permutation of the nodes that keeps each node inside its graph."""
    graph_of_node = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    keys = graph_of_node.double() + torch.rand(graph_of_node.numel(), generator=gen, dtype=torch.float64) * 0.5
    return keys.argsort()


def expander_per_graph(batch: Optional[Tensor], num_nodes: int, degree: int = 4, seed: int = 0) -> Graph:
    """Random expander edges inside each graph (Exphormer): ``degree // 2`` random
    permutations of each graph's nodes, each used in both directions, so every node
    receives about ``degree`` edges (repeats and self-pairs removed). Deterministic
    for a given ``seed``."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 2 or degree % 2:
        raise ValueError(f"degree must be an even integer >= 2, got {degree!r}")
    sizes = graph_sizes(batch, num_nodes)
    device = batch.device if isinstance(batch, Tensor) else None
    gen = torch.Generator().manual_seed(seed)
    nodes = torch.arange(num_nodes)
    src, dst = [], []
    for _ in range(degree // 2):
        perm = _within_graph_permutation(sizes, gen)
        src += [nodes, perm]
        dst += [perm, nodes]
    src, dst = torch.cat(src), torch.cat(dst)
    keep = src != dst
    pattern = Pattern(PatternKind.EXPANDER, (("degree", degree), ("seed", seed)), tuple(sizes.tolist()))
    return _unique_edges(src[keep], dst[keep], num_nodes, pattern, device)


def _unique_edges(src: Tensor, dst: Tensor, num_nodes: int, pattern: Pattern, device) -> Graph:
    key = (dst.long() * max(num_nodes, 1) + src.long()).unique()  # sorted by destination, then source
    dst, src = key // max(num_nodes, 1), key % max(num_nodes, 1)
    return Graph.from_trusted_edges(src.to(device), dst.to(device), num_nodes, num_nodes, pattern=pattern)


def virtual_nodes(batch: Optional[Tensor], num_nodes: int, per_graph: int = 1) -> Graph:
    """Global nodes: ``per_graph`` virtual nodes for each graph, numbered after the
    ``num_nodes`` real ones (graph ``g``'s are ``num_nodes + g * per_graph + v``).
    Each virtual node receives from and sends to every real node of its graph, and
    the virtual nodes of a graph see each other (themselves included). The caller
    appends their features to ``x`` (e.g. a learned embedding per virtual node)."""
    per_graph = _check_len("per_graph", per_graph)
    sizes = graph_sizes(batch, num_nodes)
    device = batch.device if isinstance(batch, Tensor) else None
    num_graphs, total = sizes.numel(), num_nodes + sizes.numel() * per_graph
    graph_of_node = torch.repeat_interleave(torch.arange(num_graphs), sizes)
    real = torch.arange(num_nodes).repeat_interleave(per_graph)
    virtual = (
        num_nodes + graph_of_node.repeat_interleave(per_graph) * per_graph + torch.arange(per_graph).repeat(num_nodes)
    )
    vv = num_nodes + torch.arange(num_graphs * per_graph)
    v_src = vv.view(num_graphs, per_graph, 1).expand(-1, -1, per_graph).reshape(-1)
    v_dst = vv.view(num_graphs, 1, per_graph).expand(-1, per_graph, -1).reshape(-1)
    src = torch.cat([real, virtual, v_src])
    dst = torch.cat([virtual, real, v_dst])
    pattern = Pattern(PatternKind.VIRTUAL, (("per_graph", per_graph),), tuple(sizes.tolist()))
    return _unique_edges(src, dst, total, pattern, device)


def sparse_global(
    batch: Optional[Tensor],
    num_nodes: int,
    edge_index: Optional[Tensor] = None,
    *,
    degree: int = 4,
    virtual_per_graph: int = 1,
    seed: int = 0,
) -> Graph:
    """Exphormer's sparse global pattern over ``num_nodes + num_graphs *
    virtual_per_graph`` nodes: the local ``edge_index`` (if given), expander edges
    of ``degree`` inside each graph and ``virtual_per_graph`` virtual nodes per
    graph. ``O(N * (degree + virtual_per_graph) + E)`` edges, so it runs on graphs
    far too large for :func:`complete_per_graph`."""
    sizes = graph_sizes(batch, num_nodes)
    total = num_nodes + sizes.numel() * virtual_per_graph
    parts = [virtual_nodes(batch, num_nodes, virtual_per_graph)]
    if degree:
        parts.append(expander_per_graph(batch, num_nodes, degree, seed))
    if edge_index is not None:
        parts.append(Graph.from_edge_index(edge_index, num_nodes))
    src = torch.cat([g.col.cpu() for g in parts])
    dst = torch.cat([g.row.cpu() for g in parts])
    device = batch.device if isinstance(batch, Tensor) else (edge_index.device if edge_index is not None else None)
    params = (
        ("degree", degree),
        ("virtual_per_graph", virtual_per_graph),
        ("seed", seed),
        ("local", edge_index is not None),
    )
    return _unique_edges(src, dst, total, Pattern(PatternKind.SPARSE_GLOBAL, params, tuple(sizes.tolist())), device)
