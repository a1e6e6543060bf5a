"""NaN and inf on the dense routes, and non-finite upstream gradients on the CPU kernel.

SDPA and flex compute the masked pairs of a block or tile and drop them afterwards, so a
NaN or inf in one token reached queries that never attend to it (0 x NaN in the weighted
sum of values, NaN + (-inf) in an additive mask, and the same products in backward): with
``is_causal`` a NaN in the last value made every position NaN, in a band tile the whole
tile. And the CPU kernel's backward formed the softmax's row term as <d_out, out>, which
is +-inf where the reference's sum over edges is NaN once d_out holds an inf. Every case
here compares outputs and every input gradient with ``reference``, NaN and inf in the
same places, and asserts the route that ran."""

import math

import pytest
import torch

from graphattn import Graph, ops, patterns
from graphattn.ops import cpu as cpu_backend
from graphattn.ops import dense

from conftest import random_graph

needs_cpu = pytest.mark.skipif(not cpu_backend.is_available(), reason="fused CPU kernel not built here")
SPECIALS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
H, D = 2, 8
F64 = torch.float64

# one graph per dense route: (graph, the route dense.route() must name)
ROUTE_GRAPHS = {
    "causal": lambda: (patterns.causal(32), "sdpa"),
    "complete": lambda: (patterns.complete(16), "sdpa"),
    "cross": lambda: (patterns.cross(12, 16), "sdpa"),
    "causal_batch": lambda: (patterns.batch([16, 16, 16], patterns.causal), "sdpa"),
    "band": lambda: (patterns.sliding_window(200, 40, 40), "band"),  # 4 tiles, the last one padded
    "grouped": lambda: (patterns.complete_per_graph(torch.tensor([0] * 70 + [1] * 100), 170), "grouped"),
}


def _inputs(g: Graph):
    gen = torch.Generator().manual_seed(1)
    return {
        name: torch.randn(n, H, D, generator=gen, dtype=F64)
        for name, n in (("q", g.num_dst), ("k", g.num_src), ("v", g.num_src), ("grad", g.num_dst))
    }


def _run(g: Graph, t: dict, backend: str):
    leaves = [t[n].clone().requires_grad_(True) for n in "qkv"]
    out = ops.dot_product_attention(*leaves, g, backend=backend)
    ran = ops.last_backend("dot_product")
    out.backward(t["grad"])
    return ran, [out.detach()] + [x.grad for x in leaves]


def _assert_same(got, ref, what):
    for name, a, b in zip(("out", "d_query", "d_key", "d_value"), got, ref):
        torch.testing.assert_close(a, b, equal_nan=True, msg=lambda m: f"{what}: {name}: {m}")


