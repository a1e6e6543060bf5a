"""``torch.nn.MultiheadAttention`` on graphattn's engine, with sparse patterns."""

from __future__ import annotations

import weakref
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops, patterns
from ..graph import Graph, Pattern
from ._base import GraphCache, capturing, check_hyperparameters, check_positive_int, record_attention

PatternLike = Union[None, str, Callable[..., Graph], Graph]


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


class MultiheadShapeError(ValueError, AssertionError):
    """A bad shape where ``torch.nn.MultiheadAttention`` raises ``AssertionError``, with
    torch's message: code written for torch's module (``except AssertionError``) and for
    graphattn (``except ValueError``) both catch it."""


class MultiheadShapeRuntimeError(ValueError, RuntimeError):
    """A bad shape where torch's module raises ``RuntimeError`` (an ``attn_mask`` of the
    wrong size, query and key of different batch sizes)."""


class MultiheadMaskTypeError(TypeError, AssertionError):
    """A mask of a dtype torch's module refuses (with ``AssertionError``): neither bool nor floating point."""


def _mask_dtype(mask: Optional[Tensor], name: str) -> None:
    if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
        raise MultiheadMaskTypeError(f"only bool and floating types of {name} are supported")


def check_like_torch(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Optional[Tensor],
    attn_mask: Optional[Tensor],
    embed_dim: int,
    num_heads: int,
    batch_first: bool,
    kdim: Optional[int] = None,
    vdim: Optional[int] = None,
    extra: int = 0,
) -> None:
    """torch's checks of ``nn.MultiheadAttention.forward`` (``_canonical_mask``,
    ``_mha_shape_check``, ``multi_head_attention_forward``), in torch's order, with
    torch's messages (shapes as torch sees them: ``(L, N, E)``, an unbatched input with
    ``N = 1``) and torch's exception types (see :class:`MultiheadShapeError`). ``kdim`` /
    ``vdim`` given: separate key/value projections; ``extra``: keys torch appends
    (bias_kv, zero_attn), counted in its key_padding_mask message."""
    _mask_dtype(key_padding_mask, "key_padding_mask")
    _mask_dtype(attn_mask, "attn_mask")
    kpm, mask = key_padding_mask, attn_mask
    if query.dim() == 3:
        batched, what, kpm_dim = True, "batched (3-D)", 2
    elif query.dim() == 2:
        batched, what, kpm_dim = False, "unbatched (2-D)", 1
    else:
        raise MultiheadShapeError(
            f"query should be unbatched 2D or batched 3D tensor but received {query.dim()}-D query tensor"
        )
    if key.dim() != query.dim() or value.dim() != query.dim():
        raise MultiheadShapeError(
            f"For {what} `query`, expected `key` and `value` to be {query.dim()}-D but found "
            f"{key.dim()}-D and {value.dim()}-D tensors respectively"
        )
    if kpm is not None and kpm.dim() != kpm_dim:
        raise MultiheadShapeError(
            f"For {what} `query`, expected `key_padding_mask` to be `None` or {kpm_dim}-D but "
            f"found {kpm.dim()}-D tensor instead"
        )
    if mask is not None and mask.dim() not in (2, 3):
        raise MultiheadShapeError(
            f"For {what} `query`, expected `attn_mask` to be `None`, 2-D or 3-D but found {mask.dim()}-D tensor instead"
        )
    if batched and batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    elif not batched:
        if mask is not None and mask.dim() == 3 and mask.shape != (num_heads, query.size(0), key.size(0)):
            raise MultiheadShapeError(
                f"Expected `attn_mask` shape to be {(num_heads, query.size(0), key.size(0))} but got {mask.shape}"
            )
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        kpm = None if kpm is None else kpm.unsqueeze(0)
    (L, N, E), S = query.shape, key.size(0)
    if E != embed_dim:
        raise MultiheadShapeError(f"was expecting embedding dimension of {embed_dim}, but got {E}")
    if kdim is None and key.shape != value.shape:
        raise MultiheadShapeError(f"key shape {key.shape} does not match value shape {value.shape}")
    if kdim is not None:
        if key.shape[:2] != value.shape[:2]:
            raise MultiheadShapeError(
                f"key's sequence and batch dims {key.shape[:2]} do not match value's {value.shape[:2]}"
            )
        for name, dim, t in (("key", kdim, key), ("value", vdim, value)):
            if t.size(-1) != dim:
                raise MultiheadShapeError(
                    f"expecting {name} weights shape of {(E, t.size(-1))}, but got {torch.Size((E, dim))}"
                )
    if mask is not None:
        want = (L, S) if mask.dim() == 2 else (N * num_heads, L, S)
        if mask.shape != want:
            raise MultiheadShapeRuntimeError(
                f"The shape of the {mask.dim()}D attn_mask is {mask.shape}, but should be {want}."
            )
    if key.size(1) != N:
        raise MultiheadShapeRuntimeError(
            f"query shape {query.shape} and key shape {key.shape} have different batch sizes"
        )
    if kpm is not None:
        for i, want in enumerate((N, S + extra)):
            if kpm.shape[i] + (extra if i else 0) != want:
                raise MultiheadShapeError(
                    f"Expected key_padded_mask.shape[{i}] to be {want}, but got {kpm.shape[i] + (extra if i else 0)}"
                )


