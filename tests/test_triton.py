"""The Triton kernels under the interpreter (TRITON_INTERPRET=1), on CPU, against
the reference backend: outputs, weights and gradients, fp32 and fp64."""

import os

import pytest  # noqa: E402
import torch  # noqa: E402

from graphattn import Graph, ops  # noqa: E402
from graphattn.ops import triton_backend  # noqa: E402

from conftest import random_graph  # noqa: E402

pytestmark = pytest.mark.skipif(
    not triton_backend.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="triton not installed (or TRITON_INTERPRET was set to something else)",
)

N, H, C = 24, 2, 5

if triton_backend.is_available():  # the jitted probes below resolve these as module globals
    import triton
    import triton.language as tl

    from graphattn.ops import triton_kernels as tk


def _graph(seed=0):
    return Graph.from_edge_index(random_graph(N, N, 90, seed=seed), N)


def _run_both(fn, inputs):
    results = {}
    for backend in ("reference", "triton"):
        xs = [t.detach().clone().requires_grad_(True) for t in inputs]
        out, alpha = fn(*xs, backend)
        w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * w).sum().backward()
        results[backend] = (out.detach(), alpha, [x.grad for x in xs])
    return results


def _compare(results, dtype):
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    (o1, a1, g1), (o2, a2, g2) = results["reference"], results["triton"]
    torch.testing.assert_close(o2, o1, **tol)
    torch.testing.assert_close(a2, a1, **tol)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(y, x, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("edge", [False, True])
def test_gat(dtype, edge):
    g = _graph()
    r = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    inputs = [r(N, H), r(N, H), r(N, H, C)] + ([r(g.num_edges, H)] if edge else [])

    def fn(ss, sd, v, *es, backend):
        return ops.gat_attention(ss, sd, v, g, edge_score=es[0] if es else None, return_weights=True, backend=backend)

    _compare(_run_both(lambda *a: fn(*a[:-1], backend=a[-1]), inputs), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("edge", [False, True])
def test_gatv2(dtype, edge):
    g = _graph(1)
    r = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    inputs = [r(N, H, C), r(N, H, C), r(H, C)] + ([r(g.num_edges, H, C)] if edge else [])

    def fn(xs, xd, att, *ef, backend):
        return ops.gatv2_attention(
            xs, xd, att, g, edge_feat=ef[0] if ef else None, return_weights=True, backend=backend
        )

    _compare(_run_both(lambda *a: fn(*a[:-1], backend=a[-1]), inputs), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("edge", [False, True])
def test_dot_product(dtype, edge):
    g = _graph(2)
    E = g.num_edges
    r = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    inputs = [r(N, H, 4), r(N, H, 4), r(N, H, C)] + ([r(E, H, 4), r(E, H, C), r(E, H)] if edge else [])

    def fn(q, k, v, *extra, backend):
        ek, ev, eb = extra if extra else (None, None, None)
        return ops.dot_product_attention(
            q, k, v, g, edge_key=ek, edge_value=ev, edge_bias=eb, return_weights=True, backend=backend
        )

    _compare(_run_both(lambda *a: fn(*a[:-1], backend=a[-1]), inputs), dtype)


def test_empty_rows_masked_edges_and_empty_graph():
    ei = torch.tensor([[0, 1, 2, 0], [1, 1, 1, 2]])
    g = Graph.from_edge_index(ei, (3, 4))
    q, k, v = torch.randn(4, 2, 3), torch.randn(3, 2, 3), torch.randn(3, 2, 3)
    bias = torch.zeros(4, 2)
    bias[3] = float("-inf")
    out, alpha = ops.dot_product_attention(q, k, v, g, edge_bias=bias, return_weights=True, backend="triton")
    ref, ref_alpha = ops.dot_product_attention(q, k, v, g, edge_bias=bias, return_weights=True, backend="reference")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(alpha, ref_alpha)
    empty = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), 3)
    out = ops.gat_attention(torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 2, 4), empty, backend="triton")
    assert torch.equal(out, torch.zeros(3, 2, 4))


