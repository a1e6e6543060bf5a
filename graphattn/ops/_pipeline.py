"""The one path every attention op runs, driven by the op's record.

An op is declared once, as an :class:`OpRecord`: its input description (``_inputs``,
which also says how its arguments fill the fused kernels' terms and names its score
kind), which of its inputs are per-node (moved by a node order), which are per-edge
terms. How a backend is called and the reference's score formula (for weights that must
be differentiable) follow from the description. :func:`run` then does for every op, in this order:

1. check the inputs once against the description (and resolve the graph);
2. apply the graph's node order, if it has one (run on the relabelled graph);
3. describe the call (the same keys for every op) and pick a backend;
4. run it on the per-edge inputs in CSR order;
5. finish: weights in the caller's edge order (recomputed differentiably where the
   caller may differentiate them), the node order undone.

The public ops in :mod:`.functional` are documented one-liners over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from ..graph import Graph
from ._dispatch import select_backend
from . import reference as _reference
from ._dtypes import compute_dtype
from ._fused import backend_keywords, kernel_terms, kind_code
from ._inputs import OpSpec, check_call, edge_rows
from .softmax import segment_softmax

GraphLike = Union[Graph, Tensor]
Tensors = Dict[str, Optional[Tensor]]


@dataclass(frozen=True)
class OpRecord:
    """Everything the pipeline needs to know about one attention op.

    A backend's function is called with the spec's ``fused.args`` positionally, the
    graph, then its edge terms and scalars by keyword (:meth:`call`); the reference's
    formula for the spec's score kind gives differentiable weights (:meth:`scores`)."""

    spec: OpSpec
    lead: str  # the input whose device and dtype describe the call
    node_inputs: Tuple[str, ...]  # permuted into a graph's node order
    edge_terms: Tuple[str, ...]  # per-edge terms (``has_edge_terms``)
    score_inputs: Tuple[str, ...]  # inputs the weights depend on
    defaults: Tuple[Tuple[str, str], ...] = ()  # (input, input whose tensor it takes when absent)

    @property
    def name(self) -> str:
        return self.spec.op

    @property
    def edge_inputs(self) -> Tuple[str, ...]:
        return self.edge_terms + ("edge_mask",)

    def arguments(self, tensors: Tensors, edges: Tensors, scalars: Mapping[str, object]) -> Dict[str, object]:
        """The backend function's arguments by name: its positional tensors from ``tensors``
        (an absent one by its default), its edge terms from ``edges`` (CSR order), the scalars."""
        given = {name: tensors.get(name) for name in self.spec.fused.args}
        for name, fallback in self.defaults:
            if given.get(name) is None:
                given[name] = tensors[fallback]
        given.update({name: edges[name] for name in self.edge_terms})
        given.update({s.name: scalars[s.name] for s in self.spec.scalars})
        return given

    def call(
        self,
        fn: Callable,
        g: Graph,
        tensors: Tensors,
        edges: Tensors,
        scalars: Mapping[str, object],
        training: bool,
        need_weights: bool,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """``fn`` (a backend's function of this op) on the call's inputs: ``(out, alpha)``."""
        given = self.arguments(tensors, edges, scalars)
        keywords = {name: given[name] for name in backend_keywords(self.spec)}
        return fn(
            *[given[name] for name in self.spec.fused.args],
            g,
            dropout=given["dropout"],
            training=training,
            need_weights=need_weights,
            **keywords,
            **mask_kwarg(edges),
        )

    def scores(
        self, g: Graph, tensors: Tensors, edges: Tensors, scalars: Mapping[str, object], dtype: torch.dtype
    ) -> Tensor:
        """The reference's scores ``[E, H]`` (CSR order) for the call, by its kind's formula."""
        terms = kernel_terms(self.spec, self.arguments(tensors, edges, scalars))
        return _reference.kind_scores(
            kind_code(self.spec.fused.kind),
            g,
            terms["dst_term"],
            terms["src_term"],
            terms["edge_score_term"],
            terms["edge_bias"],
            terms["att"],
            terms["slope"],
            terms["scale"],
            dtype,
        )


def describe_call(
    value: Tensor,
    graph: Graph,
    dims: dict,
    scalars: dict,
    training: bool,
    return_weights: bool,
    tensors: Mapping[str, Optional[Tensor]],
    edge_terms: Tuple[str, ...],
) -> dict:
    """The description of an attention call that every backend's ``decline`` receives,
    with the same keys for every op, so no backend has to guess: device, dtype, graph,
    dropout in effect, whether weights are wanted, whether per-edge terms or a message
    mask are given, heads and channels per head."""
    return dict(
        device=value.device,
        dtype=value.dtype,
        graph=graph,
        dropout=scalars["dropout"] if training else 0.0,
        need_weights=return_weights,
        has_edge_terms=any(tensors.get(name) is not None for name in edge_terms),
        has_edge_mask=tensors.get("edge_mask") is not None,
        heads=dims.get("heads"),
        channels=dims.get("channels"),
    )


def mask_kwarg(edges: Mapping[str, Optional[Tensor]]) -> dict:
    """``edge_mask`` for the backend call, only when given: the fused backends, which
    decline masked calls, take no such argument."""
    m = edges["edge_mask"]
    return {} if m is None else {"edge_mask": m}


def run(
    record: OpRecord,
    graph: GraphLike,
    tensors: Tensors,
    scalars: Mapping[str, object],
    *,
    training: bool,
    return_weights: bool,
    backend: Optional[str],
):
    """One call of ``record``'s op: ``out``, or ``(out, alpha in user order)``."""
    g, dims, checked = check_call(record.spec, graph, tensors, scalars)
    return run_checked(record, g, dims, checked, tensors, training, return_weights, backend)


def run_checked(
    record: OpRecord,
    g: Graph,
    dims: dict,
    scalars: dict,
    tensors: Tensors,
    training: bool,
    return_weights: bool,
    backend: Optional[str],
):
    if g.node_order is not None:
        return _in_node_order(record, g, dims, scalars, tensors, training, return_weights, backend)
    impl = select_backend(
        record.name,
        backend,
        **describe_call(tensors[record.lead], g, dims, scalars, training, return_weights, tensors, record.edge_terms),
    )
    edges = edge_rows(record.edge_inputs, g, tensors)
    out, alpha = record.call(impl.fn, g, tensors, edges, scalars, training, return_weights)
    if not return_weights:
        return out
    if (
        impl.name != "reference"
        and torch.is_grad_enabled()
        and any(isinstance(tensors.get(n), Tensor) and tensors[n].requires_grad for n in record.score_inputs)
    ):
        alpha = _differentiable_weights(record, g, tensors, edges, scalars).to(alpha.dtype)
    return out, g.to_user_order(alpha)


def _differentiable_weights(record: OpRecord, g: Graph, tensors: Tensors, edges: Tensors, scalars: dict) -> Tensor:
    """The weights from the reference's score formula. The fused backends return weights
    without a gradient; when the caller may differentiate them (an attention
    regulariser), this gives the same gradient on every backend, at what the
    reference's scores cost (``E x H x C`` for GATv2 and dot-product), and only then."""
    dtype = compute_dtype(tensors[record.lead].dtype)
    return segment_softmax(record.scores(g, tensors, edges, scalars, dtype), g.row, g.num_dst)


def _in_node_order(
    record: OpRecord,
    g: Graph,
    dims: dict,
    scalars: dict,
    tensors: Tensors,
    training: bool,
    return_weights: bool,
    backend: Optional[str],
):
    """The op run on ``g.relabeled`` with its per-node inputs permuted into the graph's
    node order, and its output permuted back (:meth:`Graph.reorder_nodes`). Edge inputs
    and the returned weights keep the caller's edge order, which the relabelled graph
    shares. Square graphs only, so sources and destinations share one order."""
    order = g.node_order
    moved = dict(tensors)
    for name in record.node_inputs:
        if moved.get(name) is not None:
            moved[name] = order.apply(moved[name])
    result = run_checked(record, g.relabeled, dims, scalars, moved, training, return_weights, backend)
    return (order.undo(result[0]), result[1]) if return_weights else order.undo(result)