class Masks(NamedTuple):
    """torch's masks in one canonical form: boolean ones become edges kept (shared by
    heads: ``keep_2d`` ``(Lq, Sx)``, ``keep_kpm`` ``(N, Sx)``), float ones (and per-head
    boolean ones) become score biases (``bias_2d``, ``bias_kpm``, ``bias_3d``
    ``(N*H, Lq, Sx)``). ``Sx`` counts the appended bias_kv / zero_attn keys, never masked."""

    keep_2d: Optional[Tensor] = None
    keep_kpm: Optional[Tensor] = None
    bias_2d: Optional[Tensor] = None
    bias_3d: Optional[Tensor] = None
    bias_kpm: Optional[Tensor] = None


def canonical_masks(
    attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], N: int, H: int, Lq: int, S: int, extra: int
) -> Masks:
    """torch's ``attn_mask`` / ``key_padding_mask`` (``True`` = not allowed, floats added
    to the scores), checked by :func:`check_like_torch`, brought to :class:`Masks`."""
    keep_2d = keep_kpm = bias_2d = bias_3d = bias_kpm = None
    if attn_mask is not None:
        pad = (0, extra)
        if attn_mask.dtype == torch.bool:
            if attn_mask.dim() == 2:
                keep_2d = F.pad(~attn_mask, pad, value=True)
            else:
                bias_3d = F.pad(attn_mask.float().masked_fill(attn_mask, float("-inf")), pad)
        elif attn_mask.is_floating_point():
            padded = F.pad(attn_mask, pad)
            bias_2d, bias_3d = (padded, None) if attn_mask.dim() == 2 else (None, padded)
    if key_padding_mask is not None:
        if key_padding_mask.dtype == torch.bool:
            keep_kpm = F.pad(~key_padding_mask, (0, extra), value=True)
        else:
            bias_kpm = F.pad(key_padding_mask, (0, extra))
    return Masks(keep_2d, keep_kpm, bias_2d, bias_3d, bias_kpm)


def mask_bias_on_edges(
    masks: Masks, graph: Graph, N: int, H: int, Lq: int, Sx: int, dtype: torch.dtype
) -> Optional[Tensor]:
    """The masks' score biases read off at each edge of the block-diagonal graph:
    ``[E, H]`` in the graph's user order, or ``None`` when no mask is a bias."""
    if masks.bias_2d is None and masks.bias_3d is None and masks.bias_kpm is None:
        return None
    b, i, j = graph.row // Lq, graph.row % Lq, graph.col % Sx
    eb = torch.zeros(graph.num_edges, H, dtype=dtype, device=graph.device)
    if masks.bias_2d is not None:
        eb = eb + masks.bias_2d.to(dtype)[i, j].unsqueeze(1)
    if masks.bias_kpm is not None:
        eb = eb + masks.bias_kpm.to(dtype)[b, j].unsqueeze(1)
    if masks.bias_3d is not None:
        heads = torch.arange(H, device=eb.device)
        eb = eb + masks.bias_3d.to(dtype).view(N, H, Lq, Sx)[b.unsqueeze(1), heads, i.unsqueeze(1), j.unsqueeze(1)]
    return graph.to_user_order(eb)