def test_tied_huge_logits_give_the_reference_weights():
    """The saved statistics keep the row max and the log normaliser apart (the CPU kernel's
    convention): summed into one log-sum-exp, 1e30 + log(4) rounds to 1e30 in fp32 and four
    tied weights would come back as 1 each instead of 1/4."""
    g = Graph.from_edge_index(torch.tensor([[0, 1, 2, 3], [1, 1, 1, 1]]), 4)
    inputs = (torch.full((4, 1), 1e30), torch.zeros(4, 1), torch.randn(4, 1, 2))
    out, alpha = ops.gat_attention(*inputs, g, return_weights=True, backend="triton")
    ref, ref_alpha = ops.gat_attention(*inputs, g, return_weights=True, backend="reference")
    assert torch.equal(alpha, torch.full((4, 1), 0.25))
    torch.testing.assert_close(alpha, ref_alpha)
    torch.testing.assert_close(out, ref)


def test_dropout_is_seeded_unbiased_and_keeps_weights():
    g = _graph(3)
    ss, sd, v = torch.randn(N, H), torch.randn(N, H), torch.randn(N, H, C)
    clean, a0 = ops.gat_attention(ss, sd, v, g, return_weights=True, backend="triton")
    torch.manual_seed(5)
    d1, a1 = ops.gat_attention(ss, sd, v, g, dropout=0.5, return_weights=True, backend="triton")
    torch.manual_seed(5)
    d2 = ops.gat_attention(ss, sd, v, g, dropout=0.5, backend="triton")
    torch.testing.assert_close(d1, d2)
    torch.testing.assert_close(a0, a1)
    assert not torch.allclose(d1, clean)


def _fused_dot(g, p, seed, q, k, v):
    """The Triton custom op's output for dot-product attention (scale 0.5) with dropout ``p`` seeded by ``seed``."""
    return triton_backend.fused(
        triton_backend.DOT, g, 0.0, 0.5, p, torch.tensor(seed), q, k, v, None, None, None, None
    )[0]


def test_gradcheck_float64_with_dropout_mask_fixed_by_seed():
    g = Graph.from_edge_index(random_graph(6, 6, 16, seed=4), 6)
    d = dict(dtype=torch.float64, requires_grad=True)
    q, k, v = torch.randn(6, 2, 3, **d), torch.randn(6, 2, 3, **d), torch.randn(6, 2, 3, **d)

    def f(q, k, v):
        return _fused_dot(g, 0.3, 1234, q, k, v)

    assert torch.autograd.gradcheck(f, (q, k, v), fast_mode=True)


def test_exact_row_sums_redraw_the_forward_dropout_mask():
    """The backward's exact row sums for a non-finite upstream gradient take the dropout
    multipliers from ``dropout_scale_kernel``: they are the forward's, so the forward's
    output rebuilt from them and the weights is the kernel's output."""
    g = _graph(5)
    q, k, v = (torch.randn(N, H, C, dtype=torch.float64) for _ in range(3))
    out = _fused_dot(g, 0.4, 77, q, k, v)
    alpha = g.to_csr_order(
        ops.dot_product_attention(q, k, v, g, scale=0.5, return_weights=True, backend="reference")[1]
    )
    keep = triton_backend._dropout_scale(g.num_edges, H, 0.4, 77, v)
    assert 0 < int((keep == 0).sum()) < keep.numel()
    rebuilt = torch.zeros_like(out).index_add_(0, g.row, (alpha * keep)[..., None] * v[g.col])
    torch.testing.assert_close(out, rebuilt)