@pytest.mark.parametrize("route", sorted(ROUTE_GRAPHS))
@pytest.mark.parametrize("special", sorted(SPECIALS))
@pytest.mark.parametrize("where", ["q", "k", "v", "grad"])
def test_one_nonfinite_token_on_a_dense_route_is_where_the_reference_has_it(route, special, where):
    g, expected_route = ROUTE_GRAPHS[route]()
    assert dense.route(g) == expected_route
    n = g.num_dst if where in ("q", "grad") else g.num_src
    for token in (0, n // 2 + 3, n - 1):  # the causal ends differ: key 0 is seen by all, key n-1 by one
        t = _inputs(g)
        t[where][token, 1, 2] = SPECIALS[special]
        ran, got = _run(g, t, None)
        assert ran == "dense", ops.why_not("dot_product")
        _assert_same(got, _run(g, t, "reference")[1], f"{route}, {special} in {where}[{token}]")


@pytest.mark.parametrize("special", sorted(SPECIALS))
def test_the_last_value_of_a_causal_sequence_reaches_only_the_last_query(special):
    """The issue's example, spelled out: only the last position sees the last token."""
    g = patterns.causal(32)
    t = _inputs(g)
    t["v"][31, 0, 0] = SPECIALS[special]
    with torch.no_grad():
        out = ops.dot_product_attention(t["q"], t["k"], t["v"], g)
    assert ops.last_backend("dot_product") == "dense"
    assert torch.isfinite(out[:31]).all() and not torch.isfinite(out[31, 0, 0])


def test_a_nan_in_a_band_tile_stays_in_the_windows_that_reach_it():
    g = patterns.sliding_window(200, 40, 40)
    t = _inputs(g)
    t["k"][150, 0, 0] = math.nan
    with torch.no_grad():
        out = ops.dot_product_attention(t["q"], t["k"], t["v"], g)
    assert ops.last_backend("dot_product") == "dense" and dense.route(g) == "band"
    nan_rows = torch.isnan(out[:, 0]).any(-1).nonzero().flatten()
    assert nan_rows.tolist() == list(range(110, 191)), nan_rows  # |i - 150| <= 40, head 0 only
    assert not torch.isnan(out[:, 1]).any()


@pytest.mark.parametrize("special", sorted(SPECIALS))
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_flex_forward_keeps_a_nonfinite_token_to_its_window(special, where):
    pytest.importorskip("torch.nn.attention.flex_attention")
    for g in (patterns.causal(32), patterns.sliding_window(200, 40, 40), patterns.complete(16)):
        t = _inputs(g)
        t[where][g.num_src - 1 if where != "q" else 5, 1, 2] = SPECIALS[special]
        with torch.no_grad():
            got = ops.dot_product_attention(t["q"], t["k"], t["v"], g, backend="flex")
            ref = ops.dot_product_attention(t["q"], t["k"], t["v"], g, backend="reference")
        assert ops.last_backend("dot_product") == "reference"
        torch.testing.assert_close(got, ref, equal_nan=True)


def test_finite_calls_stay_on_the_dense_route_and_only_nonfinite_ones_leave_it(monkeypatch):
    """The exact path is the exception: a finite call and its finite backward never
    touch it; a NaN in the inputs, or in the upstream gradient alone, takes it."""
    calls = []
    sparse = dense._sparse_route
    monkeypatch.setattr(dense, "_sparse_route", lambda *a, **kw: calls.append(1) or sparse(*a, **kw))
    g = patterns.sliding_window(200, 40, 40)
    t = _inputs(g)
    _run(g, t, None)
    assert calls == []
    t["grad"][3, 0, 0] = math.nan
    _run(g, t, None)
    assert calls == [1]  # the backward's exact gradients
    t["k"][3, 0, 0] = math.nan
    _run(g, t, None)
    assert calls == [1, 1]  # the forward itself


def test_exact_gradients_only_for_the_inputs_that_want_them_and_the_output_stays_writable():
    g = patterns.sliding_window(200, 40, 40)
    t = _inputs(g)
    t["grad"][0, 1, 1] = math.inf
    q, k = t["q"], t["k"]
    v = t["v"].clone().requires_grad_(True)
    out = ops.dot_product_attention(q, k, v, g)
    assert ops.last_backend("dot_product") == "dense"
    out.mul_(2.0)  # the band's output is still an ordinary tensor, not a view of a custom Function's
    out.backward(t["grad"])
    v_ref = t["v"].clone().requires_grad_(True)
    (ops.dot_product_attention(q, k, v_ref, g, backend="reference") * 2.0).backward(t["grad"])
    torch.testing.assert_close(v.grad, v_ref.grad, equal_nan=True)


@pytest.mark.parametrize("special", ["nan", "inf"])
def test_a_nonfinite_gradient_under_dropout_on_a_dense_route_is_said_not_hidden(special):
    """With dropout the sparse kernel cannot redraw SDPA's mask, so the exact backward is
    unavailable: the route warns (once per backward that meets the value), and a finite
    backward with dropout does not."""
    g = patterns.sliding_window(200, 40, 40)
    t = _inputs(g)
    q = t["q"].clone().requires_grad_(True)
    out = ops.dot_product_attention(q, t["k"], t["v"], g, dropout=0.1, training=True)
    assert ops.last_backend("dot_product") == "dense"
    with pytest.warns(RuntimeWarning, match="dropout mask cannot be redrawn"):
        out.backward(t["grad"].index_fill(0, torch.tensor([3]), SPECIALS[special]))
    out = ops.dot_product_attention(q, t["k"], t["v"], g, dropout=0.1, training=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out.backward(t["grad"])


# ------------------------------------------------------ CPU kernel, non-finite upstream gradient
def _grads(fn, inputs, grad):
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach()] + [x.grad for x in leaves]


def _kernel_cases(g: Graph, N: int, E: int):
    gen = torch.Generator().manual_seed(2)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    C = 4
    return {
        "gat": (
            lambda b: lambda s, d, v, es: ops.gat_attention(s, d, v, g, edge_score=es, backend=b),
            [r(N, H), r(N, H), r(N, H, C), r(E, H)],
        ),
        "gatv2": (
            lambda b: lambda xs, xd, att, ef: ops.gatv2_attention(xs, xd, att, g, edge_feat=ef, backend=b),
            [r(N, H, C), r(N, H, C), r(H, C), r(E, H, C)],
        ),
        "dot_product": (
            lambda b: (
                lambda q, k, v, ek, ev, eb: ops.dot_product_attention(
                    q, k, v, g, edge_key=ek, edge_value=ev, edge_bias=eb, backend=b
                )
            ),
            [r(N, H, C), r(N, H, C), r(N, H, C), r(E, H, C), r(E, H, C), r(E, H)],
        ),
    }


@needs_cpu
@pytest.mark.parametrize("op", ["gat", "gatv2", "dot_product"])
@pytest.mark.parametrize("special", sorted(SPECIALS))
def test_cpu_backward_of_a_nonfinite_upstream_gradient_matches_the_reference(op, special):
    N = 10
    g = Graph.from_edge_index(random_graph(N, N, 40, seed=1), N)
    make, inputs = _kernel_cases(g, N, g.num_edges)[op]
    for node in range(N):  # every destination: rows of one sign of v's channel and rows of both
        grad = torch.randn(N, H, 4, generator=torch.Generator().manual_seed(node), dtype=F64)
        grad[node, 0, 1] = SPECIALS[special]
        got = _grads(make(None), inputs, grad)
        assert ops.last_backend(op) == "cpu"
        ref = _grads(make("reference"), inputs, grad)
        for i, (a, b) in enumerate(zip(got, ref)):
            torch.testing.assert_close(a, b, equal_nan=True, msg=lambda m: f"{op}, output/grad {i}, node {node}: {m}")
