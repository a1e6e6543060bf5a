"""AGNN (attention-based GNN) on ``ops.score_attention``: a layer with its own score
formula that gets the fused softmax and aggregation without a kernel of its own."""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._base import GraphLayer, GraphLike, PyGSpec


class AGNNConv(GraphLayer):
    r"""The graph attention propagation of AGNN (Thekumparampil et al., 2018), PyG's
    ``AGNNConv`` on graphattn's ops.

    .. math::
        \mathbf{x}'_i = \sum_{j \in \mathcal{N}(i) \cup \{ i \}} \alpha_{i,j} \mathbf{x}_j,\qquad
        \alpha_{i,j} = \operatorname{softmax}_i\!\left(\beta \cdot \cos(\mathbf{x}_i, \mathbf{x}_j)\right)

    The scores are written here in plain PyTorch (one ``[E]`` cosine per edge) and
    handed to :func:`graphattn.ops.score_attention`, which runs the softmax and the
    weighted sum fused: the pattern for any attention variant whose score has no
    kernel of its own.

    Args:
        requires_grad: learn :math:`\beta` (else it is a buffer fixed at 1), as in PyG.
        add_self_loops: remove existing self-loops and add one per node, as in PyG.

    Forward: ``forward(x, edge_index, return_attention_weights=None)`` with any graph
    input :class:`GATConv` takes. :meth:`from_pyg` copies PyG's ``AGNNConv`` (its
    arguments and :math:`\beta`).
    """

    pyg_spec = PyGSpec(
        "torch_geometric.nn.AGNNConv", {"requires_grad": "requires_grad", "add_self_loops": "add_self_loops"}
    )

    def __init__(self, requires_grad: bool = True, add_self_loops: bool = True) -> None:
        super().__init__(None)
        self.requires_grad = requires_grad
        self.add_self_loops = add_self_loops
        if requires_grad:
            self.beta = nn.Parameter(torch.empty(1))
        else:
            self.register_buffer("beta", torch.ones(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.requires_grad:
            with torch.no_grad():
                self.beta.fill_(1.0)

    def forward(self, x: Tensor, edge_index: GraphLike, return_attention_weights: Optional[bool] = None):
        graph, _, adjacency = self.prepare_graph(x, x, edge_index, None, None, add_self_loops=self.add_self_loops)
        unit = F.normalize(x, p=2.0, dim=-1)
        src, dst = graph.edge_index
        scores = self.beta * (unit.index_select(0, dst) * unit.index_select(0, src)).sum(-1, keepdim=True)
        value = x.unsqueeze(1)  # one head
        out, weights = self.attend(
            partial(ops.score_attention, scores, value, graph), graph, adjacency, return_attention_weights, value=value
        )
        return self.with_weights(out.squeeze(1), weights)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"
