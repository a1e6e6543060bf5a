"""Graphs and layers shared by threads: every call gives exactly the result one thread
alone gives. A lazily built pattern materialises once (no thread sees it half built),
and the values a graph derives and caches (its self-looped graph, transpose CSR,
inverse permutation, relabelled copy, user-order edge_index) are built once and
published whole."""

import sys
import threading

import pytest
import torch

from graphattn import Graph, ops, patterns
from graphattn.nn import GATConv, GATv2Conv, TransformerConv

from conftest import random_graph

THREADS, CALLS, ROUNDS, N, H, C = 4, 4, 3, 24, 2, 3


def _backends():
    usable = ["reference", None]  # None: the dispatcher's own choice
    if ops.cpu.unavailable_reason() is None:
        usable.append("cpu")
    return usable


def _lazy():
    return patterns.complete_per_graph(torch.tensor([0] * 7 + [1] * 12 + [2] * 5), N)


def _built():
    return Graph.from_edge_index(random_graph(N, N, 90, seed=1), N)


def _reordered():
    return Graph.from_edge_index(random_graph(N, N, 90, seed=2), N).reorder_nodes("degree")


GRAPHS = {"lazy_per_graph": _lazy, "built": _built, "reordered": _reordered}


def _inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(N, H, C, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3)]


def _op_call(backend):
    """Forward and backward of the three ops on a graph: outputs, weights and grads."""

    def call(graph, seed):
        q, k, v = _inputs(seed)
        s_src, s_dst = q.sum(-1), k.sum(-1)
        out_d, w_d = ops.dot_product_attention(q, k, v, graph, return_weights=True, backend=backend)
        out_g, w_g = ops.gat_attention(s_src, s_dst, v, graph, return_weights=True, backend=backend)
        soft = ops.edge_softmax(w_g.detach() + w_d.detach(), graph)
        (out_d.sum() + out_g.square().sum()).backward()
        return [out_d, w_d, out_g, w_g, soft, q.grad, k.grad, v.grad]

    return call


def _layer_call(make):
    """A layer shared by the threads (eval mode), forward and backward on the graph."""
    torch.manual_seed(0)
    layer = make().double().eval()

    def call(graph, seed):
        x = _inputs(seed)[0].reshape(N, H * C).detach().requires_grad_()
        out = layer(x, graph)
        out.square().sum().backward()
        return [out, x.grad]

    return call


LAYERS = {
    "gat": lambda: GATConv(H * C, C, heads=H),  # adds self-loops: the graph's cached self-looped graph
    "gatv2": lambda: GATv2Conv(H * C, C, heads=H),
    "transformer": lambda: TransformerConv(H * C, C, heads=H),
}


