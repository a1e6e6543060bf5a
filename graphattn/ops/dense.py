"""Dense dispatch: graphs known to be complete, causal or complete-bipartite (one
sequence, or a batch of equal-length sequences) run through PyTorch's
``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU, a
fused kernel on CPU). A block-diagonal complete graph whose blocks differ in size
(global attention over a batch of graphs) runs as one SDPA call per distinct block
size, its blocks gathered without padding. A wide sliding window (``band``) runs in
tiles: each tile of ``BAND_TILE`` queries attends, through SDPA with a small mask, to
the run of keys its window can reach, so the work is dense GEMMs over about
``(BAND_TILE + left + right) / (left + right + 1)`` times the band's pairs. The result
equals the sparse path's; tests check it.

These routes compute the masked pairs too and drop them afterwards, so a NaN or inf
would reach queries that never attend to it (see :func:`exact_where_nonfinite`): a
call whose inputs, or a backward whose upstream gradient, hold one runs on the sparse
kernel instead, which propagates it as the reference does.
"""

from __future__ import annotations

import functools
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..graph import Graph, PatternKind
from ._dispatch import first_accepting
from ._dtypes import compute_dtype

DENSE_KINDS = (PatternKind.COMPLETE, PatternKind.CAUSAL, PatternKind.CROSS)


def blocks(graph: Graph, kinds: Tuple[PatternKind, ...] = DENSE_KINDS) -> Optional[Tuple[int, int, int]]:
    """``(batch, Lq, Lk)`` when the graph is a batch of identical blocks of one of
    ``kinds``, else None."""
    pat = graph.pattern
    if pat is None or pat.kind not in kinds:
        return None
    if pat.batch is None:
        return 1, graph.num_dst, graph.num_src
    qs = set(pat.batch)
    ks = set(pat.get("key_lengths", pat.batch))
    if len(qs) != 1 or len(ks) != 1:
        return None
    B = len(pat.batch)
    Lq, Lk = next(iter(qs)), next(iter(ks))
    if pat.kind in (PatternKind.CAUSAL, PatternKind.BAND) and Lq != Lk:
        return None
    if not _counts_agree(graph, pat, B, Lq, Lk):
        return None
    return B, Lq, Lk


# Grouped SDPA pays one call per distinct block size; it wins where blocks are
# large (measured on CPU: 60 x 20 + 4 x 2,000 nodes, 4.5x faster than the sparse
# kernel) and loses to the sparse kernel on batches of small molecules (10-40
# nodes: 1.6x slower). A graph goes to it when its pairs sit in blocks of at least
# MIN_GROUPED_BLOCK nodes on average (sum n^3 / sum n^2) and it has at most
# MAX_GROUPS distinct sizes.
MAX_GROUPS = 64
MIN_GROUPED_BLOCK = 64


def _grouping_refusal(sizes: Tensor) -> Optional[str]:
    distinct = int(sizes.unique().numel())
    if distinct > MAX_GROUPS:
        return f"complete blocks of {distinct} distinct sizes (grouped SDPA takes at most {MAX_GROUPS})"
    pairs = float((sizes.double() ** 2).sum())
    typical = float((sizes.double() ** 3).sum()) / pairs if pairs else 0.0
    if typical < MIN_GROUPED_BLOCK:
        return (
            f"complete blocks of {typical:.0f} nodes on average per pair, below {MIN_GROUPED_BLOCK}: "
            f"the sparse kernel is faster there"
        )
    return None


def size_groups(graph: Graph) -> Optional[List[Tuple[int, Tensor]]]:
    """``[(L, first_nodes)]`` when the graph is a block-diagonal complete graph of
    square blocks (its node and edge counts bear the recorded sizes out) that grouped
    SDPA should take: for each distinct block size ``L``, the first node of every
    block of that size."""
    pat = graph.pattern
    if pat is None or pat.kind != PatternKind.COMPLETE or pat.batch is None or pat.get("key_lengths") is not None:
        return None
    sizes = torch.tensor(pat.batch, dtype=torch.long)
    if (
        graph.num_dst != graph.num_src
        or graph.num_dst != int(sizes.sum())
        or graph.num_edges != int((sizes * sizes).sum())
    ):
        return None
    if _grouping_refusal(sizes) is not None:
        return None
    first = sizes.cumsum(0) - sizes
    return [(int(L), first[sizes == L]) for L in sizes.unique() if L > 0]


