"""Parity with torch.nn.MultiheadAttention (copied weights, eval mode, 1e-5 in fp32)."""

import itertools

import pytest
import torch
from torch import nn

from graphattn import ops, patterns
from graphattn.nn import MultiheadGraphAttention

TOL = dict(atol=1e-5, rtol=1e-5)
E, H = 16, 4


def _pair(batch_first=False, kdim=None, vdim=None, bias=True, add_bias_kv=False, add_zero_attn=False, **kw):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(
        E,
        H,
        batch_first=batch_first,
        kdim=kdim,
        vdim=vdim,
        bias=bias,
        add_bias_kv=add_bias_kv,
        add_zero_attn=add_zero_attn,
    ).eval()
    ours = MultiheadGraphAttention.from_torch(mha, **kw).eval()
    return mha, ours


def _inputs(N, L, S, batch_first, kdim=None, vdim=None, self_attn=True):
    q = torch.randn(N, L, E) if batch_first else torch.randn(L, N, E)
    if self_attn:
        return q, q, q
    shape_k = (N, S, kdim or E) if batch_first else (S, N, kdim or E)
    shape_v = (N, S, vdim or E) if batch_first else (S, N, vdim or E)
    return q, torch.randn(shape_k), torch.randn(shape_v)


def _check(mha, ours, args, **kw):
    out_t, w_t = mha(*args, **kw)
    out_o, w_o = ours(*args, **kw)
    torch.testing.assert_close(out_o, out_t, **TOL)
    if w_t is None:
        assert w_o is None
    else:
        torch.testing.assert_close(w_o, w_t, **TOL)


GRID = list(itertools.product([False, True], [True, False], [True, False]))


@pytest.mark.parametrize("batch_first,self_attn,average", GRID)
def test_plain(batch_first, self_attn, average):
    mha, ours = _pair(batch_first)
    args = _inputs(3, 7, 5, batch_first, self_attn=self_attn)
    _check(mha, ours, args, average_attn_weights=average)
    _check(mha, ours, args, need_weights=False)


@pytest.mark.parametrize("batch_first", [False, True])
def test_key_padding_mask_bool_and_float(batch_first):
    mha, ours = _pair(batch_first)
    args = _inputs(3, 6, 6, batch_first, self_attn=False)
    kpm = torch.zeros(3, 6, dtype=torch.bool)
    kpm[0, 4:] = True
    kpm[2, 1] = True
    _check(mha, ours, args, key_padding_mask=kpm)
    fkpm = torch.zeros(3, 6).masked_fill(kpm, float("-inf"))
    fkpm[1, 2] = -0.7
    _check(mha, ours, args, key_padding_mask=fkpm)


@pytest.mark.parametrize("batch_first", [False, True])
def test_causal_and_banded_masks(batch_first):
    mha, ours = _pair(batch_first)
    L = 9
    args = _inputs(2, L, L, batch_first)
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    _check(mha, ours, args, attn_mask=causal)
    i = torch.arange(L)
    band = (i[None, :] - i[:, None]).abs() > 2
    _check(mha, ours, args, attn_mask=band)
    float_mask = torch.randn(L, L).masked_fill(causal, float("-inf"))
    _check(mha, ours, args, attn_mask=float_mask)
    # is_causal with the mask given (torch requires the mask on this path)
    _check(mha, ours, args, attn_mask=causal, is_causal=True)


def test_per_head_3d_masks():
    mha, ours = _pair()
    L, N = 5, 2
    args = _inputs(N, L, L, False)
    m = torch.rand(N * H, L, L) > 0.6
    m[:, :, 0] = False  # every query keeps one key
    _check(mha, ours, args, attn_mask=m)
    _check(mha, ours, args, attn_mask=torch.randn(N * H, L, L), average_attn_weights=False)


