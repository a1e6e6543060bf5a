import pytest
import torch
from torch import nn

from graphattn import patterns
from graphattn.nn import GraphTransformerDecoderLayer, GraphTransformerEncoderLayer

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_encoder_layer_matches_torch(norm_first, batch_first):
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(
        16, 4, 32, dropout=0.1, activation="gelu", batch_first=batch_first, norm_first=norm_first
    ).eval()
    ours = GraphTransformerEncoderLayer.from_torch(ref).eval()
    x = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[1, 5:] = True
    mask = torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)
    torch.testing.assert_close(
        ours(x, src_mask=mask, src_key_padding_mask=kpm), ref(x, src_mask=mask, src_key_padding_mask=kpm), **TOL
    )
    torch.testing.assert_close(ours(x), ref(x), **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first):
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(16, 4, 32, batch_first=True, norm_first=norm_first).eval()
    ours = GraphTransformerDecoderLayer.from_torch(ref).eval()
    tgt, mem = torch.randn(2, 6, 16), torch.randn(2, 9, 16)
    tmask = nn.Transformer.generate_square_subsequent_mask(6)
    mkpm = torch.zeros(2, 9, dtype=torch.bool)
    mkpm[0, 7:] = True
    torch.testing.assert_close(
        ours(tgt, mem, tgt_mask=tmask, memory_key_padding_mask=mkpm),
        ref(tgt, mem, tgt_mask=tmask, memory_key_padding_mask=mkpm),
        **TOL,
    )


def test_causal_pattern_equals_causal_mask_and_trains():
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True).eval()
    ours = GraphTransformerEncoderLayer.from_torch(ref, pattern="causal").eval()
    x = torch.randn(2, 8, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(8)
    torch.testing.assert_close(ours(x), ref(x, src_mask=mask), **TOL)
    windowed = GraphTransformerEncoderLayer(
        16, 4, 32, batch_first=True, pattern=lambda Lq, Lk: patterns.sliding_window(Lq, 2, 0)
    )
    out = windowed(x)
    out.sum().backward()
    assert all(p.grad is not None for p in windowed.parameters())


def test_from_torch_type_check():
    with pytest.raises(TypeError, match="TransformerEncoderLayer"):
        GraphTransformerEncoderLayer.from_torch(nn.Linear(2, 2))