def _band_edges(L: int, left: int, right: int) -> int:
    """Edges of a band of ``left``/``right`` neighbours clipped to ``L`` tokens."""
    a, b = min(left, max(L - 1, 0)), min(right, max(L - 1, 0))
    return L * (a + b + 1) - a * (a + 1) // 2 - b * (b + 1) // 2 if L else 0


def _counts_agree(graph: Graph, pat, B: int, Lq: int, Lk: int) -> bool:
    """A recorded pattern is a claim; the node and edge counts must bear it out before
    a dense kernel replaces the edges (a mislabelled graph takes the sparse path)."""
    if pat.kind in (PatternKind.COMPLETE, PatternKind.CROSS):
        per_block = Lq * Lk
    elif pat.kind == PatternKind.CAUSAL:
        per_block = _band_edges(Lq, Lq, 0)
    elif pat.kind == PatternKind.BAND:
        per_block = _band_edges(Lq, int(pat.get("left", 0)), int(pat.get("right", 0)))
    else:
        return False
    return graph.num_dst == B * Lq and graph.num_src == B * Lk and graph.num_edges == B * per_block


# Band tiles: BAND_TILE queries per tile (64 was fastest of 64-512 on CPU for a ±128
# window: 8k tokens 64 ms against 166 ms on the sparse kernel and 130 ms for compiled
# flex_attention); windows narrower than MIN_BAND_KEYS keys stay on the sparse kernel,
# where a tile would mostly compute masked pairs. Tiles run in groups whose gathered
# keys and values stay under BAND_GROUP_ELEMENTS elements each.
BAND_TILE = 64
MIN_BAND_KEYS = 64
BAND_GROUP_ELEMENTS = 1 << 21


def _band_refusal(graph: Graph, L: int, left: int, right: int) -> Optional[str]:
    """Why a batch of sliding windows of ``L`` tokens does not take the tiled path (None: it does)."""
    if graph.device.type != "cpu":  # the tiles have not been measured against flex there
        return "a sliding window off CPU: the flex backend takes bands there"
    if left < 0 or right < 0 or min(left, L - 1) + min(right, L - 1) + 1 < MIN_BAND_KEYS:
        return f"a sliding window of fewer than {MIN_BAND_KEYS} keys per query: the sparse kernel is faster there"
    return None


def _band_shape(graph: Graph) -> Optional[Tuple[int, int, int, int]]:
    """``(batch, L, left, right)`` when the graph is a batch of identical sliding windows."""
    shape = blocks(graph, (PatternKind.BAND,))
    if shape is None:
        return None
    return shape[0], shape[1], int(graph.pattern.get("left", 0)), int(graph.pattern.get("right", 0))


def band_tiles(graph: Graph) -> Optional[Tuple[int, int, int, int]]:
    """``(batch, L, left, right)`` when the graph is a batch of identical sliding windows
    that the tiled path takes (wide enough, on CPU), else None."""
    shape = _band_shape(graph)
    if shape is None or _band_refusal(graph, *shape[1:]) is not None:
        return None
    return shape


# The dense paths, each with its test of a graph (its shape, or None), in the order they
# are tried: the backend declines and picks a path from this table alone (dot_product runs
# each by name), so a path is added here or not at all; tests/test_routes.py covers each.
_ROUTE_TESTS = (("band", band_tiles), ("sdpa", blocks), ("grouped", size_groups))
ROUTES = tuple(name for name, _ in _ROUTE_TESTS)


def _route(graph: Graph) -> Tuple[Optional[str], object]:
    for name, takes in _ROUTE_TESTS:
        shape = takes(graph)
        if shape is not None:
            return name, shape
    return None, None


def route(graph: Graph) -> Optional[str]:
    """Which of :data:`ROUTES` the dense backend runs ``graph`` on (None: it declines it)."""
    return _route(graph)[0]