def test_kdim_vdim_no_bias_bias_kv_zero_attn():
    mha, ours = _pair(kdim=6, vdim=10, bias=False)
    _check(mha, ours, _inputs(2, 4, 7, False, kdim=6, vdim=10, self_attn=False))
    mha, ours = _pair(add_bias_kv=True, add_zero_attn=True)
    args = _inputs(2, 4, 7, False, self_attn=False)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 5:] = True
    _check(mha, ours, args, key_padding_mask=kpm)
    _check(mha, ours, args, attn_mask=torch.rand(4, 7) > 0.7)


def test_unbatched():
    mha, ours = _pair()
    x = torch.randn(6, E)
    _check(mha, ours, (x, x, x))


def test_is_causal_without_mask_means_causal_pattern():
    mha, ours = _pair()
    L = 8
    args = _inputs(2, L, L, False)
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    ref, _ = mha(*args, attn_mask=causal)
    out, _ = ours(*args, is_causal=True, need_weights=False)
    torch.testing.assert_close(out, ref, **TOL)


def test_sliding_window_pattern_equals_dense_band_mask():
    L, w = 20, 3
    mha, _ = _pair(batch_first=True)
    ours = MultiheadGraphAttention.from_torch(mha, pattern=lambda Lq, Lk: patterns.sliding_window(Lq, w, w)).eval()
    x = torch.randn(2, L, E)
    i = torch.arange(L)
    band = (i[None, :] - i[:, None]).abs() > w
    ref, wref = mha(x, x, x, attn_mask=band)
    out, wout = ours(x, x, x)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(wout, wref, **TOL)


def test_dense_path_equals_sparse_path_and_is_chosen():
    mha, ours = _pair(batch_first=True)
    x = torch.randn(3, 10, E)
    for is_causal in (False, True):
        out_auto, _ = ours(x, x, x, need_weights=False, is_causal=is_causal)
        assert ops.last_backend("dot_product") == "dense"
        with ops.use_backend("reference"):
            out_ref, _ = ours(x, x, x, need_weights=False, is_causal=is_causal)
        torch.testing.assert_close(out_auto, out_ref, **TOL)


def test_dense_backend_on_pattern_graphs_directly():
    torch.manual_seed(1)
    for g in (
        patterns.complete(7),
        patterns.causal(7),
        patterns.cross(5, 9),
        patterns.batch([6, 6, 6], patterns.causal),
        patterns.batch([4, 4], patterns.cross, key_lengths=[3, 3]),
    ):
        q = torch.randn(g.num_dst, 2, 8)
        k, v = torch.randn(g.num_src, 2, 8), torch.randn(g.num_src, 2, 8)
        dense = ops.dot_product_attention(q, k, v, g, backend="dense")
        sparse = ops.dot_product_attention(q, k, v, g, backend="reference")
        torch.testing.assert_close(dense, sparse, **TOL)
    band = patterns.sliding_window(9, 2, 2)
    q = k = v = torch.randn(9, 2, 8)
    with pytest.raises(RuntimeError, match="cannot run"):
        ops.dot_product_attention(q, k, v, band, backend="dense")


def test_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        MultiheadGraphAttention(10, 3)
    _, ours = _pair()
    x = torch.randn(5, 2, E)
    with pytest.raises(ValueError, match=r"2D attn_mask is torch.Size\(\[4, 4\]\), but should be \(5, 5\)"):
        ours(x, x, x, attn_mask=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_padded_mask.shape\[0\] to be 2, but got 3"):  # torch's spelling
        ours(x, x, x, key_padding_mask=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="only bool and floating types of attn_mask"):
        ours(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=f"was expecting embedding dimension of {E}, but got {E + 1}"):
        ours(torch.randn(5, 2, E + 1), x, x)
    with pytest.raises(TypeError, match="MultiheadAttention"):
        MultiheadGraphAttention.from_torch(nn.Linear(2, 2))


def test_gradients_match_torch():
    mha, ours = _pair(batch_first=True)
    mha.train(), ours.train()
    x1 = torch.randn(2, 6, E, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1, 4:] = True
    mha(x1, x1, x1, key_padding_mask=kpm)[0].sum().backward()
    ours(x2, x2, x2, key_padding_mask=kpm)[0].sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)
    for (n, p1), (_, p2) in zip(mha.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, **TOL, msg=n)


