import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from graphattn import Graph, dot_product_attention, gat_attention, gatv2_attention
from graphattn import ops
import graphattn.ops.reference  # noqa: F401
from graphattn.ops import cpu as cpu_backend
from graphattn.ops._fused import ACTIVATIONS

from conftest import backend_params, default_cpu_backend, needs_backend, random_graph
from oracle import dot_oracle, gat_oracle, gatv2_oracle


def _inputs(ns, nd, E, H, C, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, ns, (E,), generator=gen)
    dst = torch.randint(0, nd, (E,), generator=gen)
    ei = torch.stack([src, dst])
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    return ei, r


@pytest.fixture(params=backend_params("reference", "cpu"))  # a backend that cannot run here skips, saying why
def backend(request):
    return request.param


graphs = st.tuples(
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(0, 30),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(0, 10_000),
    st.booleans(),
)


@given(params=graphs)
def test_gat_matches_oracle(params, backend):
    ns, nd, E, H, C, seed, with_edge = params
    ei, r = _inputs(ns, nd, E, H, C, seed)
    ss, sd, v = r(ns, H), r(nd, H), r(ns, H, C)
    es = r(E, H) if with_edge else None
    g = Graph.from_edge_index(ei, (ns, nd))
    out, alpha = gat_attention(ss, sd, v, g, negative_slope=0.1, edge_score=es, return_weights=True, backend=backend)
    ref_out, ref_alpha = gat_oracle(ss, sd, v, ei, nd, 0.1, es)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(alpha, ref_alpha)


@given(params=graphs)
def test_gatv2_matches_oracle(params, backend):
    ns, nd, E, H, C, seed, with_edge = params
    ei, r = _inputs(ns, nd, E, H, C, seed)
    xs, xd, att = r(ns, H, C), r(nd, H, C), r(H, C)
    ef = r(E, H, C) if with_edge else None
    value = r(ns, H, C + 1)
    g = Graph.from_edge_index(ei, (ns, nd))
    out, alpha = gatv2_attention(xs, xd, att, g, value=value, edge_feat=ef, return_weights=True, backend=backend)
    ref_out, ref_alpha = gatv2_oracle(xs, xd, att, ei, nd, 0.2, ef, value)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(alpha, ref_alpha)


@given(params=graphs)
def test_dot_product_matches_oracle(params, backend):
    ns, nd, E, H, C, seed, with_edge = params
    ei, r = _inputs(ns, nd, E, H, C, seed)
    q, k, v = r(nd, H, C), r(ns, H, C), r(ns, H, C + 2)
    ek = r(E, H, C) if with_edge else None
    ev = r(E, H, C + 2) if with_edge else None
    eb = r(E, H) if with_edge else None
    g = Graph.from_edge_index(ei, (ns, nd))
    out, alpha = dot_product_attention(
        q, k, v, g, edge_key=ek, edge_value=ev, edge_bias=eb, return_weights=True, backend=backend
    )
    ref_out, ref_alpha = dot_oracle(q, k, v, ei, nd, 1 / math.sqrt(C), ek, ev, eb)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(alpha, ref_alpha)


def test_nodes_without_in_edges_give_zero_and_masked_edges_get_zero_weight(backend):
    ei = torch.tensor([[0, 1, 2, 0], [1, 1, 1, 2]])
    q, k, v = torch.randn(4, 2, 3), torch.randn(3, 2, 3), torch.randn(3, 2, 3)
    bias = torch.zeros(4, 2)
    bias[3] = float("-inf")  # node 2's only edge is masked
    out, alpha = dot_product_attention(
        q, k, v, Graph.from_edge_index(ei, (3, 4)), edge_bias=bias, return_weights=True, backend=backend
    )
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(2, 3)) and torch.equal(out[3], torch.zeros(2, 3))
    assert torch.equal(out[2], torch.zeros(2, 3)) and torch.equal(alpha[3], torch.zeros(2))


def test_empty_graph(backend):
    g = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), 4)
    out, alpha = gat_attention(
        torch.randn(4, 2), torch.randn(4, 2), torch.randn(4, 2, 3), g, return_weights=True, backend=backend
    )
    assert torch.equal(out, torch.zeros(4, 2, 3)) and alpha.shape == (0, 2)


