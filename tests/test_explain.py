"""graphattn.explain: captured weights equal returned ones; summaries on hand-computed cases."""

import csv
import math
import threading

import pytest
import torch
from torch import nn

from graphattn import explain, ops, patterns
from graphattn.explain import AttentionRecord
from graphattn.nn import (
    DotProductConv,
    GATConv,
    GATv2Conv,
    GraphTransformerEncoderLayer,
    LinearAttention,
    MultiheadGraphAttention,
)
from graphattn.nn._base import capturing


class TwoLayerGAT(nn.Module):  # a user's model: no graphattn-specific code in forward
    def __init__(self, conv=GATConv):
        super().__init__()
        self.conv1 = conv(8, 4, heads=2)
        self.conv2 = conv(8, 3, heads=1)

    def forward(self, x, edge_index):
        return self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)


def _graph(n=12, e=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, n, (2, e), generator=g)


@pytest.mark.parametrize("conv", [GATConv, GATv2Conv])
def test_captured_weights_equal_returned_weights(conv):
    torch.manual_seed(0)
    model = TwoLayerGAT(conv).eval()
    x, ei = _graph()
    with explain.capture(model) as cap:
        y = model(x, ei)
    torch.testing.assert_close(y, model(x, ei))  # capturing does not change the output
    assert [r.name for r in cap] == ["conv1", "conv2"]
    h = torch.relu(model.conv1(x, ei))
    _, (ei1, a1) = model.conv1(x, ei, return_attention_weights=True)
    _, (ei2, a2) = model.conv2(h, ei, return_attention_weights=True)
    assert torch.equal(cap["conv1"].edge_index, ei1) and torch.equal(cap["conv2"].edge_index, ei2)
    torch.testing.assert_close(cap["conv1"].weights, a1)
    torch.testing.assert_close(cap["conv2"].weights, a2)
    assert cap["conv1"].num_heads == 2


def test_dot_product_conv_and_training_mode_weights_before_dropout():
    torch.manual_seed(0)
    conv = DotProductConv(8, 4, heads=2, dropout=0.5).train()
    x, ei = _graph()
    with explain.capture(conv) as cap:
        conv(x, ei)
    sums = torch.zeros(12, 2).index_add_(0, cap[0].edge_index[1], cap[0].weights)
    has_in = torch.zeros(12, dtype=torch.bool)
    has_in[ei[1]] = True
    torch.testing.assert_close(sums[has_in], torch.ones(int(has_in.sum()), 2))  # normalised: no dropout in them


def test_sequence_layers_give_dense_maps_equal_to_need_weights():
    torch.manual_seed(0)
    mha = MultiheadGraphAttention(16, 4, batch_first=True).eval()
    x = torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[2, 5:] = True
    _, w = mha(x, x, x, key_padding_mask=pad, average_attn_weights=False)
    with explain.capture() as cap:  # no model: every graphattn layer
        mha(x, x, x, key_padding_mask=pad, need_weights=False)
    rec = cap[0]
    assert rec.seq_shape == (3, 7, 7)
    for h in range(4):
        torch.testing.assert_close(rec.to_dense(h), w[:, h])
    torch.testing.assert_close(rec.to_dense(), w.mean(1))


def test_encoder_layer_with_dense_path_is_captured_and_output_unchanged():
    torch.manual_seed(0)
    layer = GraphTransformerEncoderLayer(
        16, 2, 32, dropout=0.0, batch_first=True, pattern=lambda q, k: patterns.sliding_window(q, 2, 2)
    ).eval()
    x = torch.randn(2, 9, 16)
    ref = layer(x)
    with explain.capture(layer) as cap:
        out = layer(x)
    torch.testing.assert_close(out, ref)
    m = cap["self_attn"].to_dense()
    assert m.shape == (2, 9, 9)
    band = torch.ones(9, 9, dtype=torch.bool).triu(-2).tril(2)
    assert (m[:, ~band] == 0).all() and torch.allclose(m.sum(-1), torch.ones(2, 9))


def test_linear_attention_is_captured():
    lin = LinearAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    _, w = lin(x, x, x, is_causal=True, average_attn_weights=False)
    with explain.capture() as cap:
        lin(x, x, x, is_causal=True, need_weights=False)
    torch.testing.assert_close(cap[0].to_dense(1), w[:, 1])


def test_nothing_recorded_outside_the_context_and_unknown_name():
    model = TwoLayerGAT().eval()
    x, ei = _graph()
    with explain.capture(model) as cap:
        pass
    model(x, ei)
    assert len(cap) == 0
    with pytest.raises(KeyError, match="no attention recorded"):
        cap["conv9"]