@pytest.mark.parametrize(
    "make",
    [
        lambda: patterns.sliding_window(40, 5, 3),
        lambda: patterns.causal(40),
        lambda: patterns.batch([20, 20], patterns.sliding_window, left=4, right=4),
    ],
)
def test_flex_backend_equals_sparse_path(make):
    g = make()
    torch.manual_seed(2)
    q, k, v = (torch.randn(g.num_dst, 2, 8) for _ in range(3))
    flex = ops.dot_product_attention(q, k, v, g, backend="flex")
    ref = ops.dot_product_attention(q, k, v, g, backend="reference")
    torch.testing.assert_close(flex, ref, **TOL)
    ops.dot_product_attention(q, k, v, g)
    assert ops.last_backend("dot_product") != "flex"  # on CPU only when forced


_r, _B = torch.randn, torch.bool
BAD_SHAPES = {  # name: (module arguments, inputs in the (L, N, E) layout) torch's module refuses
    "embed_dim": ({}, lambda: dict(query=_r(5, 3, 7), key=_r(5, 3, 8), value=_r(5, 3, 8))),
    "key_value": ({}, lambda: dict(query=_r(5, 3, 8), key=_r(6, 3, 8), value=_r(7, 3, 8))),
    "key_value_kdim": (dict(kdim=4, vdim=6), lambda: dict(query=_r(5, 3, 8), key=_r(6, 3, 4), value=_r(7, 3, 6))),
    "key_value_batch_kdim": (dict(kdim=4, vdim=4), lambda: dict(query=_r(5, 3, 8), key=_r(5, 2, 4), value=_r(5, 3, 4))),
    "key_value_unbatched": ({}, lambda: dict(query=_r(5, 8), key=_r(6, 8), value=_r(7, 8))),
    "key_width_kdim": (dict(kdim=4, vdim=6), lambda: dict(query=_r(5, 3, 8), key=_r(6, 3, 5), value=_r(6, 3, 6))),
    "value_width_kdim": (dict(kdim=4, vdim=6), lambda: dict(query=_r(5, 3, 8), key=_r(6, 3, 4), value=_r(6, 3, 5))),
    "key_2d_batched": ({}, lambda: dict(query=_r(5, 3, 8), key=_r(6, 8), value=_r(6, 3, 8))),
    "key_3d_unbatched": ({}, lambda: dict(query=_r(5, 8), key=_r(6, 3, 8), value=_r(6, 3, 8))),
    "query_4d": ({}, lambda: dict(query=_r(5, 3, 2, 8), key=_r(5, 3, 8), value=_r(5, 3, 8))),
    "query_1d": ({}, lambda: dict(query=_r(8), key=_r(8), value=_r(8))),
    "kpm_3d": (
        {},
        lambda: dict(
            query=_r(5, 3, 8), key=_r(5, 3, 8), value=_r(5, 3, 8), key_padding_mask=torch.zeros(3, 5, 1, dtype=_B)
        ),
    ),
    "kpm_2d_unbatched": (
        {},
        lambda: dict(query=_r(5, 8), key=_r(5, 8), value=_r(5, 8), key_padding_mask=torch.zeros(1, 5, dtype=_B)),
    ),
    "kpm_batch": (
        {},
        lambda: dict(
            query=_r(5, 3, 8), key=_r(5, 3, 8), value=_r(5, 3, 8), key_padding_mask=torch.zeros(2, 5, dtype=_B)
        ),
    ),
    "kpm_length": (
        {},
        lambda: dict(query=_r(5, 3, 8), key=_r(5, 3, 8), value=_r(5, 3, 8), key_padding_mask=torch.zeros(3, 4)),
    ),
    "kpm_length_bias_kv": (
        dict(add_bias_kv=True, add_zero_attn=True),
        lambda: dict(
            query=_r(5, 3, 8), key=_r(5, 3, 8), value=_r(5, 3, 8), key_padding_mask=torch.zeros(3, 4, dtype=_B)
        ),
    ),
    "kpm_length_unbatched": (
        {},
        lambda: dict(query=_r(5, 8), key=_r(5, 8), value=_r(5, 8), key_padding_mask=torch.zeros(4, dtype=_B)),
    ),
    "kpm_dtype": (
        {},
        lambda: dict(
            query=_r(5, 3, 8), key=_r(5, 3, 8), value=_r(5, 3, 8), key_padding_mask=torch.zeros(3, 5, dtype=torch.long)
        ),
    ),
    "mask_dtype": (
        {},
        lambda: dict(
            query=_r(5, 3, 8), key=_r(5, 3, 8), value=_r(5, 3, 8), attn_mask=torch.zeros(5, 5, dtype=torch.long)
        ),
    ),
    "mask_4d": (
        {},
        lambda: dict(
            query=_r(5, 3, 8), key=_r(5, 3, 8), value=_r(5, 3, 8), attn_mask=torch.zeros(1, 1, 5, 5, dtype=_B)
        ),
    ),
    "mask_1d": (
        {},
        lambda: dict(query=_r(5, 3, 8), key=_r(5, 3, 8), value=_r(5, 3, 8), attn_mask=torch.zeros(5, dtype=_B)),
    ),
    "mask_2d": (
        {},
        lambda: dict(query=_r(5, 3, 8), key=_r(5, 3, 8), value=_r(5, 3, 8), attn_mask=torch.zeros(4, 5, dtype=_B)),
    ),
    "mask_2d_float_cross": (
        {},
        lambda: dict(query=_r(5, 3, 8), key=_r(6, 3, 8), value=_r(6, 3, 8), attn_mask=torch.zeros(5, 5)),
    ),
    "mask_3d": (
        {},
        lambda: dict(query=_r(5, 3, 8), key=_r(5, 3, 8), value=_r(5, 3, 8), attn_mask=torch.zeros(3, 5, 5, dtype=_B)),
    ),
    "mask_3d_unbatched": (
        {},
        lambda: dict(query=_r(5, 8), key=_r(5, 8), value=_r(5, 8), attn_mask=torch.zeros(3, 5, 5, dtype=_B)),
    ),
    "mask_2d_unbatched": (
        {},
        lambda: dict(query=_r(5, 8), key=_r(5, 8), value=_r(5, 8), attn_mask=torch.zeros(4, 5, dtype=_B)),
    ),
    "mask_4d_unbatched": (
        {},
        lambda: dict(query=_r(5, 8), key=_r(5, 8), value=_r(5, 8), attn_mask=torch.zeros(1, 1, 5, 5, dtype=_B)),
    ),
}


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("case", BAD_SHAPES)
def test_shape_errors_are_torchs(case, batch_first):
    """Each bad input torch's module refuses: ours raises an error that is an instance of
    torch's type (AssertionError / RuntimeError / ...) and of graphattn's (ValueError, or
    TypeError for a dtype), with torch's message."""
    kwargs, make = BAD_SHAPES[case]
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, **kwargs).train()  # train: torch's checked path
    ours = MultiheadGraphAttention.from_torch(mha)
    args = make()
    if batch_first:
        args = {k: v.transpose(0, 1) if k in ("query", "key", "value") and v.dim() == 3 else v for k, v in args.items()}
    with pytest.raises(Exception) as theirs:
        mha(**args)
    with pytest.raises(Exception) as mine:
        ours(**args)
    assert str(mine.value) == str(theirs.value)
    assert isinstance(mine.value, type(theirs.value))
    assert isinstance(mine.value, TypeError if "dtype" in case else ValueError)