def test_gradcheck_all_ops_float64(backend):
    ei = random_graph(6, 6, 20, seed=1)
    g = Graph.from_edge_index(ei, 6)
    E, H, C = g.num_edges, 2, 3
    d = dict(dtype=torch.float64, requires_grad=True)
    ss, sd, v, es = torch.randn(6, H, **d), torch.randn(6, H, **d), torch.randn(6, H, C, **d), torch.randn(E, H, **d)
    assert torch.autograd.gradcheck(
        lambda a, b, c, e: gat_attention(a, b, c, g, edge_score=e, backend=backend), (ss, sd, v, es)
    )
    xs, xd, att, ef = (
        torch.randn(6, H, C, **d),
        torch.randn(6, H, C, **d),
        torch.randn(H, C, **d),
        torch.randn(E, H, C, **d),
    )
    assert torch.autograd.gradcheck(
        lambda a, b, c, e: gatv2_attention(a, b, c, g, edge_feat=e, backend=backend), (xs, xd, att, ef)
    )
    q, k, eb = torch.randn(6, H, C, **d), torch.randn(6, H, C, **d), torch.randn(E, H, **d)
    ek, ev = torch.randn(E, H, C, **d), torch.randn(E, H, C, **d)
    assert torch.autograd.gradcheck(
        lambda a, b, c, x, y, z: dot_product_attention(
            a, b, c, g, edge_key=x, edge_value=y, edge_bias=z, backend=backend
        ),
        (q, k, v, ek, ev, eb),
    )


def test_weights_are_returned_before_dropout_and_dropout_only_in_training(backend):
    ei = random_graph(20, 20, 120)
    g = Graph.from_edge_index(ei, 20)
    ss, sd, v = torch.randn(20, 2), torch.randn(20, 2), torch.randn(20, 2, 4)
    clean, a0 = gat_attention(ss, sd, v, g, return_weights=True, backend=backend)
    torch.manual_seed(1)
    dropped, a1 = gat_attention(ss, sd, v, g, dropout=0.5, training=True, return_weights=True, backend=backend)
    torch.testing.assert_close(a0, a1)
    assert not torch.allclose(clean, dropped)
    torch.manual_seed(1)
    again = gat_attention(ss, sd, v, g, dropout=0.5, training=True, backend=backend)
    torch.testing.assert_close(again, dropped)  # the mask follows torch's seed
    evald = gat_attention(ss, sd, v, g, dropout=0.5, training=False, backend=backend)
    torch.testing.assert_close(evald, clean)
    # dropout is unbiased: averaged over many masks it approaches the clean output
    mean = sum(gat_attention(ss, sd, v, g, dropout=0.5, backend=backend) for _ in range(400)) / 400
    torch.testing.assert_close(mean, clean, atol=0.15, rtol=0)


def test_edge_index_accepted_in_place_of_graph():
    ei = random_graph(10, 10, 40)
    ss, sd, v = torch.randn(10, 2), torch.randn(10, 2), torch.randn(10, 2, 3)
    torch.testing.assert_close(gat_attention(ss, sd, v, ei), gat_attention(ss, sd, v, Graph.from_edge_index(ei, 10)))


def test_dispatcher_force_and_report():
    ei = random_graph(10, 10, 40)
    args = (torch.randn(10, 2), torch.randn(10, 2), torch.randn(10, 2, 3), ei)
    gat_attention(*args)
    assert ops.last_backend("gat") == default_cpu_backend()  # the fused CPU kernel wins on CPU when built
    with ops.use_backend("reference"):
        gat_attention(*args)
    assert ops.last_backend("gat") == "reference"
    assert "reference" in ops.available_backends("gat")
    with pytest.raises(ValueError, match="unknown backend"):
        with ops.use_backend("nope"):
            pass
    with pytest.raises(ValueError, match="no backend 'nope'"):
        gat_attention(*args, backend="nope")