def dense_weights(graph: Graph, alpha: Tensor, N: int, H: int, Lq: int, Sx: int) -> Tensor:
    """Edge weights ``[E, H]`` (user order) scattered into torch's dense ``(N, H, Lq, Sx)``."""
    ei = graph.edge_index
    weights = alpha.new_zeros(N, H, Lq, Sx)
    b, i, j = ei[1] // Lq, ei[1] % Lq, ei[0] % Sx
    weights[b.unsqueeze(1), torch.arange(H, device=alpha.device), i.unsqueeze(1), j.unsqueeze(1)] = alpha
    return weights


def padded_weights(graph: Graph, alpha: Tensor, lengths: list) -> Tensor:
    """Edge weights ``[E, H]`` (user order) of a block-diagonal graph over sequences of
    ``lengths`` scattered into a dense ``(N, H, L, L)``, ``L`` the longest, zero elsewhere."""
    n = torch.tensor(lengths, dtype=torch.long, device=alpha.device)
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=alpha.device), n)
    pos = torch.arange(seq.numel(), device=alpha.device) - (n.cumsum(0) - n)[seq]
    L = max(lengths, default=0)
    weights = alpha.new_zeros(len(lengths), alpha.size(1), L, L)
    src, dst = graph.edge_index
    heads = torch.arange(alpha.size(1), device=alpha.device)
    weights[seq[dst].unsqueeze(1), heads, pos[dst].unsqueeze(1), pos[src].unsqueeze(1)] = alpha
    return weights


def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.linear``, except that a bias of another dtype (a float16 ``in_proj_bias`` set on
    a float64 module) is added with type promotion, as torch's attention does for inputs
    it has transposed, instead of failing in ``addmm`` for contiguous ones."""
    if bias is None or bias.dtype == weight.dtype:
        return F.linear(x, weight, bias)
    return F.linear(x, weight) + bias


class TorchAttentionBase(nn.Module):
    """What every module with ``torch.nn.MultiheadAttention``'s interface here shares:
    its projection parameters under torch's names (state dicts interchange), the
    projections, the input layouts (``batch_first``, unbatched) and torch's shape checks.
    :class:`MultiheadGraphAttention` and :class:`~graphattn.nn.LinearAttention` build on it,
    each taking only the arguments it implements."""

    __constants__ = ["batch_first"]

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool,
        kdim: Optional[int],
        vdim: Optional[int],
        batch_first: bool,
        device,
        dtype,
    ) -> None:
        check_positive_int("embed_dim", embed_dim)
        check_positive_int("num_heads", num_heads)
        for name, dim in (("kdim", kdim), ("vdim", vdim)):
            if dim is not None:
                check_positive_int(name, dim)
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        if not self._qkv_same_embed_dim:
            self.q_proj_weight = nn.Parameter(torch.empty((embed_dim, embed_dim), **fk))
            self.k_proj_weight = nn.Parameter(torch.empty((embed_dim, self.kdim), **fk))
            self.v_proj_weight = nn.Parameter(torch.empty((embed_dim, self.vdim), **fk))
            self.register_parameter("in_proj_weight", None)
        else:
            self.in_proj_weight = nn.Parameter(torch.empty((3 * embed_dim, embed_dim), **fk))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **fk))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **fk)

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)

    def _copy_from_torch(self, mha: nn.MultiheadAttention):
        """Load ``mha``'s weights (a parameter of its own dtype, e.g. a float16 bias, stays so)
        and its train/eval mode; returns ``self``."""
        self.load_state_dict(mha.state_dict())
        ours = dict(self.named_parameters())
        for name, p in mha.named_parameters():
            if ours[name].dtype != p.dtype:
                ours[name].data = p.detach().clone()
        return self.train(mha.training)

    def _projections(self, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        E = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E : 2 * E], b[2 * E :])
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight[:E], self.in_proj_weight[E : 2 * E], self.in_proj_weight[2 * E :]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return _linear(query, wq, bq), _linear(key, wk, bk), _linear(value, wv, bv)

    def _batch_first(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor],
        attn_mask: Optional[Tensor] = None,
        extra: int = 0,
    ):
        """Inputs in any of torch's layouts, checked as torch checks them
        (:func:`check_like_torch`) -> ``(unbatched, q, k, v, kpm)`` with ``(N, L, E)`` tensors."""
        separate = not self._qkv_same_embed_dim
        check_like_torch(
            query,
            key,
            value,
            key_padding_mask,
            attn_mask,
            self.embed_dim,
            self.num_heads,
            self.batch_first,
            self.kdim if separate else None,
            self.vdim if separate else None,
            extra,
        )
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        return unbatched, query, key, value, key_padding_mask

    def _caller_layout(
        self, out: Tensor, weights: Optional[Tensor], unbatched: bool, average_attn_weights: bool
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """``(N, L, E)`` output and ``(N, H, L, S)`` weights back to the caller's layout."""
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights
            if unbatched:
                weights = weights.squeeze(0)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


