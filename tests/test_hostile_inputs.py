"""The mistakes users make, one test each: every one of these crashed the process,
returned garbage or hid a NaN before validation was derived from one description of
each op's inputs (graphattn/ops/_inputs.py). Cases that could kill the process run in
a subprocess."""

import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from graphattn import Graph, explain, ops, patterns
from graphattn.nn import GATConv, GATv2Conv, DotProductConv, MultiheadGraphAttention
from graphattn.ops import cpu as cpu_backend

from conftest import backend_params, default_cpu_backend, needs_backend, random_graph

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = backend_params("reference", "cpu")  # a backend that cannot run here skips, saying why
needs_cpu = needs_backend("cpu")


def _in_subprocess(code: str, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True, timeout=600
    )


# ------------------------------------------------------------ node counts
@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_over_more_sources_than_inputs_is_an_error_not_garbage(backend):
    graph = Graph.from_edge_index(random_graph(200, 200, 600), 200)
    with pytest.raises(ValueError, match="10 source-node rows but the graph has 200 source nodes"):
        ops.gat_attention(torch.randn(10, 2), None, torch.randn(10, 2, 3), graph, backend=backend)


def test_bipartite_graph_with_a_billion_sources_does_not_crash():
    """Used to be SIGSEGV in the CPU kernel: score_dst=None skipped every node check."""
    proc = _in_subprocess("""
        import torch
        from graphattn import Graph, ops
        g = Graph.from_edge_index(torch.tensor([[10**9 - 1, 5], [0, 1]]), num_src=10**9, num_dst=2)
        for backend in ("reference", "cpu"):
            try:
                ops.gat_attention(torch.randn(10, 2), None, torch.randn(10, 2, 3), g, backend=backend)
            except ValueError as e:
                print(backend, "ValueError", e)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("source-node rows but the graph has 1000000000 source nodes") == 2, proc.stdout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["gatv2", "dot_product"])
def test_every_per_node_input_is_checked_against_the_graph(op, backend):
    g = Graph.from_edge_index(random_graph(6, 6, 20), 6)
    r = torch.randn
    with pytest.raises(ValueError, match=r"value must have shape \[6, 2, 3\] \(num_src, heads"):
        if op == "gatv2":
            ops.gatv2_attention(r(6, 2, 3), r(6, 2, 3), r(2, 3), g, value=r(5, 2, 3), backend=backend)
        else:
            ops.dot_product_attention(r(6, 2, 3), r(6, 2, 3), r(7, 2, 3), g, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gat_over_an_edge_index_without_destination_scores_keeps_every_node(backend):
    """Found by the route harness (tests/test_routes.py): with score_dst=None nothing gave
    the destination count, so it was the largest destination index + 1 and nodes after it
    without in-edges silently lost their output rows. An edge_index is square there, as
    in PyG and score_attention; a destination past the nodes is a clear error."""
    ei = torch.tensor([[0, 1, 2, 3], [1, 0, 1, 2]])  # node 3 receives nothing
    out = ops.gat_attention(torch.randn(4, 1), None, torch.randn(4, 1, 2), ei, backend=backend)
    assert out.shape == (4, 1, 2) and torch.equal(out[3], torch.zeros(1, 2))
    with pytest.raises(ValueError, match="destination index 3, out of range for 2 destination nodes"):
        ops.gat_attention(
            torch.randn(2, 1), None, torch.randn(2, 1, 2), torch.tensor([[0, 1], [1, 3]]), backend=backend
        )


# ------------------------------------------------------------ patterns
def test_pattern_callable_wider_than_the_sequence_is_rejected():
    mha = MultiheadGraphAttention(8, 2, batch_first=True, pattern=lambda Lq, Lk: patterns.complete(Lq, Lk + 5))
    x = torch.randn(2, 6, 8)
    with pytest.raises(ValueError, match=r"pattern\(Lq, Lk\) gave a graph over \(6 queries, 11 keys\)"):
        mha(x, x, x)
    with pytest.raises(TypeError, match="must return a graphattn.Graph"):
        MultiheadGraphAttention(8, 2, batch_first=True, pattern=lambda Lq, Lk: "edges")(x, x, x)


def test_batch_pattern_wider_than_its_block_is_rejected():
    with pytest.raises(ValueError, match="block of length 3"):
        patterns.batch([4, 3], lambda L: patterns.complete(4))
    with pytest.raises(ValueError, match="non-negative"):
        patterns.batch([4, -1])


# ------------------------------------------------------------ Graph owns its indices
def test_graph_does_not_alias_the_callers_buffer():
    ei = torch.tensor([[0, 2, 1, 3], [0, 1, 1, 2]])  # int64 and already sorted by destination
    g = Graph.from_edge_index(ei, 4)
    before = (g.col.clone(), g.row.clone(), g.edge_index.clone())
    ei.fill_(99)  # the caller reuses its buffer for the next batch
    assert torch.equal(g.col, before[0]) and torch.equal(g.row, before[1]) and torch.equal(g.edge_index, before[2])


def test_in_place_edit_of_a_graphs_indices_is_caught_before_any_kernel():
    proc = _in_subprocess("""
        import torch
        from graphattn import Graph, ops
        g = Graph.from_edge_index(torch.randint(0, 8, (2, 30), generator=torch.Generator().manual_seed(0)), 8)
        args = (torch.randn(8, 2), None, torch.randn(8, 2, 3))
        shape = ops.gat_attention(*args, g).shape
        g.col[0] = 10 ** 6
        for backend in ("reference", "cpu"):
            try:
                ops.gat_attention(*args, g, backend=backend)
            except ValueError as e:
                print(backend, e)
        g.col[0] = 0  # valid again: checked again, derived caches rebuilt
        print("restored", ops.gat_attention(*args, g).shape == shape)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("source index 1000000, out of range") == 2, proc.stdout
    assert "restored True" in proc.stdout


HAND_BUILT = {
    "rowptr must start at 0": "Graph(g.rowptr.flip(0), g.col, g.row, None, 4, 4)",
    "out of range for 4 source nodes": "Graph(g.rowptr, g.col + 10 ** 7, g.row, None, 4, 4)",
    "Graph.row must be": "Graph(g.rowptr, g.col, g.row.flip(0), None, 4, 4)",
    "rowptr has 4 entries": "Graph(g.rowptr[:-1], g.col, g.row, None, 4, 4)",
    "1-D torch.long": "Graph(g.rowptr, g.col.int(), g.row, None, 4, 4)",
    "permutation": "Graph(g.rowptr, g.col, g.row, torch.zeros(g.num_edges, dtype=torch.long), 4, 4)",
}


def test_hand_built_graph_is_validated_on_first_use():
    """Graphs made with the raw constructor, each broken in one way the kernels would
    have trusted (out-of-range reads), on every backend: in a subprocess, as a
    validation gap here would be a segfault."""
    proc = _in_subprocess(f"""
        import torch
        from graphattn import Graph, ops
        g = Graph.from_edge_index(torch.tensor([[0, 1, 2, 3], [0, 0, 1, 3]]), 4)
        for make in {list(HAND_BUILT.values())!r}:
            for backend in ("reference", "cpu"):
                try:
                    ops.gat_attention(torch.randn(4, 1), None, torch.randn(4, 1, 2), eval(make), backend=backend)
                    print("no error", make)
                except ValueError as e:
                    print(backend, e)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no error" not in proc.stdout, proc.stdout
    for match in HAND_BUILT:
        assert proc.stdout.count(match) == 2, (match, proc.stdout)


# ------------------------------------------------------------ NaN and inf propagate
@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_softmax_propagates_nan_like_the_reference(backend):
    g = Graph.from_edge_index(torch.tensor([[0, 1, 2], [0, 0, 1]]), 3)
    y = ops.edge_softmax(torch.tensor([float("nan"), 0.5, 1.0]), g, backend=backend)
    assert torch.isnan(y[:2]).all() and y[2] == 1.0  # the NaN row is NaN, the other row is untouched
    y = ops.edge_softmax(torch.tensor([float("inf"), 0.5, float("-inf")]), g, backend=backend)
    assert torch.isnan(y[:2]).all() and y[2] == 0.0  # +inf: inf - inf; an all -inf row is 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_nan_score_gives_nan_outputs_weights_and_gradients_as_reference(backend):
    g = Graph.from_edge_index(random_graph(8, 8, 30, seed=3), 8)
    q, k, v = (torch.randn(8, 2, 4, dtype=torch.float64) for _ in range(3))
    q[g.row[0], 1, 0] = float("nan")  # one query entry: NaN scores on that row, head 1

    def run(b):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out, alpha = ops.dot_product_attention(*leaves, g, return_weights=True, backend=b)
        out.sum().backward()
        return [out.detach(), alpha] + [t.grad for t in leaves]

    ref, got = run("reference"), run(backend)
    for r, o in zip(ref, got):
        assert torch.equal(torch.isnan(r), torch.isnan(o))
        torch.testing.assert_close(o.nan_to_num(), r.nan_to_num())
    assert torch.isnan(ref[1]).any() and not torch.isnan(ref[1]).all()


def test_explain_capture_records_nan_instead_of_zeros():
    layer = GATConv(4, 3, heads=2).eval()
    x = torch.randn(6, 4)
    x[2, 0] = float("nan")
    with explain.capture(layer) as cap:
        layer(x, random_graph(6, 6, 20))
    assert torch.isnan(cap.records[0].weights).any()


# ------------------------------------------------------------ arguments out of their domain
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dropout=1.5), r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(dropout=1.5, training=False), r"dropout must be in \[0, 1\)"),
        (dict(negative_slope=float("nan")), "negative_slope must be a finite number"),
    ],
)
def test_scalar_arguments_out_of_domain_raise_on_every_backend(backend, kwargs, match):
    g = Graph.from_edge_index(random_graph(5, 5, 12), 5)
    with pytest.raises(ValueError, match=match):
        ops.gat_attention(torch.randn(5, 2), None, torch.randn(5, 2, 3), g, backend=backend, **kwargs)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GATConv(4, 0), "out_channels must be a positive integer"),
        (lambda: GATConv(4, 3, heads=0), "heads must be a positive integer"),
        (lambda: GATv2Conv(4, 3, heads=-2), "heads must be a positive integer"),
        (lambda: DotProductConv(4, 3, dropout=1.0), r"dropout must be in \[0, 1\)"),
        (lambda: GATConv(4, 3, negative_slope=float("inf")), "negative_slope must be a finite number"),
        (lambda: GATConv(4, 3, edge_dim=0), "edge_dim must be a positive integer"),
        (lambda: MultiheadGraphAttention(8, 0), "num_heads must be a positive integer"),
        (lambda: MultiheadGraphAttention(8, 2, dropout=1.5), r"dropout must be in \[0, 1\)"),
    ],
)
def test_layer_constructor_arguments_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ------------------------------------------------------------ the dispatcher says why
@needs_cpu
def test_gatv2_beyond_the_kernels_channel_limit_falls_back_and_says_why():
    C = cpu_backend.MAX_BUFFERED_CHANNELS + 1
    g = Graph.from_edge_index(random_graph(4, 4, 8), 4)
    x, att = torch.randn(4, 1, C), torch.randn(1, C)
    out = ops.gatv2_attention(x, x, att, g)
    assert ops.last_backend("gatv2") == "reference"
    assert "at most 1024" in ops.why_not("gatv2")["cpu"]
    assert out.shape == (4, 1, C) and torch.isfinite(out).all()
    with pytest.raises(RuntimeError, match="cannot run 'gatv2' here: GATV2 with 1025 channels"):
        ops.gatv2_attention(x, x, att, g, backend="cpu")


def test_forced_cpu_backend_without_a_kernel_says_why():
    proc = _in_subprocess(
        """
        import torch
        from graphattn import Graph, ops
        g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), 2)
        try:
            ops.gat_attention(torch.randn(2, 1), None, torch.randn(2, 1, 3), g, backend="cpu")
        except RuntimeError as e:
            print(e)
        ops.gat_attention(torch.randn(2, 1), None, torch.randn(2, 1, 3), g)
        print(ops.last_backend("gat"), ops.why_not("gat"))
    """,
        GRAPHATTN_DISABLE_CPU_KERNEL="1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cannot run 'gat' here: turned off by GRAPHATTN_DISABLE_CPU_KERNEL=1" in proc.stdout
    assert "reference" in proc.stdout.splitlines()[-1]


def test_a_failed_kernel_build_warns_once_briefly_and_the_error_is_kept(monkeypatch):
    log = "Error building extension 'graphattn_cpu':\n" + "[1/2] c++ -O3 ... (long ninja log)\n" * 50

    def fail(*a, **k):
        raise RuntimeError(log)

    monkeypatch.setattr(cpu_backend, "_EXT", None)
    monkeypatch.setattr(cpu_backend, "_EXT_ERROR", None)
    monkeypatch.setattr(cpu_backend, "load_extension", fail)
    monkeypatch.delenv("GRAPHATTN_DISABLE_CPU_KERNEL", raising=False)
    g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops.gat_attention(torch.randn(2, 1), None, torch.randn(2, 1, 3), g)
        ops.gat_attention(torch.randn(2, 1), None, torch.randn(2, 1, 3), g)
    mine = [w for w in caught if "fused CPU kernel could not be built" in str(w.message)]
    assert len(mine) == 1 and len(str(mine[0].message)) < 500 and "ninja log" not in str(mine[0].message)
    assert ops.last_backend("gat") == "reference"
    assert cpu_backend.build_error().count("ninja log") == 50
    with pytest.raises(RuntimeError, match="could not be built"):
        ops.gat_attention(torch.randn(2, 1), None, torch.randn(2, 1, 3), g, backend="cpu")


@needs_cpu
def test_bounds_checked_kernel_raises_where_the_release_kernel_would_read_out_of_range():
    """The debug build's checks are real: called directly with a bad index (bypassing
    validation, as only a validation bug could), it raises instead of reading."""
    proc = _in_subprocess(
        """
        import torch
        from graphattn.ops import cpu
        rowptr, col = torch.tensor([0, 1]), torch.tensor([5])   # source 5 of 2
        src_term, value, e = torch.randn(2, 1), torch.randn(2, 1, 3), torch.empty(0)
        try:
            cpu.load_extension().forward(cpu.GAT, rowptr, col, 1, e, src_term, value, e, e, e, e, 0.2, 1.0, 0.0,
                                         torch.zeros((), dtype=torch.long))
            print("no error")
        except RuntimeError as err:
            print(err)
    """,
        GRAPHATTN_KERNEL_CHECKS="1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "source index 5 out of [0, 2)" in proc.stdout


@needs_cpu
def test_direct_kernel_calls_with_inputs_their_kind_does_not_take_raise():
    """Found by review: GATv2 without its destination-side tensor read a null pointer
    (segfault), and a per-edge bias on GAT got an uninitialised gradient. The public
    ops never pass either; the kernel's entry now refuses both, and a kind number that
    names no kind."""
    proc = _in_subprocess("""
        import torch
        from graphattn.ops import cpu
        ext, e = cpu.load_extension(), torch.empty(0)
        rowptr, col, seed = torch.tensor([0, 1]), torch.tensor([1]), torch.zeros((), dtype=torch.long)
        for kind, dst, bias in ((cpu.GATV2, e, e), (cpu.GAT, e, torch.randn(1, 1)), (7, e, e)):
            src, value, att = torch.randn(2, 1, 4), torch.randn(2, 1, 4), torch.randn(1, 4)
            if kind == cpu.GAT:
                src = torch.randn(2, 1)
            try:
                ext.forward(kind, rowptr, col, 1, dst, src, value, e, bias, e, att, 0.2, 1.0, 0.0, seed)
                print("no error")
            except RuntimeError as err:
                print(str(err).splitlines()[0])
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "score kind GATV2 needs its destination-side tensor" in proc.stdout
    assert "score kind GAT takes no per-edge bias" in proc.stdout
    assert "unknown score kind 7" in proc.stdout