def test_every_op_describes_its_call_the_same_way_and_explain_dispatch_agrees():
    """Every attention op hands each backend the same call description (weights wanted,
    edge terms, mask, dropout, heads, channels, dtype, device); explain_dispatch gives
    each backend's answer for a described call without running it."""
    seen = {}

    def spy(op):
        def decline(**call):
            seen[op] = call
            return "spying only"

        return decline

    for op in ("gat", "gatv2", "dot_product"):
        ops.register_backend(op, "test-spy", lambda *a, **k: None, decline=spy(op), priority=1000)
    try:
        g = Graph.from_edge_index(random_graph(6, 6, 20), 6)
        x, s = torch.randn(6, 2, 3), torch.randn(6, 2)
        gat_attention(s, s, x, g, return_weights=True)
        gatv2_attention(x, x, torch.randn(2, 3), g, dropout=0.5, training=True)
        dot_product_attention(x, x, x, g, edge_bias=torch.randn(g.num_edges, 2))
        keys = {
            "device",
            "dtype",
            "graph",
            "dropout",
            "need_weights",
            "has_edge_terms",
            "has_edge_mask",
            "heads",
            "channels",
            "forced",
            "op",
        }
        assert all(set(call) == keys for call in seen.values()), {op: set(c) ^ keys for op, c in seen.items()}
        assert seen["gat"]["need_weights"] and not seen["gat"]["has_edge_terms"]
        assert seen["gatv2"]["dropout"] == 0.5 and seen["gatv2"]["channels"] == 3
        assert seen["dot_product"]["has_edge_terms"] and seen["dot_product"]["heads"] == 2
        assert ops.why_not("gat")["test-spy"] == "spying only"
    finally:
        for op in ("gat", "gatv2", "dot_product"):
            del ops._dispatch._REGISTRY[op]["test-spy"]
    call = dict(
        device=torch.device("cpu"),
        dtype=torch.float32,
        graph=g,
        dropout=0.0,
        need_weights=False,
        has_edge_terms=False,
        has_edge_mask=True,
        heads=2,
        channels=3,
    )
    answers = ops.explain_dispatch("gat", **call)
    assert list(answers) == ops.available_backends("gat")
    assert answers["reference"] is None and "mask" in answers["cpu"]
    assert ops.explain_dispatch("gat", **{**call, "has_edge_mask": False})[default_cpu_backend()] is None
    with pytest.raises(ValueError, match="unknown op"):
        ops.explain_dispatch("nope", **call)


def test_registered_backend_is_selected_by_priority_and_support():
    calls = []

    def fake(*a, **k):
        calls.append(1)
        return ops.reference.FUNCTIONS["gat"](*a, **k)

    ops.register_backend(
        "gat", "test-fake", fake, supports=lambda dtype=None, **_: dtype == torch.float64, priority=100
    )
    try:
        ei = random_graph(8, 8, 20)
        args32 = (torch.randn(8, 2), torch.randn(8, 2), torch.randn(8, 2, 3), ei)
        gat_attention(*args32)
        assert ops.last_backend("gat") == default_cpu_backend() and not calls
        gat_attention(*(a.double() if a.is_floating_point() else a for a in args32))
        assert ops.last_backend("gat") == "test-fake" and calls
        with pytest.raises(RuntimeError, match="cannot run"):
            gat_attention(*args32, backend="test-fake")
    finally:
        del ops._dispatch._REGISTRY["gat"]["test-fake"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_fp32(dtype, backend):
    ei = random_graph(30, 30, 150)
    g = Graph.from_edge_index(ei, 30)
    q, k, v = torch.randn(30, 2, 8), torch.randn(30, 2, 8), torch.randn(30, 2, 8)
    ref = dot_product_attention(q, k, v, g, backend=backend)
    out = dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), g, backend=backend)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda g: gat_attention(torch.randn(5, 2), None, torch.randn(5, 3, 4), g),
            ValueError,
            r"score_src must have shape \[5, 3\]",
        ),
        (
            lambda g: gat_attention(torch.randn(5, 2), torch.randn(4, 2), torch.randn(5, 2, 4), g),
            ValueError,
            "destination-node rows",
        ),
        (
            lambda g: gat_attention(torch.randn(5, 2).double(), None, torch.randn(5, 2, 4), g),
            TypeError,
            "dtype torch.float64",
        ),
        (lambda g: gat_attention(torch.randn(5, 2), None, torch.randn(5, 2), g), ValueError, "value must have shape"),
        (
            lambda g: gat_attention(torch.randn(5, 2), None, torch.randn(5, 2, 3), g, edge_score=torch.randn(2, 2)),
            ValueError,
            "edge_score",
        ),
        (
            lambda g: dot_product_attention(torch.randn(5, 2, 3), torch.randn(5, 2, 4), torch.randn(5, 2, 3), g),
            ValueError,
            "key must have shape",
        ),
        (
            lambda g: dot_product_attention(torch.randn(5, 2, 3), torch.randn(5, 2, 3), torch.randn(5, 2, 3).long(), g),
            TypeError,
            "floating-point",
        ),
        (
            lambda g: gatv2_attention(torch.randn(5, 2, 3), torch.randn(5, 2, 3), torch.randn(3, 3), g),
            ValueError,
            r"att must have shape \[2, 3\]",
        ),
        (
            lambda g: gat_attention(torch.randn(5, 2), None, torch.randn(5, 2, 3), "edges"),
            TypeError,
            "Graph or an edge_index",
        ),
    ],
)
def test_bad_input(call, exc, match):
    g = Graph.from_edge_index(random_graph(5, 5, 12), 5)
    with pytest.raises(exc, match=match):
        call(g)