class MultiheadGraphAttention(TorchAttentionBase):
    r"""Multi-head attention with ``torch.nn.MultiheadAttention``'s arguments, masks and
    parameter names, computed as graph attention over a pattern.

    .. math::
        \mathrm{MHA}(Q, K, V) = [\mathrm{head}_1, \dots, \mathrm{head}_H] W^O,\quad
        \mathrm{head}_h = \sum_{j \to i} \operatorname{softmax}_i\!\Big(\frac{q_i^\top k_j}{\sqrt{d}}\Big) v_j

    where query ``i`` attends to key ``j`` when the pattern graph has the edge ``j -> i``
    and no mask removes it.

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim,
        batch_first, device, dtype: as in ``torch.nn.MultiheadAttention``.
        pattern: which keys each query may attend to. ``None`` (default): all keys
            (causal when ``is_causal=True``); a name (``"complete"``, ``"causal"``);
            a callable ``pattern(Lq, Lk) -> Graph`` such as
            ``lambda Lq, Lk: graphattn.patterns.sliding_window(Lq, 128, 128)``; or a
            fixed :class:`~graphattn.Graph` over ``(Lk, Lq)`` tokens. Masks are applied
            on top of the pattern.

    Forward: ``forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` returns
    ``(attn_output, attn_weights)`` with torch's shapes and mask conventions (boolean
    masks: ``True`` = not allowed; float masks are added to the scores). Weights are
    dense ``(N, L, S)`` (or ``(N, H, L, S)``) and taken before dropout. A query whose
    keys are all masked outputs zeros (torch gives NaN).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        pattern: PatternLike = None,
    ) -> None:
        check_hyperparameters(dropout=dropout)
        super().__init__(embed_dim, num_heads, bias, kdim, vdim, batch_first, device, dtype)
        fk = {"device": device, "dtype": dtype}
        self.dropout = dropout
        self.pattern = pattern
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty((1, 1, embed_dim), **fk))
            self.bias_v = nn.Parameter(torch.empty((1, 1, embed_dim), **fk))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._graph_cache = GraphCache()  # the last mask-free block graph, for the pattern it was built from
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        super()._reset_parameters()
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, pattern: PatternLike = None) -> "MultiheadGraphAttention":
        """A MultiheadGraphAttention with the arguments and weights of ``mha``."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"expected torch.nn.MultiheadAttention, got {type(mha).__name__}")
        p = next(mha.parameters())
        layer = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            add_bias_kv=mha.bias_k is not None,
            add_zero_attn=mha.add_zero_attn,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device=p.device,
            dtype=p.dtype,
            pattern=pattern,
        )
        return layer._copy_from_torch(mha)

    def attend_packed(
        self, query: Tensor, key: Tensor, value: Tensor, graph: Graph, need_weights: bool = False
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Attention over packed node tensors: ``query`` ``[Nq, E]``, ``key`` and
        ``value`` ``[Nk, kdim/vdim]``, query ``i`` attending to key ``j`` for each
        edge ``j -> i`` of ``graph`` (e.g. :func:`graphattn.patterns.complete_per_graph`
        over a PyG batch: every graph's nodes see their own graph only, no padding).
        Returns ``([Nq, E], weights [num_edges, H] in the graph's edge order or None)``;
        weights are taken before dropout. ``add_bias_kv`` / ``add_zero_attn`` have no
        packed meaning and are refused."""
        if self.bias_k is not None or self.add_zero_attn:
            raise ValueError(
                "attend_packed does not support add_bias_kv or add_zero_attn (no per-sequence key "
                "to append in a packed batch); add those keys to the graph as nodes instead"
            )
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 2:
                raise ValueError(
                    f"attend_packed takes packed [nodes, features] tensors; {name} has shape {tuple(t.shape)}"
                )
        H, D = self.num_heads, self.head_dim
        q, k, v = self._projections(query, key, value)
        want = need_weights or capturing()
        out = ops.dot_product_attention(
            q.view(-1, H, D),
            k.view(-1, H, D),
            v.view(-1, H, D),
            graph,
            scale=D**-0.5,
            dropout=self.dropout,
            training=self.training,
            return_weights=want,
        )
        out, alpha = out if want else (out, None)
        if alpha is not None and capturing():
            record_attention(self, graph.edge_index, alpha, graph.num_src, graph.num_dst, None)
        return self.out_proj(out.reshape(-1, self.embed_dim)), alpha if need_weights else None

    # ---------------------------------------------------------------- helpers
    def _pattern_graph(self, Lq: int, Lk: int, is_causal: bool, device) -> Graph:
        pat = self.pattern
        if pat is None:
            pat = "causal" if is_causal else "complete"
        if isinstance(pat, Graph):
            return patterns.check_block(pat, Lq, Lk, "pattern graph").to(device)
        if isinstance(pat, str):
            if pat == "complete":
                return patterns.complete(Lq, Lk, device=device)
            if pat == "causal":
                if Lq != Lk:
                    raise ValueError(f"a causal pattern needs as many queries as keys, got {Lq} and {Lk}")
                return patterns.causal(Lq, device=device)
            raise ValueError(f"unknown pattern {pat!r}; use 'complete', 'causal', a callable or a Graph")
        return patterns.check_block(pat(Lq, Lk), Lq, Lk, "pattern(Lq, Lk)").to(device)

    @torch.compiler.disable
    def _build_graph(
        self,
        N: int,
        Lq: int,
        S: int,
        extra: int,
        is_causal: bool,
        device,
        keep_2d: Optional[Tensor],
        keep_kpm: Optional[Tensor],
    ) -> Graph:
        """Block-diagonal graph over N sequences: the pattern over the S real keys,
        plus ``extra`` appended keys (bias_kv / zero_attn) visible to every query,
        minus the edges removed by boolean masks."""

        def build() -> Graph:
            return self._block_graph(N, Lq, S, extra, is_causal, device, keep_2d, keep_kpm)

        pat = self.pattern
        named = pat is None or isinstance(pat, str)
        if keep_2d is not None or keep_kpm is not None or not (named or _weakrefable(pat)):
            return build()  # the masks' edges change from call to call
        # A Graph or callable pattern by weak reference and version (an in-place edit, or a
        # new object at a freed one's address, rebuilds); a name is part of the key.
        objects = () if named else (pat,)
        key = (N, Lq, S, extra, is_causal, str(device), pat if named else None)
        return self._graph_cache.lookup(objects, key, build)

    def _block_graph(
        self,
        N: int,
        Lq: int,
        S: int,
        extra: int,
        is_causal: bool,
        device,
        keep_2d: Optional[Tensor],
        keep_kpm: Optional[Tensor],
    ) -> Graph:
        base = self._pattern_graph(Lq, S, is_causal, device)
        rows, cols = base.row, base.col
        if extra:
            q = torch.arange(Lq, device=device).repeat_interleave(extra)
            k = S + torch.arange(extra, device=device).repeat(Lq)
            rows, cols = torch.cat([rows, q]), torch.cat([cols, k])
            order = torch.sort(rows, stable=True)[1]
            rows, cols = rows[order], cols[order]
        Sx = S + extra
        E0 = rows.numel()
        b = torch.arange(N, device=device).repeat_interleave(E0)
        r = rows.repeat(N)
        c = cols.repeat(N)
        keep = None
        if keep_2d is not None:
            keep = keep_2d[r, c]
        if keep_kpm is not None:
            k2 = keep_kpm[b, c]
            keep = k2 if keep is None else keep & k2
        same_blocks = keep is None
        if keep is not None:
            b, r, c = b[keep], r[keep], c[keep]
        pattern_meta = None
        if same_blocks and base.pattern is not None and not extra:
            meta = () if Lq == S else (("key_lengths", (S,) * N),)
            pattern_meta = Pattern(base.pattern.kind, base.pattern.params + meta, (Lq,) * N)
        return Graph.from_trusted_edges(b * Sx + c, b * Lq + r, N * Sx, N * Lq, pattern=pattern_meta)

    # ---------------------------------------------------------------- NestedTensor inputs
    def _nested_refusal(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor]
    ) -> Optional[str]:
        """Why torch's module would refuse these NestedTensor inputs (the conditions of its
        inference fast path, the only one that takes them, in its order and words), or None."""
        b, w = self.in_proj_bias, self.in_proj_weight
        params = [t for t in (w, b, self.out_proj.weight, self.out_proj.bias) if t is not None]
        reasons = (
            (not torch.backends.mha.get_fastpath_enabled(), "torch.backends.mha.get_fastpath_enabled() was not True"),
            (query.dim() != 3, f"input not batched; expected query.dim() of 3 but got {query.dim()}"),
            (
                query is not key or key is not value,
                "non-self attention was used (query, key, and value are not the same Tensor)",
            ),
            (
                b is not None and query.dtype != b.dtype,
                f"dtypes of query ({query.dtype}) and self.in_proj_bias ({None if b is None else b.dtype}) don't match",
            ),
            (w is None, "in_proj_weight was None"),
            (
                w is not None and query.dtype != w.dtype,
                f"dtypes of query ({query.dtype}) and self.in_proj_weight "
                f"({None if w is None else w.dtype}) don't match",
            ),
            (self.training, "training is enabled"),
            (self.num_heads % 2 != 0, "self.num_heads is not even"),
            (not self.batch_first, "batch_first was not True"),
            (self.bias_k is not None, "self.bias_k was not None"),
            (self.add_zero_attn, "add_zero_attn was enabled"),
            (
                key_padding_mask is not None or attn_mask is not None,
                "supplying both src_key_padding_mask and src_mask at the same time is not supported with NestedTensor "
                "input",
            ),
            (torch.is_autocast_enabled(), "autocast is enabled"),
            (
                any(t.is_nested and t.layout != torch.strided for t in (query, key, value)),
                "some Tensor argument has_torch_function (a jagged NestedTensor)",
            ),
            (
                torch.is_grad_enabled() and any(t.requires_grad for t in [query] + params),
                "grad is enabled and at least one of query or the input/output projection weights or biases "
                "requires_grad",
            ),
            (b is None, "the module has no in_proj_bias (bias=False)"),
        )
        return next((why for refused, why in reasons if refused), None)

    def _nested_graph(self, lengths: list, device) -> Graph:
        """The block-diagonal pattern of a nested batch: one block of the module's pattern per sequence."""
        pat = self.pattern
        if pat is None or pat == "complete":
            batch = torch.repeat_interleave(
                torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
            )
            return patterns.complete_per_graph(batch, sum(lengths))
        if pat == "causal":
            return patterns.batch(lengths, patterns.causal).to(device)
        if callable(pat) and not isinstance(pat, Graph):
            return patterns.batch(lengths, pat, key_lengths=lengths).to(device)
        raise ValueError(
            "a NestedTensor holds sequences of several lengths; a fixed pattern Graph is over one: "
            "pass a pattern callable, or the sequences packed to attend_packed with your own graph"
        )

    def _forward_nested(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor],
        need_weights: bool,
        attn_mask: Optional[Tensor],
        average_attn_weights: bool,
        is_causal: bool,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """A nested batch as torch's fast path answers it (a NestedTensor output; dense
        ``(N, L, L)`` weights zero-padded to the longest sequence), computed as one
        block-diagonal graph over the packed tokens."""
        why = self._nested_refusal(query, key, value, key_padding_mask, attn_mask)
        if why is None and is_causal:
            why = "is_causal was given (torch's fast path would ignore it for a NestedTensor)"
        if why is not None:
            raise MultiheadShapeError(
                "MultiheadAttention does not support NestedTensor outside of its fast path. The fast path was not "
                f"hit because {why}. Alternatives: the sequences packed ([sum of lengths, E]) to attend_packed with "
                "graphattn.patterns.batch(lengths) as the graph, or padded with a key_padding_mask"
            )
        seqs = query.unbind()
        lengths = [t.size(0) for t in seqs]
        packed = torch.cat(seqs) if seqs else query.new_zeros(0, self.embed_dim)
        graph = self._nested_graph(lengths, packed.device)
        out, alpha = self.attend_packed(packed, packed, packed, graph, need_weights=need_weights)
        nested = torch.nested.as_nested_tensor(list(out.split(lengths)))
        if not need_weights:
            return nested, None
        weights = padded_weights(graph, alpha, lengths)
        return nested, weights.mean(dim=1) if average_attn_weights else weights

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        if query.is_nested or key.is_nested or value.is_nested:
            return self._forward_nested(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        extra = int(self.bias_k is not None) + int(self.add_zero_attn)
        unbatched, query, key, value, key_padding_mask = self._batch_first(
            query, key, value, key_padding_mask, attn_mask, extra
        )
        N, Lq, _ = query.shape
        S = key.size(1)
        H, D = self.num_heads, self.head_dim
        q, k, v = self._projections(query, key, value)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(N, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(N, 1, -1)], dim=1)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(N, 1, self.embed_dim)], dim=1)
            v = torch.cat([v, v.new_zeros(N, 1, self.embed_dim)], dim=1)
        Sx = S + extra

        masks = canonical_masks(attn_mask, key_padding_mask, N, H, Lq, S, extra)
        causal_hint = is_causal and attn_mask is None
        graph = self._build_graph(N, Lq, S, extra, causal_hint, query.device, masks.keep_2d, masks.keep_kpm)
        edge_bias = mask_bias_on_edges(masks, graph, N, H, Lq, Sx, query.dtype)

        want = need_weights or capturing()
        out = ops.dot_product_attention(
            q.reshape(N * Lq, H, D),
            k.reshape(N * Sx, H, D),
            v.reshape(N * Sx, H, D),
            graph,
            scale=D**-0.5,
            edge_bias=edge_bias,
            dropout=self.dropout,
            training=self.training,
            return_weights=want,
        )
        out, alpha = out if want else (out, None)
        out = self.out_proj(out.reshape(N, Lq, self.embed_dim))
        if alpha is not None and capturing():
            record_attention(self, graph.edge_index, alpha, graph.num_src, graph.num_dst, (N, Lq, Sx))
        weights = dense_weights(graph, alpha, N, H, Lq, Sx) if need_weights else None
        return self._caller_layout(out, weights, unbatched, average_attn_weights)