def _in_threads(call, graph):
    """``call(graph, seed)`` CALLS times in each of THREADS threads started together,
    switching threads as often as the interpreter can (races show up on most runs)."""
    barrier, results, errors = threading.Barrier(THREADS), {}, []

    def work(t):
        barrier.wait()
        try:
            for m in range(CALLS):
                results[t, m] = call(graph, t * CALLS + m)
        except Exception as e:  # reported below, with the thread's own traceback text
            errors.append(f"thread {t}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    return results


def _same_as_one_thread(call, make_graph):
    """ROUNDS fresh shared graphs (a graph's caches are built on its first use)."""
    alone = make_graph()  # its own graph, used by this thread only
    for _ in range(ROUNDS):
        for (t, m), got in _in_threads(call, make_graph()).items():
            for a, b in zip(got, call(alone, t * CALLS + m)):
                assert torch.equal(a, b)


@pytest.mark.parametrize("backend", _backends(), ids=str)
@pytest.mark.parametrize("kind", GRAPHS)
def test_ops_on_a_shared_graph_equal_one_thread(kind, backend):
    _same_as_one_thread(_op_call(backend), GRAPHS[kind])


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("kind", GRAPHS)
def test_a_shared_layer_on_a_shared_graph_equals_one_thread(kind, layer):
    _same_as_one_thread(_layer_call(LAYERS[layer]), GRAPHS[kind])


def test_a_shared_edge_index_through_a_shared_layer_equals_one_thread():
    """The layer builds and caches the Graph of an edge_index (and its self-loops) itself."""
    ei = random_graph(N, N, 90, seed=3)
    _same_as_one_thread(_layer_call(LAYERS["gat"]), lambda: ei.clone())


def test_derived_values_are_built_once_and_published_whole():
    for seed in range(20):
        graph = Graph.from_edge_index(random_graph(N, N, 90, seed=seed), N).reorder_nodes("degree")
        reads = (
            graph.with_self_loops,
            graph.transpose_csr,
            lambda: graph.inv_perm,
            lambda: graph.relabeled,
            lambda: graph.edge_index,
        )
        seen = _in_threads(lambda g, _: [read() for read in reads], graph)
        first = seen[0, 0]
        for got in seen.values():
            assert all(a is not None and a is b for a, b in zip(got, first))  # one object, never None


def test_a_lazy_graph_materialises_once():
    """The first reads race to build the edges: all see the same complete arrays."""
    for _ in range(20):
        graph = patterns.complete_per_graph(torch.arange(300).repeat_interleave(3), 900)
        seen = _in_threads(
            lambda g, _: [g.rowptr, g.col, g.row, g.ensure_valid(), g.edge_index, g.transpose_csr()], graph
        )
        first = seen[0, 0]
        for got in seen.values():
            assert all(a is not None and a is b for a, b in zip(got, first))


def _gps_call(global_pattern):
    """One GPSConv shared by the threads on one shared batch: its global pattern comes
    from the module-level pattern cache (built lazily, once, under its lock)."""
    from graphattn.nn import GPSConv

    torch.manual_seed(0)
    layer = (
        GPSConv(H * C, GATConv(H * C, C, heads=H), heads=H, global_pattern=global_pattern, expander_degree=2)
        .double()
        .eval()
    )
    local = random_graph(N, N, 60, seed=4)

    def call(batch, seed):
        x = _inputs(seed)[0].reshape(N, H * C).detach().requires_grad_()
        out = layer(x, local, batch)
        out.square().sum().backward()
        return [out, x.grad]

    return call


@pytest.mark.parametrize("global_pattern", ["complete", "sparse"])
def test_a_shared_gps_layer_on_a_shared_batch_equals_one_thread(global_pattern):
    sizes = torch.tensor([7, 12, 5])
    _same_as_one_thread(_gps_call(global_pattern), lambda: torch.repeat_interleave(torch.arange(3), sizes))


MHA_PATTERNS = {  # the pattern a shared MultiheadGraphAttention builds its block graph from, per round
    "graph": lambda: patterns.sliding_window(N, 2, 2),
    "lazy_graph": lambda: patterns.complete_per_graph(None, N),
    "callable": lambda: lambda Lq, Lk: patterns.sliding_window(Lq, 3, 1),
    "name": lambda: "causal",
}


def _mha(pattern):
    from graphattn.nn import MultiheadGraphAttention

    torch.manual_seed(0)
    layer = MultiheadGraphAttention(H * C, H, batch_first=True, pattern=pattern).double().eval()
    return layer.requires_grad_(False)  # grads of the inputs only: no shared .grad accumulation


def _mha_call(layer, seed):
    """One call of a shared module: the batch size varies by call (so the cached block
    graph is replaced), every third call with a padding mask (the uncached path)."""
    batch = 1 + seed % 3
    x = torch.randn(batch, N, H * C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x.requires_grad_()
    kpm = None
    if seed % 3 == 2:
        kpm = torch.zeros(batch, N, dtype=torch.bool)
        kpm[:, -3:] = True
    out, w = layer(x, x, x, key_padding_mask=kpm, need_weights=seed % 2 == 0)
    out.square().sum().backward()
    return [out, x.grad] + ([] if w is None else [w])


@pytest.mark.parametrize("kind", MHA_PATTERNS)
def test_a_shared_multihead_module_equals_one_thread(kind):
    """N threads x M calls of one MultiheadGraphAttention (its pattern-graph cache built
    and replaced concurrently) give exactly what one thread alone gives."""
    _same_as_one_thread(_mha_call, lambda: _mha(MHA_PATTERNS[kind]()))