def decline(graph=None, need_weights=False, has_edge_terms=False, has_edge_mask=False, **_) -> Optional[str]:
    if graph is None:
        return "no graph"
    if has_edge_mask:
        return "a per-edge message mask is set"
    if need_weights:
        return "attention weights were asked for (SDPA does not return them)"
    if has_edge_terms:
        return "the call has per-edge terms (edge_key / edge_value / edge_bias)"
    if route(graph) is None:
        pat = graph.pattern
        if pat is not None and pat.kind == PatternKind.COMPLETE and pat.batch is not None:
            reason = _grouping_refusal(torch.tensor(pat.batch, dtype=torch.long))
            if reason is not None:
                return reason
        band = _band_shape(graph)
        if band is not None:
            return _band_refusal(graph, *band[1:])
        return (
            "the graph is not known to be complete, causal or cross blocks of one size, a wide sliding "
            "window, nor large complete blocks of several sizes"
        )
    return None


def dot_product(
    query, key, value, graph, *, scale, edge_key, edge_value, edge_bias, dropout, training, need_weights=False
):
    if edge_key is not None or edge_value is not None or edge_bias is not None or need_weights:
        raise RuntimeError("the dense backend runs plain attention only (no edge terms, no returned weights)")
    p = dropout if training else 0.0
    route = functools.partial(_dense_route, graph=graph, scale=scale, dropout=p)
    return exact_where_nonfinite(route, query, key, value, graph, scale=scale, dropout=p), None


def _dense_route(query: Tensor, key: Tensor, value: Tensor, *, graph: Graph, scale, dropout: float) -> Tensor:
    """The call on the route of :data:`ROUTES` that takes the graph."""
    which, shape = _route(graph)
    if which == "band":
        return _banded(query, key, value, *shape, scale, dropout)
    if which == "grouped":
        return _grouped(query, key, value, graph, scale, dropout)
    B, Lq, Lk = shape  # "sdpa"
    H, C = query.size(1), value.size(2)

    def to_dense(t: Tensor, L: int) -> Tensor:  # [B*L, H, X] -> [B, H, L, X]
        return t.reshape(B, L, H, t.size(-1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        to_dense(query, Lq),
        to_dense(key, Lk),
        to_dense(value, Lk),
        dropout_p=dropout,
        is_causal=graph.pattern.kind == PatternKind.CAUSAL,
        scale=scale,
    )
    return out.transpose(1, 2).reshape(B * Lq, H, C)


# ------------------------------------------------------------------ NaN and inf
# SDPA (and flex) compute every pair of a block or tile and mask afterwards: 0 x NaN in
# the weighted sum of values, NaN + (-inf) in an additive mask, and the same products in
# backward, carry a NaN or inf to queries that never attend to it. So the dense routes
# run only where the inputs and the upstream gradient are finite; elsewhere the sparse
# kernel the dispatcher would otherwise pick computes the call exactly.
DENSE_BACKENDS = ("dense", "flex")


def _all_finite(*tensors: Tensor) -> bool:
    """One sum per tensor: not finite exactly when some value is not (or when finite ones
    overflow, which only sends the call to the exact path)."""
    return bool(torch.isfinite(sum(t.sum(dtype=compute_dtype(t.dtype)) for t in tensors)))


def _sparse_route(query: Tensor, key: Tensor, value: Tensor, *, graph: Graph, scale, dropout: float) -> Tensor:
    """The call on the highest-priority backend that is not a dense one (like ``reference``,
    it takes a NaN or inf only to the queries that attend to it)."""
    call = dict(
        device=query.device,
        dtype=query.dtype,
        graph=graph,
        dropout=dropout,
        need_weights=False,
        has_edge_terms=False,
        has_edge_mask=False,
        heads=query.size(1),
        channels=None,
    )
    sparse, _ = first_accepting("dot_product", skip=DENSE_BACKENDS, **call)
    out, _ = sparse.fn(
        query,
        key,
        value,
        graph,
        scale=scale,
        edge_key=None,
        edge_value=None,
        edge_bias=None,
        dropout=dropout,
        training=dropout > 0,
        need_weights=False,
    )
    return out


def exact_where_nonfinite(
    route, query: Tensor, key: Tensor, value: Tensor, graph: Graph, *, scale, dropout: float
) -> Tensor:
    """``route(query, key, value)`` (a dense route) where it equals the reference: a call
    whose inputs hold a NaN or inf runs on the sparse kernel instead, and a backward whose
    upstream gradient does gets the sparse kernel's input gradients. Not under
    ``torch.compile`` (the check is a data-dependent branch) and, for the backward, not
    with dropout (the sparse kernel cannot redraw SDPA's mask)."""
    if torch.compiler.is_compiling():
        return route(query, key, value)
    exact = functools.partial(_sparse_route, graph=graph, scale=scale, dropout=dropout)
    if not _all_finite(query, key, value):
        return exact(query, key, value)
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (query, key, value)):
        return route(query, key, value)
    if dropout > 0:  # SDPA's mask cannot be redrawn for the sparse kernel: said, not hidden
        out = route(query, key, value)
        _warn_on_nonfinite_gradient(out)
        return out
    nonfinite: dict = {}
    out = route(*_ExactGradientWhereNonFinite.apply(exact, nonfinite, query, key, value))
    _record_nonfinite_gradient(out, nonfinite)
    return out