def test_query_and_key_of_different_batch_sizes_say_so():
    """torch fails inside a reshape (RuntimeError: "shape ... is invalid"); ours says what is wrong, as a
    RuntimeError."""
    mha = nn.MultiheadAttention(8, 2)
    ours = MultiheadGraphAttention.from_torch(mha)
    q, k = torch.randn(5, 3, 8), torch.randn(5, 2, 8)
    with pytest.raises(RuntimeError):
        mha(q, k, k)
    with pytest.raises(
        RuntimeError,
        match=r"query shape torch.Size\(\[5, 3, 8\]\) and key shape "
        r"torch.Size\(\[5, 2, 8\]\) have different batch sizes",
    ) as e:
        ours(q, k, k)
    assert isinstance(e.value, ValueError)


def test_float16_in_proj_bias_on_a_float64_module():
    """A bias of another dtype is added with type promotion (torch's result where its
    path accepts it, batch_first here; its contiguous-input path fails in addmm)."""
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    mha.in_proj_bias = nn.Parameter(mha.in_proj_bias.detach().half())
    ours = MultiheadGraphAttention.from_torch(mha).eval()
    assert ours.in_proj_bias.dtype == torch.float16
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    ref, ref_w = mha(x, x, x)
    out, w = ours(x, x, x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(w, ref_w, atol=1e-10, rtol=1e-10)
    y = torch.randn(5, 3, 8, dtype=torch.float64)  # and the layout where torch's own path fails in addmm
    expected = ours(y.transpose(0, 1), y.transpose(0, 1), y.transpose(0, 1))[0].transpose(0, 1)
    ours.batch_first = False
    torch.testing.assert_close(ours(y, y, y)[0], expected)


@pytest.mark.parametrize("groups", ["one group", "groups of 2 tiles"])
@pytest.mark.parametrize(
    "lengths,left,right", [([300], 70, 0), ([130], 200, 200), ([97, 97, 97], 40, 31), ([1000], 128, 128)]
)
def test_wide_windows_run_in_dense_tiles_equal_to_the_sparse_kernel(lengths, left, right, groups, monkeypatch):
    """A sliding window of >= 64 keys per query runs tile by tile through SDPA (one tile
    of queries against the run of keys it can reach), in groups of tiles that bound the
    memory; outputs and every gradient equal the reference's in float64, ragged last
    tile, ragged last group and clipped edges included."""
    from graphattn.ops import dense

    if groups != "one group":  # a group holds B * W * H * D elements per tile
        B, W = len(lengths), dense.BAND_TILE + min(left, lengths[0] - 1) + min(right, lengths[0] - 1)
        monkeypatch.setattr(dense, "BAND_GROUP_ELEMENTS", 2 * B * W * 3 * 8)
    torch.manual_seed(0)
    g = (
        patterns.batch(lengths, patterns.sliding_window, left=left, right=right)
        if len(lengths) > 1
        else patterns.sliding_window(lengths[0], left, right)
    )
    N = sum(lengths)
    q, k, v = (torch.randn(N, 3, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(N, 3, 8, dtype=torch.float64)
    grads = {}
    for backend in (None, "reference"):
        out = ops.dot_product_attention(q, k, v, g, backend=backend)
        if backend is None:
            assert ops.last_backend("dot_product") == "dense"
        grads[backend] = (out,) + torch.autograd.grad((out * w).sum(), (q, k, v))
    for ours, ref in zip(grads[None], grads["reference"]):
        torch.testing.assert_close(ours, ref)


def test_narrow_windows_stay_on_the_sparse_kernel_and_say_why():
    g = patterns.sliding_window(200, 8, 8)
    q = torch.randn(200, 2, 4)
    ops.dot_product_attention(q, q, q, g)
    assert ops.last_backend("dot_product") != "dense"
    assert "fewer than 64 keys" in ops.why_not("dot_product")["dense"]


# ------------------------------------------------ the pattern-graph cache never serves a stale graph
def _mha_on(pattern):
    torch.manual_seed(0)
    return MultiheadGraphAttention(E, H, batch_first=True, pattern=pattern).eval()


def _reference_out(layer, x, graph):
    """What the layer must give: the same projections over ``graph`` (one sequence) on the reference backend."""
    q, k, v = layer._projections(x, x, x)
    D = layer.head_dim
    out = ops.dot_product_attention(
        q[0].view(-1, H, D), k[0].view(-1, H, D), v[0].view(-1, H, D), graph, scale=D**-0.5, backend="reference"
    )
    return layer.out_proj(out.reshape(1, -1, E))


@pytest.mark.parametrize("edit", ["col_in_place", "arrays_rebuilt", "claim_outlived"])
def test_pattern_graph_cache_follows_edits(edit):
    """Also: a complete pattern edited to other edges of the same count is no longer
    complete (its recorded claim would send it to SDPA over every key)."""
    L = 8
    g = patterns.complete(L) if edit == "claim_outlived" else patterns.sliding_window(L, 1, 1)
    layer = _mha_on(g)
    x = torch.randn(1, L, E)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, x, x, need_weights=False)[0], _reference_out(layer, x, g), **TOL)
        if edit == "col_in_place":
            g.col.copy_((g.col + 2) % L)  # every query now reads other keys
        elif edit == "claim_outlived":
            g.col.copy_(g.row)  # L copies of the self edge: as many edges as complete
        elif edit == "arrays_rebuilt":
            other = patterns.causal(L)
            g.rowptr, g.col, g.row = other.rowptr.clone(), other.col.clone(), other.row.clone()
        got = layer(x, x, x, need_weights=False)[0]
        torch.testing.assert_close(got, _reference_out(layer, x, g), **TOL)
        if edit == "claim_outlived":
            assert g.pattern is None
            torch.testing.assert_close(
                ops.dot_product_attention(x.view(L, H, -1), x.view(L, H, -1), x.view(L, H, -1), g),
                x.view(L, H, -1),
                **TOL,
            )


def test_pattern_graph_cache_is_not_fooled_by_a_reused_id():
    """The old Graph freed and a new one (other edges) made at its address, as CPython
    does most times: the same ``id``, which the cache once took for the same graph."""
    import copy

    L, x = 8, torch.randn(1, 8, E)
    layer, other = _mha_on(None), patterns.causal(L)
    for _ in range(50):
        layer.pattern = patterns.sliding_window(L, 1, 1)
        old_id = id(layer.pattern)
        with torch.no_grad():
            layer(x, x, x, need_weights=False)
            layer.pattern = None  # the old Graph is freed here: nothing else holds it
            layer.pattern = copy.copy(other)  # allocated first thing: usually at the freed address
            if id(layer.pattern) == old_id:
                got = layer(x, x, x, need_weights=False)[0]
                torch.testing.assert_close(got, _reference_out(layer, x, layer.pattern), **TOL)
                return
    pytest.fail("CPython never reused the freed Graph's address: the case was not exercised")


def test_copies_of_a_layer_with_a_cache():
    """deepcopy (nn.TransformerEncoder clones its layer so) and pickle of a layer that
    has built and cached its graph: the copy starts with an empty cache of its own."""
    import copy
    import pickle
    from graphattn.nn import GATConv

    layer = _mha_on(patterns.causal(6))
    x = torch.randn(1, 6, E)
    want = layer(x, x, x)[0]
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        torch.testing.assert_close(clone(x, x, x)[0], want, **TOL)
    conv, ei = GATConv(4, 4), torch.tensor([[0, 1, 2], [1, 2, 0]])
    h = torch.randn(3, 4)
    want = conv(h, ei)
    for clone in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        torch.testing.assert_close(clone(h, ei), want, **TOL)


# ------------------------------------------------ NestedTensor inputs: torch's fast path, as torch answers
def _nested_pair(**kw):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True, **kw).eval()
    return mha, MultiheadGraphAttention.from_torch(mha).eval()


