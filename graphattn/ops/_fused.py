"""The fused kernels' common calling convention (CPU and Triton backends).

Both kernels compute, for an edge ``e = (j -> i)``, a score from a destination-side
tensor ``A[i]``, a source-side tensor ``B[j]``, optional per-edge terms ``EF[e]``
(inside the score) and ``EB[e]`` (added to it), and aggregate messages ``V[j]`` (+
``EV[e]``); GATv2 also takes ``att``. :func:`backend_functions` maps the public
ops' arguments onto that convention for a backend's ``run`` function.
"""
from __future__ import annotations

GAT, GATV2, DOT = 0, 1, 2
# Why the fused kernels decline a call with a per-edge message mask (explainers):
# only reference applies one; a fused version would need its gradient per edge.
MASK_REASON = "a per-edge message mask is set (edge_mask, e.g. by an explainer); only reference applies it"


def backend_functions(run):
    """``(gat, gatv2, dot_product)`` backend functions calling
    ``run(kind, graph, A, B, V, EF, EB, EV, att, slope, scale, dropout, training, need_weights)``."""

    def gat(score_src, score_dst, value, graph, *, negative_slope, edge_score, dropout, training,
            need_weights=True):
        return run(GAT, graph, score_dst, score_src, value, edge_score, None, None, None,
                   negative_slope, 1.0, dropout, training, need_weights)

    def gatv2(x_src, x_dst, att, value, graph, *, negative_slope, edge_feat, dropout, training, need_weights=True):
        return run(GATV2, graph, x_dst, x_src, value, edge_feat, None, None, att,
                   negative_slope, 1.0, dropout, training, need_weights)

    def dot_product(query, key, value, graph, *, scale, edge_key, edge_value, edge_bias, dropout, training,
                    need_weights=True):
        return run(DOT, graph, query, key, value, edge_key, edge_bias, edge_value, None,
                   0.0, scale, dropout, training, need_weights)

    return gat, gatv2, dot_product