def _rec(edges, weights, n, seq_shape=None):
    ei = torch.tensor(edges).t()
    return AttentionRecord(
        "hand", "test", ei, torch.tensor(weights, dtype=torch.float).view(len(edges), -1), n, n, seq_shape
    )


def test_entropy_hand_computed():
    # node 0 <- {1, 2} with (0.5, 0.5): log 2, uniform; node 1 <- {0, 2} with (0.9, 0.1); node 2 <- {0} only
    rec = _rec([(1, 0), (2, 0), (0, 1), (2, 1), (0, 2)], [0.5, 0.5, 0.9, 0.1, 1.0], 3)
    e = explain.entropy(rec)
    h1 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    torch.testing.assert_close(e["entropy"][:, 0], torch.tensor([math.log(2), h1, 0.0]))
    torch.testing.assert_close(e["uniform"], torch.tensor([math.log(2), math.log(2), 0.0]))
    torch.testing.assert_close(e["normalized"][:, 0], torch.tensor([1.0, h1 / math.log(2), 1.0]))


def test_head_agreement_hand_computed():
    # node 0: heads identical -> 1; node 1: heads disjoint one-hot -> JS = 1 bit -> 0
    rec = _rec([(1, 0), (2, 0), (0, 1), (2, 1)], [[0.3, 0.3], [0.7, 0.7], [1.0, 0.0], [0.0, 1.0]], 3)
    a = explain.head_agreement(rec)
    torch.testing.assert_close(a[:2], torch.tensor([1.0, 0.0]))
    assert math.isnan(a[2])


def test_rollout_hand_computed():
    # two layers over 2 nodes: A1 = [[.5,.5],[0,1]], A2 = [[1,0],[.25,.75]] (rows = destinations)
    a1 = _rec([(0, 0), (1, 0), (1, 1)], [0.5, 0.5, 1.0], 2)
    a2 = _rec([(0, 0), (0, 1), (1, 1)], [1.0, 0.25, 0.75], 2)
    A1 = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    A2 = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    eye = torch.eye(2)
    expect = (0.5 * eye + 0.5 * A2) @ (0.5 * eye + 0.5 * A1)
    torch.testing.assert_close(explain.rollout([a1, a2]), expect)
    torch.testing.assert_close(explain.rollout([a1, a2], residual=0.0), A2 @ A1)
    torch.testing.assert_close(explain.rollout([a1, a2], rows=[1]), expect[1:])
    torch.testing.assert_close(explain.rollout([a1, a2]).sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="same"):
        explain.rollout([a1, _rec([(0, 0)], [1.0], 3)])


def test_top_k_and_exports(tmp_path):
    rec = _rec([(1, 0), (2, 0), (3, 0), (0, 1)], [[0.2, 0.4], [0.5, 0.4], [0.3, 0.2], [1.0, 1.0]], 4)
    assert [s for s, _ in explain.top_k(rec, 0, 2)] == [2, 1]
    assert explain.top_k(rec, 0, 1, head=1)[0][0] in (1, 2)
    with pytest.raises(IndexError):
        explain.top_k(rec, 9)
    g = rec.to_networkx()
    assert g[2][0]["attention"] == pytest.approx(0.45) and g[2][0]["attention_h1"] == pytest.approx(0.4)
    rows = list(csv.DictReader(open(rec.to_csv(tmp_path / "a.csv"))))
    assert rows[0]["source"] == "1" and rows[0]["target"] == "0" and float(rows[1]["mean"]) == pytest.approx(0.45)
    dense = rec.to_dense(0)
    assert dense[0, 2] == pytest.approx(0.5) and dense.shape == (4, 4)


