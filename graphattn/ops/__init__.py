"""Attention ops: the only place in graphattn where attention is computed.

Public functions: :func:`edge_softmax`, :func:`gat_attention`,
:func:`gatv2_attention`, :func:`dot_product_attention`, :func:`score_attention` (scores the
caller computed: any attention variant gets the fused softmax and aggregation), and beside the graph ops
:func:`linear_attention` (kernelised, no edges). Backends are chosen by
:mod:`graphattn.ops._dispatch`; force one with ``backend=`` or :func:`use_backend`,
and ask which ran with :func:`last_backend` (and why others did not with :func:`why_not`;
:func:`explain_dispatch` answers for a described call without running it). A named
backend that cannot run a call raises :class:`BackendDeclined` (``.reason`` says why), a
call no backend takes :class:`NoBackendAccepts`.
"""

from . import cpu as _cpu
from . import dense as _dense
from . import flex as _flex
from . import triton_backend as _triton
from . import reference as _reference
from . import scatter as _scatter
from ._fused import OP_KINDS as _FUSED_OPS
from ._dispatch import (
    BackendDeclined,
    NoBackendAccepts,
    available_backends,
    explain_dispatch,
    last_backend,
    register_backend,
    use_backend,
    why_not,
)
from .functional import (
    as_graph,
    dot_product_attention,
    edge_softmax,
    gat_attention,
    gatv2_attention,
    score_attention,
)
from .linear import linear_attention

register_backend("edge_softmax", "reference", _reference.edge_softmax)
# The fused native CPU kernel wins on CPU whenever it can be built (by its prepare, before
# the first call that runs on it; asking it builds nothing).
register_backend(
    "edge_softmax", "cpu", _cpu.edge_softmax, decline=_cpu.edge_softmax_decline, prepare=_cpu.prepare, priority=10
)
# Every fused op (_inputs.FUSED) on the three backends that run any score kind; Triton on
# CUDA (on CPU only when forced under TRITON_INTERPRET=1).
for _op in _FUSED_OPS:
    register_backend(_op, "reference", _reference.FUNCTIONS[_op])
    register_backend(_op, "cpu", _cpu.FUNCTIONS[_op], decline=_cpu.decline, prepare=_cpu.prepare, priority=10)
    register_backend(_op, "triton", _triton.FUNCTIONS[_op], decline=_triton.decline, priority=15)
del _op
# Banded / causal graphs on CUDA: flex attention with a block mask skips blocks
# outside the band (on CPU only when forced; the sparse kernel wins there).
register_backend("dot_product", "flex", _flex.dot_product, decline=_flex.decline, priority=18)
# torch-scatter (optional): slower than reference for edge_softmax in the benchmarks
# (benchmarks/run.py), so it runs only when asked for.
register_backend("edge_softmax", "scatter", _scatter.edge_softmax, decline=_scatter.decline, priority=-10)
# Graphs known to be complete / causal / cross go to PyTorch's SDPA when nothing
# sparse-specific (edge terms, returned weights) is asked for.
register_backend("dot_product", "dense", _dense.dot_product, decline=_dense.decline, priority=20)

__all__ = [
    "edge_softmax",
    "gat_attention",
    "gatv2_attention",
    "dot_product_attention",
    "score_attention",
    "linear_attention",
    "as_graph",
    "use_backend",
    "last_backend",
    "why_not",
    "explain_dispatch",
    "available_backends",
    "register_backend",
    "BackendDeclined",
    "NoBackendAccepts",
]