@needs_backend("cpu")
def test_fused_dropout_gradient_matches_autograd_of_the_same_mask():
    """With a fixed seed the fused kernel's dropout mask is a function of
    (seed, edge, head), so its analytic backward is checkable by gradcheck."""
    g = Graph.from_edge_index(random_graph(8, 8, 30, seed=4), 8)
    d = dict(dtype=torch.float64, requires_grad=True)
    q, k, v = torch.randn(8, 2, 3, **d), torch.randn(8, 2, 3, **d), torch.randn(8, 2, 3, **d)
    empty = torch.empty(0, dtype=torch.float64)
    seed = torch.tensor(1234)
    t = g.transpose_csr()

    def f(q, k, v):
        return cpu_backend._forward_op(
            cpu_backend.DOT, g.rowptr, g.col, *t, g.num_dst, q, k, v, empty, empty, empty, empty, 0.0, 0.5, 0.4, seed
        )[0]

    out = f(q, k, v)
    assert torch.autograd.gradcheck(f, (q, k, v))
    t = tuple(x.long() for x in g.transpose_csr())  # the int64 transposed graph of a graph past 2^31 edges
    assert torch.autograd.gradcheck(f, (q, k, v))
    full = cpu_backend._forward_op(
        cpu_backend.DOT, g.rowptr, g.col, *t, g.num_dst, q, k, v, empty, empty, empty, empty, 0.0, 0.5, 0.0, seed
    )[0]
    assert not torch.allclose(out, full)