def _record_nonfinite_gradient(out: Tensor, record: dict) -> None:
    """Hook ``out`` so that a backward whose gradient of it holds a NaN or inf leaves that
    gradient in ``record["grad"]``. The hook goes on the tensor ``out`` views, if it is a
    view (a hook on the view itself is lost when the caller writes to it in place; one on
    its base sees the gradient of the base before the write), and cuts ``out``'s part out."""
    root = out if out._base is None else out._base
    layout = root.size(), root.stride()
    view = out.size(), out.stride(), out.storage_offset() - root.storage_offset()

    def hook(grad: Tensor) -> None:
        if not _all_finite(grad):
            laid_out = torch.empty_strided(*layout, dtype=grad.dtype, device=grad.device).copy_(grad)
            record["grad"] = laid_out.as_strided(*view)

    root.register_hook(hook)


def _warn_on_nonfinite_gradient(out: Tensor) -> None:
    def hook(grad: Tensor) -> None:
        if not _all_finite(grad):
            warnings.warn(
                "a NaN or inf reached the backward of a dense attention route with dropout: its input "
                "gradients may hold NaN where the sparse path's hold inf or finite values (SDPA's dropout "
                "mask cannot be redrawn for the exact path); pass backend='cpu' (or the sparse backend "
                "you use) to get the reference's gradients",
                RuntimeWarning,
                stacklevel=2,
            )

    out.register_hook(hook)


class _ExactGradientWhereNonFinite(torch.autograd.Function):
    """Identity on a dense route's inputs. Its backward receives the route's input
    gradients and passes them on, unless the route's upstream gradient was not finite
    (recorded by a hook on the route's output, which runs first): then it returns the
    sparse kernel's."""

    @staticmethod
    def forward(ctx, exact, nonfinite: dict, query, key, value):
        ctx.exact, ctx.nonfinite = exact, nonfinite
        ctx.save_for_backward(query, key, value)
        return query.view_as(query), key.view_as(key), value.view_as(value)

    @staticmethod
    def backward(ctx, *grads):
        upstream = ctx.nonfinite.pop("grad", None)
        if upstream is None:
            return (None, None) + grads
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[2:])]
            wanted = [t for t in leaves if t.requires_grad]
            exact = iter(torch.autograd.grad(ctx.exact(*leaves), wanted, upstream))
        return (None, None) + tuple(next(exact) if t.requires_grad else None for t in leaves)


def _grouped(query: Tensor, key: Tensor, value: Tensor, graph: Graph, scale, dropout: float) -> Tensor:
    """Complete blocks of several sizes: per distinct size, gather the blocks into
    ``[B_L, H, L, D]``, run SDPA, and put every node's row back in place."""
    rows, outs = [], []
    for L, first in size_groups(graph):
        nodes = (first.to(query.device).unsqueeze(1) + torch.arange(L, device=query.device)).reshape(-1)

        def gather(t: Tensor) -> Tensor:  # [N, H, X] -> [B_L, H, L, X]
            return t.index_select(0, nodes).reshape(-1, L, t.size(1), t.size(2)).transpose(1, 2)

        out = F.scaled_dot_product_attention(gather(query), gather(key), gather(value), dropout_p=dropout, scale=scale)
        rows.append(nodes)
        outs.append(out.transpose(1, 2).reshape(nodes.numel(), query.size(1), value.size(2)))
    order = torch.cat(rows).argsort()
    return torch.cat(outs).index_select(0, order)


