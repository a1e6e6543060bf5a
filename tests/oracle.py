"""An independent oracle: attention computed destination by destination with
torch.softmax over each node's in-edge list (no scatter, no CSR)."""

import torch
import torch.nn.functional as F


def loop_attention(scores, values, edge_index, num_dst):
    """scores [E, H], values [E, H, C] (per-edge messages) -> out [num_dst, H, C], alpha [E, H]."""
    E, H = scores.shape
    C = values.size(-1)
    out = values.new_zeros(num_dst, H, C)
    alpha = scores.new_zeros(E, H)
    dst = edge_index[1]
    for i in range(num_dst):
        idx = (dst == i).nonzero().view(-1)
        if idx.numel() == 0:
            continue
        s = scores[idx]  # [k, H]
        a = torch.softmax(s, dim=0)
        a = torch.where(torch.isnan(a), torch.zeros_like(a), a)  # all -inf row -> 0
        alpha[idx] = a
        out[i] = (a.unsqueeze(-1) * values[idx]).sum(0)
    return out, alpha


def gat_oracle(score_src, score_dst, value, edge_index, num_dst, negative_slope=0.2, edge_score=None):
    src, dst = edge_index
    s = score_src[src] + (score_dst[dst] if score_dst is not None else 0)
    if edge_score is not None:
        s = s + edge_score
    s = F.leaky_relu(s, negative_slope)
    return loop_attention(s, value[src], edge_index, num_dst)


def gatv2_oracle(x_src, x_dst, att, edge_index, num_dst, negative_slope=0.2, edge_feat=None, value=None):
    src, dst = edge_index
    z = x_src[src] + x_dst[dst]
    if edge_feat is not None:
        z = z + edge_feat
    s = (F.leaky_relu(z, negative_slope) * att).sum(-1)
    v = (x_src if value is None else value)[src]
    return loop_attention(s, v, edge_index, num_dst)


def dot_oracle(q, k, v, edge_index, num_dst, scale, edge_key=None, edge_value=None, edge_bias=None):
    src, dst = edge_index
    kk = k[src] + (edge_key if edge_key is not None else 0)
    s = (q[dst] * kk).sum(-1) * scale
    if edge_bias is not None:
        s = s + edge_bias
    vv = v[src] + (edge_value if edge_value is not None else 0)
    return loop_attention(s, vv, edge_index, num_dst)