def test_a_nonfinite_upstream_gradient_with_dropout_gives_the_exact_row_sums():
    """An inf in d_out: the reference's row sum is NaN where <d_out, out> is +-inf; with
    dropout (seed fixed) the kernel's gradients are NaN exactly where that sum puts them."""
    g = _graph(6)
    d = dict(dtype=torch.float64, requires_grad=True)
    q, k, v = torch.randn(N, H, C, **d), torch.randn(N, H, C, **d), torch.randn(N, H, C, **d)
    out = _fused_dot(g, 0.4, 77, q, k, v)
    grad = torch.randn_like(out)
    row = int(g.row[0])
    grad[row, 0, 0] = float("inf")
    (dq,) = torch.autograd.grad(out, (q,), grad)
    assert torch.isfinite(dq[torch.arange(N) != row]).all()
    assert not torch.isfinite(dq[row, 0]).all() and torch.isfinite(dq[row, 1]).all()


def test_not_chosen_on_cpu_unless_forced():
    g = _graph()
    ops.gat_attention(torch.randn(N, H), torch.randn(N, H), torch.randn(N, H, C), g)
    assert ops.last_backend("gat") != "triton"


# ---------------------------------------------------------------- 64-bit indices
def test_node_offsets_from_program_ids_are_64_bit():
    """Offsets ``(i * H + h) * C`` built from a program id pass 2^31 on large graphs
    (e.g. 2.4M nodes x 4 heads x 256 channels); int32 arithmetic would wrap."""

    @triton.jit
    def probe(out, H, C, h):
        i = tk._program_node(0)
        tl.store(out + i, (i * H + h) * C)

    H, C, h = 2**20, 2**12, 3
    out = torch.zeros(3, dtype=torch.int64)
    probe[(3,)](out, H, C, h)
    assert out.tolist() == [(i * H + h) * C for i in range(3)]  # up to 2^33, past int32


def test_dropout_counters_do_not_wrap_past_2_to_the_31_edges():
    """Edge e of head h draws from counter e * H + h. Truncated to 32 bits, edge
    2^31 (with H = 2) would draw edge 0's numbers: same mask, correlated dropout."""

    @triton.jit
    def probe(out, seed, first_edge, H, p, BLOCK: tl.constexpr):
        e = first_edge + tl.arange(0, BLOCK).to(tl.int64)
        tl.store(out + tl.arange(0, BLOCK), tk._keep_scale(seed, e, 0, H, p, tl.float32))

    masks = []
    for first_edge in (0, 2**31):
        out = torch.empty(64)
        probe[(1,)](out, 1234, first_edge, 2, 0.5, BLOCK=64)
        assert set(out.tolist()) <= {0.0, 2.0}  # kept edges scaled by 1 / (1 - p)
        masks.append(out)
    assert not torch.equal(masks[0], masks[1])


def test_autotune_configurations_keys_and_degree_bucket():
    """On a GPU each kernel is autotuned over (BLOCK_E, warps) keyed on heads, channels and
    the mean-degree bucket; every key must name an argument of its kernel (Triton looks the
    key up by name at launch, which the interpreter never reaches)."""
    import inspect

    from triton.runtime.autotuner import Autotuner

    for name, key in triton_backend.TUNE_KEYS.items():
        tuned = triton_backend.autotuned(name)
        assert isinstance(tuned, Autotuner) and tuned is triton_backend.autotuned(name)  # built once
        params = inspect.signature(getattr(tk, name).fn).parameters
        assert set(key) <= set(params), (name, set(key) - set(params))
        assert "BLOCK_E" in params
        blocks = [c.kwargs["BLOCK_E"] for c in tuned.configs]
        # tl.arange needs a power of two; a repeated block size would be timed twice for nothing, and one
        # size alone would leave nothing to tune; CUDA allows at most 1024 threads (32 warps) per block
        assert len(set(blocks)) == len(blocks) > 1, (name, blocks)
        assert all(b > 0 and b & (b - 1) == 0 for b in blocks), (name, blocks)
        assert all(1 <= c.num_warps <= 32 and c.num_warps & (c.num_warps - 1) == 0 for c in tuned.configs), name
    assert [triton_backend.degree_bucket(e, 100) for e in (0, 100, 300, 400, 100_000)] == [0, 1, 2, 3, 10]
    assert triton_backend.degree_bucket(5, 0) == 3  # no nodes: no division by zero