@needs_cpu
def test_every_kernel_entry_refuses_more_channels_than_its_stack_buffer():
    """Found by review: only the forward entry checked the channel limit of the z
    buffer on the stack; a direct call of the weights or the backward with more
    channels wrote past it. All three entries check it now."""
    proc = _in_subprocess("""
        import torch
        from graphattn import Graph
        from graphattn.ops import cpu
        ext, e, seed = cpu.load_extension(), torch.empty(0), torch.zeros((), dtype=torch.long)
        g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), 2)
        colptr, row_by_src, eid = g.transpose_csr()
        C = cpu.MAX_BUFFERED_CHANNELS + 1
        xs, xd, v, att = torch.randn(2, 1, C), torch.randn(2, 1, C), torch.randn(2, 1, 3), torch.randn(1, C)
        stats, out = torch.zeros(2, 1, 2), torch.zeros(2, 1, 3)
        calls = {
            "forward": lambda: ext.forward(cpu.GATV2, g.rowptr, g.col, 2, xd, xs, v, e, e, e, att, 0.2, 1.0, 0.0,
                                           seed),
            "weights": lambda: ext.weights(cpu.GATV2, g.rowptr, g.col, stats, xd, xs, v, e, e, e, att, 0.2, 1.0),
            "backward": lambda: ext.backward(cpu.GATV2, g.rowptr, g.col, colptr, row_by_src, eid, xd, xs, v, e, e,
                                             e, att, stats, torch.ones_like(out), out, 0.2, 1.0, 0.0, seed),
        }
        for name, call in calls.items():
            try:
                call()
                print(name, "no error")
            except RuntimeError as err:
                print(name, str(err).splitlines()[0])
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("forward", "weights", "backward"):
        assert f"{name} score kind GATV2 supports at most 1024 channels per head" in proc.stdout, proc.stdout


@needs_cpu
def test_backward_with_mixed_index_types_in_the_transposed_graph_raises():
    """The transposed graph is int32 where the graph allows and int64 past 2^31; the
    backward reads all three arrays with one type, so a mix is refused, not misread."""
    proc = _in_subprocess("""
        import torch
        from graphattn import Graph
        from graphattn.ops import cpu
        ext, e = cpu.load_extension(), torch.empty(0)
        g = Graph.from_edge_index(torch.tensor([[0, 1, 2], [1, 2, 0]]), 3)
        colptr, row_by_src, eid = g.transpose_csr()
        q, k, v = torch.randn(3, 1, 2), torch.randn(3, 1, 2), torch.randn(3, 1, 2)
        out, stats = ext.forward(cpu.DOT, g.rowptr, g.col, 3, q, k, v, e, e, e, e, 0.0, 1.0, 0.0,
                                 torch.zeros((), dtype=torch.long))
        try:
            ext.backward(cpu.DOT, g.rowptr, g.col, colptr, row_by_src.long(), eid, q, k, v, e, e, e, e, stats,
                         torch.ones_like(out), out, 0.0, 1.0, 0.0, torch.zeros((), dtype=torch.long))
            print("no error")
        except RuntimeError as err:
            print(str(err).splitlines()[0])
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "transposed graph indices must all be int64 or all int32" in proc.stdout


# ------------------------------------------------------------ threads
def test_graph_cache_is_consistent_under_concurrent_calls():
    layer = GATConv(4, 3, heads=2).eval()
    x = torch.randn(30, 4)
    edge_sets = [random_graph(30, 30, 80, seed=s) for s in range(4)]
    expected = [layer(x, Graph.from_edge_index(ei, 30, add_self_loops=False)) for ei in edge_sets]
    errors = []

    def work(k):
        try:
            for _ in range(25):
                torch.testing.assert_close(layer(x, edge_sets[k]), expected[k])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_use_backend_is_scoped_to_the_calling_thread():
    g = Graph.from_edge_index(random_graph(6, 6, 15), 6)
    args = (torch.randn(6, 2), None, torch.randn(6, 2, 3), g)
    inside, seen = threading.Event(), {}

    def other():
        inside.wait(5)
        ops.gat_attention(*args)
        seen["other"] = ops.last_backend("gat")

    t = threading.Thread(target=other)
    t.start()
    with ops.use_backend("reference"):
        inside.set()
        t.join()
        ops.gat_attention(*args)
        seen["self"] = ops.last_backend("gat")
    assert seen["self"] == "reference"
    assert seen["other"] == default_cpu_backend()  # the other thread's default choice, not the forced one


def test_mha_graph_cache_is_one_atomic_slot():
    mha = MultiheadGraphAttention(8, 2, batch_first=True).eval()
    ref = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ref.load_state_dict(mha.state_dict())
    xs = [torch.randn(2, L, 8) for L in (5, 7, 9)]
    errors = []

    def work(x):
        try:
            for _ in range(10):
                torch.testing.assert_close(mha(x, x, x)[0], ref(x, x, x)[0], atol=1e-5, rtol=1e-5)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(x,)) for x in xs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
