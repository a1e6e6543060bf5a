"""Linear attention: the op against a per-query loop, causal chunking, gradients, and the layer's interface."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphattn import ops
from graphattn.nn import GraphTransformerEncoderLayer, LinearAttention


def loop_oracle(q, k, v, causal, kpm=None, eps=1e-6):
    """phi(q_i).sum_j phi(k_j) v_j / phi(q_i).sum_j phi(k_j), one query at a time."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    B, H, L, _ = q.shape
    S = k.size(2)
    out = torch.zeros(B, H, L, v.size(-1), dtype=q.dtype)
    for b in range(B):
        for i in range(L):
            js = [j for j in range(S) if (not causal or j <= i) and (kpm is None or not kpm[b, j])]
            if not js:
                continue
            w = fq[b, :, i : i + 1] @ fk[b, :, js].transpose(-1, -2)  # [H, 1, |js|]
            out[b, :, i] = (w @ v[b, :, js]).squeeze(1) / (w.sum(-1) + eps)
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("L,chunk", [(1, 4), (7, 4), (16, 4), (13, 64)])
def test_matches_loop(causal, L, chunk):
    torch.manual_seed(L)
    q, k, v = (
        torch.randn(2, 3, L, 5, dtype=torch.float64),
        torch.randn(2, 3, L, 5, dtype=torch.float64),
        torch.randn(2, 3, L, 6, dtype=torch.float64),
    )
    out = ops.linear_attention(q, k, v, causal=causal, chunk=chunk)
    torch.testing.assert_close(out, loop_oracle(q, k, v, causal))


def test_key_padding_and_weights():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 7, 4), torch.randn(2, 2, 7, 3)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 4:] = True
    out, w = ops.linear_attention(q, k, v, key_padding_mask=kpm, return_weights=True)
    torch.testing.assert_close(out, loop_oracle(q, k, v, False, kpm), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 5))
    assert (w[1, :, :, 4:] == 0).all()
    torch.testing.assert_close(w @ v, out, atol=1e-5, rtol=1e-5)  # the weights are the ones the output used


def test_causal_weights_are_lower_triangular():
    q = torch.randn(1, 2, 6, 4)
    out, w = ops.linear_attention(q, q, q, causal=True, return_weights=True, chunk=4)
    assert (w.triu(1) == 0).all()
    torch.testing.assert_close(w @ q, out, atol=1e-5, rtol=1e-5)


def test_gradcheck_causal_chunked():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.linear_attention(a, b, c, causal=True, chunk=4), (q, k, v))


def test_bad_inputs():
    q = torch.randn(1, 2, 4, 3)
    with pytest.raises(ValueError, match="as many queries as keys"):
        ops.linear_attention(q, torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3), causal=True)
    with pytest.raises(ValueError, match="key_padding_mask"):
        ops.linear_attention(q, q, q, key_padding_mask=torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        ops.linear_attention(q, q, q, key_padding_mask=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="feature_map"):
        ops.linear_attention(q, q, q, feature_map="softmax")
    with pytest.raises(ValueError, match=r"\(batch, heads, length, dim\)"):
        ops.linear_attention(q[0], q[0], q[0])


@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_layouts_and_from_torch(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)
    lin = LinearAttention.from_torch(mha).eval()
    torch.testing.assert_close(lin.in_proj_weight, mha.in_proj_weight)
    x = torch.randn(3, 5, 8)
    out, w = lin(x, x, x, is_causal=True)
    assert out.shape == x.shape and w.shape == (
        3 if batch_first else 5,
        5 if batch_first else 3,
        5 if batch_first else 3,
    )
    # the same computation by hand from the copied projections
    xb = x if batch_first else x.transpose(0, 1)
    qkv = F.linear(xb, mha.in_proj_weight, mha.in_proj_bias).view(xb.size(0), xb.size(1), 3, 2, 4)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    ref = loop_oracle(q, k, v, causal=True).transpose(1, 2).reshape(xb.size(0), xb.size(1), 8)
    ref = mha.out_proj(ref)
    torch.testing.assert_close(out if batch_first else out.transpose(0, 1), ref, atol=1e-5, rtol=1e-5)
    out1, _ = lin(
        xb[0] if batch_first else x[:, 0],
        xb[0] if batch_first else x[:, 0],
        xb[0] if batch_first else x[:, 0],
        is_causal=True,
        need_weights=False,
    )
    torch.testing.assert_close(out1, ref[0], atol=1e-5, rtol=1e-5)


def test_layer_swaps_into_encoder_layer():
    layer = GraphTransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    layer.self_attn = LinearAttention(16, 4, batch_first=True)
    x = torch.randn(2, 9, 16, requires_grad=True)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    y = layer(x, src_key_padding_mask=pad, is_causal=True)
    y.sum().backward()
    assert y.shape == x.shape and x.grad is not None
    # causal: changing a later token leaves earlier outputs alone
    x2 = x.detach().clone()
    x2[:, 5] += 1.0
    torch.testing.assert_close(layer(x2, src_key_padding_mask=pad, is_causal=True)[:, :5], y[:, :5].detach())


def test_layer_bad_arguments():
    with pytest.raises(TypeError, match="dropout"):  # arguments it does not implement are not taken
        LinearAttention(8, 2, dropout=0.1)
    with pytest.raises(ValueError, match="add_bias_kv"):
        LinearAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="feature_map"):
        LinearAttention(8, 2, feature_map="nope")
    lin = LinearAttention(8, 2)
    x = torch.randn(4, 1, 8)
    with pytest.raises(ValueError, match="attn_mask"):
        lin(x, x, x, attn_mask=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="was expecting embedding dimension of 8, but got 6"):
        lin(torch.randn(4, 1, 6), x, x)
