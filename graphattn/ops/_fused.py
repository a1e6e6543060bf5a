"""The fused kernels' common calling convention (CPU and Triton backends).

Both kernels compute, for an edge ``e = (j -> i)``, a score from a destination-side
node tensor ``dst_term[i]`` (GAT's ``a_dst . W x_i``, GATv2's ``W_r x_i``, the dot
product's query), a source-side node tensor ``src_term[j]`` (``a_src . W x_j``,
``W_l x_j``, the key), optional per-edge terms ``edge_score_term[e]`` (inside the
score) and ``edge_bias[e]`` (added to it), and aggregate messages ``value[j]`` (+
``edge_value[e]``); GATv2 also takes ``att``:

* GAT: ``leaky(src_term[j] + dst_term[i] + edge_score_term[e])`` (one number per head;
  ``dst_term`` may be ``None``);
* GATv2: ``att . leaky(src_term[j] + dst_term[i] + edge_score_term[e])``;
* dot product: ``scale * dst_term[i] . (src_term[j] + edge_score_term[e]) + edge_bias[e]``.

:func:`backend_functions` maps the public ops' arguments onto that convention for a
backend's ``run`` function.
"""
from __future__ import annotations

GAT, GATV2, DOT = 0, 1, 2
# Why the fused kernels decline a call with a per-edge message mask (explainers):
# only reference applies one; a fused version would need its gradient per edge.
MASK_REASON = "a per-edge message mask is set (edge_mask, e.g. by an explainer); only reference applies it"


def backend_functions(run):
    """``(gat, gatv2, dot_product)`` backend functions calling
    ``run(kind, graph, dst_term, src_term, value, edge_score_term, edge_bias, edge_value, att, slope, scale,
    dropout, training, need_weights)``."""

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