def _band_bias(tiles: int, L: int, left: int, right: int, device, dtype) -> Tensor:
    """:func:`_band_mask` as the additive mask SDPA would convert it to (0 where a key is
    seen, -inf where not), cached for the last few shapes: a model calls the same
    window every layer and step, and building it is a fifth of a short sequence's time."""
    build = _cached_band_bias.__wrapped__ if torch.compiler.is_compiling() else _cached_band_bias
    return build(tiles, L, left, right, torch.device(device), dtype)


@functools.lru_cache(maxsize=4)
def _cached_band_bias(tiles: int, L: int, left: int, right: int, device: torch.device, dtype) -> Tensor:
    mask = _band_mask(tiles, L, left, right, device)
    return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, float("-inf"))


def _band_mask(tiles: int, L: int, left: int, right: int, device) -> Tensor:
    """``[tiles, BAND_TILE, W]``: which of the ``W = BAND_TILE + left + right`` keys
    starting at ``tile * BAND_TILE - left`` each query of the tile may see. Padding
    queries (past ``L``) see their whole run, so no row is empty (their output is cut off,
    their gradient is zero)."""
    T, W = BAND_TILE, BAND_TILE + left + right
    q = torch.arange(tiles * T, device=device).view(tiles, T, 1)
    k = (torch.arange(tiles, device=device) * T - left).view(tiles, 1, 1) + torch.arange(W, device=device)
    offset = k - q
    return ((offset >= -left) & (offset <= right) & (k >= 0) & (k < L)) | (q >= L)


def _banded(
    query: Tensor, key: Tensor, value: Tensor, B: int, L: int, left: int, right: int, scale, dropout: float
) -> Tensor:
    """A batch of ``B`` sliding windows of ``L`` tokens, tile by tile through SDPA."""
    H, D, C = query.size(1), query.size(2), value.size(2)
    left, right = min(left, L - 1), min(right, L - 1)
    T, W = BAND_TILE, BAND_TILE + left + right
    tiles = -(-L // T)
    pad = tiles * T - L
    q = F.pad(query.reshape(B, L, H, D), (0, 0, 0, 0, 0, pad))  # [B, tiles * T, H, D]
    k = F.pad(key.reshape(B, L, H, D), (0, 0, 0, 0, left, pad + right))  # [B, tiles * T + W - T, H, D]
    v = F.pad(value.reshape(B, L, H, C), (0, 0, 0, 0, left, pad + right))
    mask = _band_bias(tiles, L, left, right, query.device, query.dtype)
    step = max(1, BAND_GROUP_ELEMENTS // max(1, B * W * H * max(D, C)))
    outs = []
    for t0 in range(0, tiles, step):
        t1 = min(tiles, t0 + step)
        n = B * (t1 - t0)
        # narrow the padded rows, then unfold the group's key runs: the backward of a
        # group then fills the padded size once, not the unfolded (W / T times larger) one
        qt = q.narrow(1, t0 * T, (t1 - t0) * T).view(B, t1 - t0, T, H, D).permute(0, 1, 3, 2, 4).reshape(n, H, T, D)
        kt = k.narrow(1, t0 * T, (t1 - t0) * T + W - T).unfold(1, W, T).permute(0, 1, 2, 4, 3).reshape(n, H, W, D)
        vt = v.narrow(1, t0 * T, (t1 - t0) * T + W - T).unfold(1, W, T).permute(0, 1, 2, 4, 3).reshape(n, H, W, C)
        mt = mask[t0:t1].unsqueeze(0).expand(B, -1, -1, -1).reshape(n, 1, T, W)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mt, dropout_p=dropout, scale=scale)
        outs.append(out.view(B, t1 - t0, H, T, C).permute(0, 1, 3, 2, 4))
    return torch.cat(outs, dim=1).reshape(B, tiles * T, H, C)[:, :L].reshape(B * L, H, C)