def test_plots_write_files(tmp_path):
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    model = TwoLayerGAT().eval()
    x, ei = _graph()
    with explain.capture(model) as cap:
        model(x, ei)
    explain.plot_neighbourhood(
        cap["conv1"], 0, hops=2, labels=torch.arange(12) % 3, injected=ei[:, :2], path=tmp_path / "n.png"
    )
    explain.plot_entropy_histograms(cap.records, path=tmp_path / "e.png")
    mha = MultiheadGraphAttention(8, 2, batch_first=True).eval()
    with explain.capture() as cap2:
        mha(torch.randn(1, 4, 8), torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    explain.plot_sequence_heatmap(cap2[0], ["a", "b", "c", "d"], head="all", path=tmp_path / "s.png")
    with pytest.raises(ValueError, match="not a sequence"):
        explain.plot_sequence_heatmap(cap["conv1"], ["a"])
    for f in ("n.png", "e.png", "s.png"):
        assert (tmp_path / f).stat().st_size > 1000


def test_public_attention_hook_with_a_removable_handle():
    from graphattn.nn import GATConv, register_attention_hook

    layer = GATConv(4, 3, heads=2).eval()
    x, ei = torch.randn(6, 4), torch.randint(0, 6, (2, 15))
    seen = []
    handle = register_attention_hook(lambda mod, e, w, ns, nd, seq: seen.append((mod, e.shape, w.shape, seq)))
    _, (ei_loops, alpha) = layer(x, ei, return_attention_weights=True)
    handle.remove()
    layer(x, ei)
    assert seen == [(layer, ei_loops.shape, alpha.shape, None)]
    from graphattn import explain

    assert explain.register_attention_hook is register_attention_hook  # the same registry, under explain too


# ------------------------------------------------------------------ scope: per thread
def _spy_return_weights(monkeypatch, op_name):
    """Wrap ``ops.<op_name>``: ``calls`` lists ``(thread name, return_weights)`` per call."""
    real, calls = getattr(ops, op_name), []

    def spy(*args, **kwargs):
        calls.append((threading.current_thread().name, bool(kwargs.get("return_weights", False))))
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, op_name, spy)
    return calls


def _in_thread(fn, name):
    errors = []

    def run():
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - reported in the caller's thread
            errors.append(exc)

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join()
    assert not errors, errors[0]


def _self_attend(mha, *_):
    seq = torch.zeros(2, 5, 8).normal_(generator=torch.Generator().manual_seed(0))
    return mha(seq, seq, seq, need_weights=False)


THREAD_CASES = {
    "GATConv": (lambda: GATConv(8, 4, heads=2), "gat_attention", lambda m, x, ei: m(x, ei)),
    "DotProductConv": (lambda: DotProductConv(8, 4, heads=2), "dot_product_attention", lambda m, x, ei: m(x, ei)),
    "MultiheadGraphAttention": (
        lambda: MultiheadGraphAttention(8, 2, batch_first=True),
        "dot_product_attention",
        _self_attend,
    ),
}


@pytest.mark.parametrize("case", THREAD_CASES)
def test_capture_in_one_thread_leaves_other_threads_alone(monkeypatch, case):
    make, op_name, call = THREAD_CASES[case]
    layer = make().eval()
    x, ei = _graph()
    calls = _spy_return_weights(monkeypatch, op_name)
    seen = []
    with explain.capture() as cap:  # no model: every graphattn layer, but only in this thread
        _in_thread(lambda: seen.append(capturing()), "other")
        _in_thread(lambda: call(layer, x, ei), "other")
        assert len(cap) == 0  # the other thread's call recorded nothing ...
        assert calls == [("other", False)]  # ... and did not compute weights it was not asked for
        call(layer, x, ei)
    assert seen == [False]
    assert calls[1] == (threading.current_thread().name, True)
    assert len(cap) == 1 and cap[0].layer == type(layer).__name__


def test_a_hook_registered_in_one_thread_is_not_called_from_another():
    layer = GATConv(8, 4, heads=2).eval()
    x, ei = _graph()
    seen = []
    handle = explain.register_attention_hook(lambda mod, *rest: seen.append(threading.current_thread().name))
    try:
        _in_thread(lambda: layer(x, ei), "other")
        layer(x, ei)
    finally:
        handle.remove()
    assert seen == [threading.current_thread().name]


def test_two_threads_capturing_at_once_each_see_their_own_calls():
    torch.manual_seed(0)
    layers = {"gat": GATConv(8, 4, heads=2).eval(), "gatv2": GATv2Conv(8, 3, heads=3).eval()}
    x, ei = _graph()
    expected = {k: layer(x, ei, return_attention_weights=True)[1] for k, layer in layers.items()}
    calls, barrier, caps, errors = 6, threading.Barrier(2), {}, []

    def work(key):
        try:
            with explain.capture() as cap:  # no model: whatever this thread runs
                barrier.wait(10)  # both captures open before either thread runs its layer
                for _ in range(calls):
                    layers[key](x, ei)
                barrier.wait(10)  # and both still open until both are done
            caps[key] = cap
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(k,)) for k in layers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for key, layer in layers.items():
        cap = caps[key]
        assert len(cap) == calls and {r.layer for r in cap} == {type(layer).__name__}
        ei_loops, alpha = expected[key]
        for rec in cap:
            assert torch.equal(rec.edge_index, ei_loops)
            torch.testing.assert_close(rec.weights, alpha)