@needs_backend("cpu")
@pytest.mark.parametrize("kind", ["GAT", "GATV2", "DOT"])
def test_int64_and_int32_transposed_graphs_give_the_same_gradients(kind):
    """The backward is compiled for both index types of the transposed graph (int32
    where the graph allows, int64 past 2^31 edges); every kind gets the same
    gradients from both."""
    g = Graph.from_edge_index(random_graph(9, 9, 40, seed=5), 9)
    code, gen = getattr(cpu_backend, kind), torch.Generator().manual_seed(0)
    H, F = 2, 3
    term = (H,) if kind == "GAT" else (H, F)
    inputs = [torch.randn(9, *term, generator=gen, dtype=torch.float64) for _ in range(2)]  # dst, src
    inputs += [
        torch.randn(9, H, 4, generator=gen, dtype=torch.float64),  # value
        torch.randn(H, F, generator=gen, dtype=torch.float64) if kind == "GATV2" else torch.empty(0),
    ]
    empty, seed = torch.empty(0, dtype=torch.float64), torch.tensor(7)
    t32 = g.transpose_csr()
    assert t32[0].dtype == torch.int32
    grads = []
    for t in (t32, tuple(x.long() for x in t32)):
        xs = [x.detach().clone().requires_grad_(x.numel() > 0) for x in inputs]
        out = cpu_backend._forward_op(
            code, g.rowptr, g.col, *t, g.num_dst, xs[0], xs[1], xs[2], empty, empty, empty, xs[3], 0.2, 0.5, 0.3, seed
        )[0]
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        grads.append([x.grad for x in xs if x.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ------------------------------------------------------------ score kinds: one table, generated into both kernels
def test_generated_kernel_sources_match_the_kind_table():
    from graphattn.ops import _codegen

    assert _codegen.main(["--check"]) == 0, "run: python -m graphattn.ops._codegen"


@pytest.mark.parametrize("activation", [a.name for a in ACTIVATIONS])
def test_each_activations_derivative_is_the_derivative_of_its_value(activation):
    """The table's two expressions for an activation agree: the derivative written in
    the table equals autograd's derivative of the value written there (both kernels
    are generated from these strings)."""
    act = next(a for a in ACTIVATIONS if a.name == activation)
    z = torch.cat([torch.linspace(-3, 3, 61, dtype=torch.float64), torch.tensor([-1e-3, 1e-3, 7.5])])
    z = z[z != 0].requires_grad_()  # a kink's derivative is a convention
    slope = torch.tensor(0.2, dtype=torch.float64)
    env = {
        "where": lambda c, a, b: torch.where(c, torch.as_tensor(a, dtype=z.dtype), torch.as_tensor(b, dtype=z.dtype)),
        "max": lambda a, b: torch.maximum(torch.as_tensor(a, dtype=z.dtype), torch.as_tensor(b, dtype=z.dtype)),
        "min": lambda a, b: torch.minimum(torch.as_tensor(a, dtype=z.dtype), torch.as_tensor(b, dtype=z.dtype)),
    }
    value = eval(act.value, env, {"z": z, "slope": slope}) + torch.zeros_like(z)
    (autograd_derivative,) = torch.autograd.grad(value.sum(), z)
    written = eval(act.derivative, env, {"z": z.detach(), "slope": slope}) + torch.zeros_like(z)
    torch.testing.assert_close(written, autograd_derivative)


def test_kind_table_expressions_are_translated_for_both_kernels_and_bad_ones_refused():
    from graphattn.ops._codegen import emit

    assert emit("where(z > 0, 1, slope)", "cpp") == "((z > T(0.0)) ? T(1.0) : slope)"
    assert emit("where(z > 0, 1, slope)", "triton") == "tl.where((z > 0.0), 1.0, slope)"
    assert "propagate_nan=tl.PropagateNan.ALL" in emit("max(z, 0)", "triton")
    for bad in ("exp(z)", "z ** 2", "x + z", "where(z > 0, z)", "max(z, 0, 1)"):
        with pytest.raises(ValueError):
            emit(bad, "cpp")


@pytest.mark.parametrize(
    "traits, problem",
    [
        (dict(scalar=True, weight="att"), "no channel weight"),
        (dict(scalar=True, adds_dst=False), "adds its destination term"),
        (dict(scalar=True, takes_edge_bias=True), "already is a per-edge bias"),
        (dict(scalar=False, weight="one", activation="identity"), "plain sum of channels"),
        (dict(weight="query"), "not one of"),
        (dict(activation="gelu"), "not a row of ACTIVATIONS"),
    ],
)
def test_kinds_the_kernels_cannot_compute_are_refused_by_the_table(traits, problem):
    from dataclasses import replace

    from graphattn.ops import _fused

    for kind in _fused.KINDS:
        _fused.check_kind(kind)  # the table's own rows pass
    with pytest.raises(ValueError, match=problem):
        _fused.check_kind(replace(_fused.KINDS[_fused.GAT], name="MINE", **traits))
    with pytest.raises(ValueError, match="unknown score kind 7"):
        _fused.score_kind(7)


def test_custom_op_names_follow_their_sources():
    """Both fused backends name their torch.library ops by one rule over the bytes the ops
    depend on: another source gives other names, the same source the same ones."""
    from graphattn.ops import cpu, triton_backend
    from graphattn.ops._fused import versioned_op_name

    assert versioned_op_name("cpu", "fused_forward", b"a") == versioned_op_name("cpu", "fused_forward", b"a")
    assert versioned_op_name("cpu", "fused_forward", b"a") != versioned_op_name("cpu", "fused_forward", b"b")
    for module, backend in ((cpu, "cpu"), (triton_backend, "triton")):
        name = versioned_op_name(backend, "fused_forward", module._OPS_SOURCE)
        namespace, op = name.split("::")
        assert hasattr(getattr(torch.ops, namespace), op), name