def _nested(lengths, **kw):
    gen = torch.Generator().manual_seed(1)
    return torch.nested.nested_tensor([torch.randn(n, E, generator=gen, **kw) for n in lengths])


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("lengths", [(3, 5, 1), (4,), (0, 2)])
def test_nested_inputs_answer_as_torch(lengths, need_weights, average):
    mha, ours = _nested_pair()
    nt = _nested(lengths)
    with torch.no_grad():
        out_t, w_t = mha(nt, nt, nt, need_weights=need_weights, average_attn_weights=average)
        out_o, w_o = ours(nt, nt, nt, need_weights=need_weights, average_attn_weights=average)
    assert out_o.is_nested and out_o.layout == out_t.layout
    for a, b in zip(out_o.unbind(), out_t.unbind()):
        torch.testing.assert_close(a, b, **TOL)
    if w_t is None:
        assert w_o is None
    else:
        torch.testing.assert_close(w_o, w_t, **TOL)


def _refusals():
    """(name, module arguments, call) for the cases torch's module refuses a nested input."""
    nt = _nested((3, 2))
    kpm = torch.zeros(2, 3, dtype=torch.bool)
    jagged = torch.nested.nested_tensor([torch.randn(3, E), torch.randn(2, E)], layout=torch.jagged)
    return [
        ("training", dict(), lambda m: (m.train(), m(nt, nt, nt))),
        ("grad", dict(), lambda m: m(nt, nt, nt)),
        ("non_self", dict(), lambda m: m(nt, nt.clone(), nt.clone())),
        ("mask", dict(), lambda m: m(nt, nt, nt, key_padding_mask=kpm)),
        ("odd_heads", dict(num_heads=1), lambda m: m(nt, nt, nt)),
        ("not_batch_first", dict(batch_first=False), lambda m: m(nt, nt, nt)),
        ("bias_kv", dict(add_bias_kv=True), lambda m: m(nt, nt, nt)),
        ("zero_attn", dict(add_zero_attn=True), lambda m: m(nt, nt, nt)),
        ("kdim", dict(kdim=4, vdim=4), lambda m: m(nt, nt, nt)),
        ("dtype", dict(), lambda m: m(*(_nested((3, 2), dtype=torch.float64),) * 3)),
        ("jagged", dict(), lambda m: m(jagged, jagged, jagged)),
    ]


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
@pytest.mark.parametrize("case", range(11), ids=lambda i: _refusals()[i][0])
def test_nested_inputs_refused_where_torch_refuses(case):
    name, kw, call = _refusals()[case]
    torch.manual_seed(0)
    args = dict(num_heads=H, batch_first=True)
    args.update(kw)
    mha = nn.MultiheadAttention(E, args.pop("num_heads"), **args).eval()
    ours = MultiheadGraphAttention.from_torch(mha).eval()
    with torch.set_grad_enabled(name == "grad"):
        with pytest.raises(AssertionError) as theirs:
            call(mha)
        with pytest.raises(ValueError) as mine:
            call(ours)
    assert isinstance(mine.value, AssertionError)
    reason = str(theirs.value).split("because")[1].split()[:3]  # torch's reason, in its words
    assert " ".join(reason) in " ".join(str(mine.value).split()), (str(mine.value), str(theirs.value))
    assert "patterns.batch" in str(mine.value) and "attend_packed" in str(mine.value)  # the alternative


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
@pytest.mark.parametrize("pattern", ["causal", lambda Lq, Lk: patterns.sliding_window(Lq, 1, 0)])
def test_nested_inputs_take_the_modules_pattern_per_sequence(pattern):
    mha, _ = _nested_pair()
    ours = MultiheadGraphAttention.from_torch(mha, pattern=pattern).eval()
    nt = _nested((4, 2, 5))
    with torch.no_grad():
        out, w = ours(nt, nt, nt, need_weights=True)
        for b, x in enumerate(nt.unbind()):
            o1, w1 = ours(x[None], x[None], x[None], need_weights=True)
            torch.testing.assert_close(out.unbind()[b], o1[0], **TOL)
            torch.testing.assert_close(w[b, : x.size(0), : x.size(0)], w1[0], **TOL)
    with torch.no_grad(), pytest.raises(ValueError, match="fixed pattern Graph"):
        MultiheadGraphAttention.from_torch(mha, pattern=patterns.causal(4)).eval()(nt, nt, nt)