def _hub_graph(n=16):
    """Random edges plus a destination with 150 in-edges and a source with 150 out-edges: longer rows
    than the largest block, in the forward's CSR and the backward's transposed one, beside short and
    empty rows."""
    gen = torch.Generator().manual_seed(11)
    to_hub = torch.stack([torch.randint(0, n, (150,), generator=gen), torch.zeros(150, dtype=torch.long)])
    from_hub = torch.stack([torch.ones(150, dtype=torch.long), torch.randint(0, n - 4, (150,), generator=gen)])
    rest = torch.stack([torch.randint(0, n, (60,), generator=gen), torch.randint(0, n - 4, (60,), generator=gen)])
    return Graph.from_edge_index(torch.cat([to_hub, from_hub, rest], dim=1), n)


def test_every_autotuned_block_size_gives_the_reference_results(monkeypatch):
    """On a GPU the autotuner may pick any of its configurations, while the interpreter runs one fixed
    BLOCK_E: each block size the autotuned kernels carry, run here under the interpreter, must give the
    reference's outputs, weights and gradients (rows longer than a block, short rows, empty rows)."""
    g = _hub_graph()
    n = g.num_dst
    blocks = sorted(
        {c.kwargs["BLOCK_E"] for name in triton_backend.TUNE_KEYS for c in triton_backend.autotuned(name).configs}
    )
    longest = min(int(torch.diff(g.rowptr).max()), int(torch.diff(g.transpose_csr()[0]).max()))
    assert longest > max(blocks)  # the hub rows span more than one block of every size
    r = lambda *s: torch.randn(*s, dtype=torch.float32)  # noqa: E731
    h, E = 1, g.num_edges  # one head: the interpreter's time goes by programs, and heads are covered above
    dot_inputs = [r(n, h, 4), r(n, h, 4), r(n, h, C), r(E, h, 4), r(E, h, C), r(E, h)]
    gatv2_inputs = [r(n, h, C), r(n, h, C), r(h, C)]

    def dot(q, k, v, ek, ev, eb, backend):
        return ops.dot_product_attention(
            q, k, v, g, edge_key=ek, edge_value=ev, edge_bias=eb, return_weights=True, backend=backend
        )

    def gatv2(xs, xd, att, backend):
        return ops.gatv2_attention(xs, xd, att, g, return_weights=True, backend=backend)

    for block in blocks:
        monkeypatch.setattr(triton_backend, "INTERPRETER_BLOCK_E", block)
        for fn, inputs in ((dot, dot_inputs), (gatv2, gatv2_inputs)):
            results = _run_both(lambda *a, fn=fn: fn(*a[:-1], backend=a[-1]), inputs)
            try:
                _compare(results, torch.float32)
            except AssertionError as exc:
                raise AssertionError(f"BLOCK_E={block}, {fn.__name__}: {exc}") from None


def test_compiles_fullgraph_through_the_custom_ops():
    """The kernels are torch.library custom ops: torch.compile(fullgraph=True) traces the forward,
    the returned weights and the backward (with dropout, whose seed is a tensor) without a graph break."""
    g = _graph(7)
    inputs = [torch.randn(N, H, C, requires_grad=True) for _ in range(3)]

    def f(q, k, v):
        return ops.dot_product_attention(q, k, v, g, dropout=0.3, return_weights=True, backend="triton")

    results = []
    for fn in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
        torch.manual_seed(3)
        out, alpha = fn(*inputs)
        results.append((out, alpha, *torch.autograd.grad(out.sum(), inputs)))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager)
