"""GAT and GATv2 layers with PyG's constructor arguments and conventions."""

from __future__ import annotations

from functools import partial
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .. import ops
from ..graph import FillValue
from ._base import GraphLayer, GraphLike, PyGSpec, glorot_, has, make_linear, reset_linear, split_pair

Channels = Union[int, Tuple[int, int]]


def _folded_scores(x: Tensor, lin: nn.Module, att: Tensor) -> Tensor:
    """``(lin(x).view(N, H, C) * att).sum(-1)`` computed as ``x @ (W^T att)``:
    the per-head score projection folded into the weight (exact algebraically).
    For inputs that are not projected anyway (a bipartite layer's destinations,
    edge features): it never builds ``lin(x)``."""
    if isinstance(lin, nn.LazyLinear):  # becomes nn.Linear once materialised
        lin(x[:1])  # a lazy layer learns its input size from its first input
    H, C = att.shape[-2], att.shape[-1]
    w = (lin.weight.view(H, C, -1) * att.view(H, C, 1)).sum(1)  # [H, in]
    return x @ w.t()


def _projected_scores(x_proj: Tensor, *atts: Tensor) -> Tuple[Tensor, ...]:
    """``(x_proj * att).sum(-1)`` for each ``att`` ``[1, H, C]``, from the projected
    ``[N, H, C]`` nodes, as one matmul with a block-diagonal ``[H*C, k*H]`` matrix.

    Used where the nodes are projected anyway (their values): the scores' gradient
    then joins the values' before the projection's backward, so that backward is one
    matmul. Folding them into the weight instead (``_folded_scores``) costs two more
    ``[N, in]`` matmuls with an inner size of ``H`` in backward, which on CPU took as
    long as the attention kernel itself.
    """
    N, H, C = x_proj.shape
    eye = torch.eye(H, dtype=x_proj.dtype, device=x_proj.device)
    blocks = [(att.reshape(H, C, 1) * eye.view(H, 1, H)).reshape(H * C, H) for att in atts]
    scores = x_proj.reshape(N, H * C) @ torch.cat(blocks, dim=1)  # [N, k*H]
    return tuple(scores.split(H, dim=1))


def _heads_out(layer, out: Tensor, res: Optional[Tensor]) -> Tensor:
    """Concatenate or average the heads, then residual and bias (PyG's order)."""
    out = out.reshape(-1, layer.heads * layer.out_channels) if layer.concat else out.mean(dim=1)
    if res is not None:
        out = out + res
    if layer.bias is not None:
        out = out + layer.bias
    return out


def _pyg_spec(name: str, *extra: str) -> PyGSpec:
    """The arguments GATConv and GATv2Conv read from their PyG counterparts (``extra``: the layer's own)."""
    same = (
        "in_channels",
        "out_channels",
        "heads",
        "concat",
        "negative_slope",
        "dropout",
        "add_self_loops",
        "edge_dim",
        "fill_value",
    ) + extra
    return PyGSpec(
        f"torch_geometric.nn.{name}",
        {
            **{arg: arg for arg in same},
            "bias": has("bias"),
            "residual": lambda conv: getattr(conv, "residual", False),  # older PyG has none
        },
    )


class _AdditiveAttentionConv(GraphLayer):
    """What GATConv and GATv2Conv share: PyG's common arguments, stored under PyG's
    names, and the output parameters (residual projection, bias) built after each
    layer's own projections, so parameter order matches PyG's."""

    def __init__(
        self,
        in_channels: Channels,
        out_channels: int,
        heads: int,
        concat: bool,
        negative_slope: float,
        dropout: float,
        add_self_loops: bool,
        edge_dim: Optional[int],
        fill_value: FillValue,
        residual: bool,
        prune_threshold: Optional[float],
    ) -> None:
        super().__init__(
            prune_threshold,
            out_channels=out_channels,
            heads=heads,
            dropout=dropout,
            negative_slope=negative_slope,
            edge_dim=edge_dim,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = concat
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.add_self_loops = add_self_loops
        self.edge_dim = edge_dim
        self.fill_value = fill_value
        self.residual = residual

    def _output_parameters(self, bias: bool) -> None:
        total = self.out_channels * (self.heads if self.concat else 1)
        if self.residual:
            in_dst = self.in_channels if isinstance(self.in_channels, int) else self.in_channels[1]
            self.res = make_linear(in_dst, total, bias=False, glorot=True)
        else:
            self.register_parameter("res", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(total))
        else:
            self.register_parameter("bias", None)

    def has_edge_features(self) -> bool:
        """Built with ``edge_dim``: the score has an edge term (``lin_edge``)."""
        return self.lin_edge is not None


class GATConv(_AdditiveAttentionConv):
    r"""Graph attention (Veličković et al., 2018), PyG's ``GATConv`` on graphattn's ops.

    .. math::
        \mathbf{x}'_i = \Big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}(i) \cup \{i\}}
        \alpha^{h}_{j,i}\, \mathbf{\Theta}^{h}_{s} \mathbf{x}_j,\qquad
        \alpha^{h}_{j,i} = \operatorname{softmax}_i\!\Big(\mathrm{LeakyReLU}\big(
        \mathbf{a}^{h\top}_{s} \mathbf{\Theta}^{h}_{s}\mathbf{x}_j
        + \mathbf{a}^{h\top}_{t} \mathbf{\Theta}^{h}_{t}\mathbf{x}_i
        + \mathbf{a}^{h\top}_{e} \mathbf{\Theta}^{h}_{e}\mathbf{e}_{j,i}\big)\Big)

    Arguments and parameter names are PyG's, so ``state_dict``s are interchangeable
    and :meth:`from_pyg` copies a PyG layer.

    Args:
        in_channels: input size, ``-1`` for lazy, or ``(in_src, in_dst)`` for bipartite graphs.
        out_channels: size per head.
        heads: number of heads ``H``.
        concat: concatenate heads (``[N, H*C]``) or average them (``[N, C]``).
        negative_slope: LeakyReLU slope.
        dropout: attention dropout probability (on the normalised weights, training only).
        add_self_loops: remove existing self-loops and add one per node (cached on the graph).
        edge_dim: edge feature size; enables the edge term of the score.
        fill_value: edge features of added self-loops: a number, a tensor, or a reduction
            (``"mean"``, ``"add"``, ``"max"``, ``"min"``, ``"mul"``) of the node's incoming edges.
        bias: learnable output bias.
        residual: add a linear projection of the destination input to the output.
        prune_threshold: defence option (not in PyG): drop edges whose endpoints' input
            features have cosine similarity below this before attending (self-loops kept).

    Forward: ``forward(x, edge_index, edge_attr=None, size=None, return_attention_weights=None)``
    (PyG's signature) with ``edge_index`` a ``[2, E]`` tensor (row 0 = source), a sparse
    ``adj_t`` (torch COO/CSR/CSC or ``torch_sparse.SparseTensor``; rows are destinations)
    or a :class:`graphattn.Graph`; ``size = (num_src, num_dst)``. With weights it returns
    ``(out, (edge_index, alpha))`` (``edge_index`` including added self-loops, ``alpha``
    ``[E', H]`` before dropout), or for a sparse ``adj_t`` the weights in its form.
    """

    pyg_spec = _pyg_spec("GATConv")

    def __init__(
        self,
        in_channels: Channels,
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        edge_dim: Optional[int] = None,
        fill_value: FillValue = "mean",
        bias: bool = True,
        residual: bool = False,
        prune_threshold: Optional[float] = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            heads,
            concat,
            negative_slope,
            dropout,
            add_self_loops,
            edge_dim,
            fill_value,
            residual,
            prune_threshold,
        )
        HC = heads * out_channels
        self.lin = self.lin_src = self.lin_dst = None
        if isinstance(in_channels, int):
            self.lin = make_linear(in_channels, HC, bias=False, glorot=True)
        else:
            self.lin_src = make_linear(in_channels[0], HC, bias=False, glorot=True)
            self.lin_dst = make_linear(in_channels[1], HC, bias=False, glorot=True)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_channels))
        if edge_dim is not None:
            self.lin_edge = make_linear(edge_dim, HC, bias=False, glorot=True)
            self.att_edge = nn.Parameter(torch.empty(1, heads, out_channels))
        else:
            self.lin_edge = None
            self.register_parameter("att_edge", None)
        self._output_parameters(bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin, self.lin_src, self.lin_dst, self.lin_edge, self.res):
            if lin is not None:
                reset_linear(lin, glorot=True)
        glorot_(self.att_src)
        glorot_(self.att_dst)
        glorot_(self.att_edge)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(
        self,
        x,
        edge_index: GraphLike,
        edge_attr: Optional[Tensor] = None,
        size: Optional[Tuple[int, int]] = None,
        return_attention_weights: Optional[bool] = None,
    ):
        H, C = self.heads, self.out_channels
        x_src_in, x_dst_in, _ = split_pair(x)
        res = self.res(x_dst_in) if (self.res is not None and x_dst_in is not None) else None
        lin_src = self.lin if self.lin is not None else self.lin_src
        lin_dst = self.lin if self.lin is not None else self.lin_dst
        x_src = lin_src(x_src_in).view(-1, H, C)  # the values; destinations need only their scores
        if x_dst_in is x_src_in and lin_dst is lin_src:  # one node set: both scores from the values
            score_src, score_dst = _projected_scores(x_src, self.att_src, self.att_dst)
        else:
            (score_src,) = _projected_scores(x_src, self.att_src)
            score_dst = None if x_dst_in is None else _folded_scores(x_dst_in, lin_dst, self.att_dst)
        graph, edge_attr, adjacency = self.prepare_graph(
            x_src_in, x_dst_in, edge_index, edge_attr, size, self.add_self_loops, self.fill_value
        )
        # the [E, H, C] edge embedding is never built
        edge_score = (
            None
            if edge_attr is None
            else _folded_scores(edge_attr.to(self.att_edge.dtype), self.lin_edge, self.att_edge)
        )
        op = partial(
            ops.gat_attention,
            score_src,
            score_dst,
            x_src,
            graph,
            negative_slope=self.negative_slope,
            edge_score=edge_score,
            dropout=self.dropout,
            training=self.training,
        )
        out, weights = self.attend(op, graph, adjacency, return_attention_weights, value=x_src)
        return self.with_weights(_heads_out(self, out, res), weights)


class GATv2Conv(_AdditiveAttentionConv):
    r"""GATv2 (Brody et al., 2022), PyG's ``GATv2Conv`` on graphattn's ops.

    .. math::
        \mathbf{x}'_i = \Big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}(i) \cup \{i\}}
        \alpha^{h}_{j,i}\, \mathbf{\Theta}^{h}_{s}\mathbf{x}_j,\qquad
        \alpha^{h}_{j,i} = \operatorname{softmax}_i\!\Big(\mathbf{a}^{h\top}\mathrm{LeakyReLU}\big(
        \mathbf{\Theta}^{h}_{s}\mathbf{x}_j + \mathbf{\Theta}^{h}_{t}\mathbf{x}_i
        + \mathbf{\Theta}^{h}_{e}\mathbf{e}_{j,i}\big)\Big)

    Arguments as :class:`GATConv`, plus ``share_weights`` (use one matrix for
    :math:`\Theta_s` and :math:`\Theta_t`). ``bias`` also controls the biases of
    ``lin_l`` / ``lin_r``, as in PyG.
    """

    pyg_spec = _pyg_spec("GATv2Conv", "share_weights")

    def __init__(
        self,
        in_channels: Channels,
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        edge_dim: Optional[int] = None,
        fill_value: FillValue = "mean",
        bias: bool = True,
        share_weights: bool = False,
        residual: bool = False,
        prune_threshold: Optional[float] = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            heads,
            concat,
            negative_slope,
            dropout,
            add_self_loops,
            edge_dim,
            fill_value,
            residual,
            prune_threshold,
        )
        self.share_weights = share_weights
        HC = heads * out_channels
        in_src, in_dst = (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        self.lin_l = make_linear(in_src, HC, bias=bias, glorot=True)
        self.lin_r = self.lin_l if share_weights else make_linear(in_dst, HC, bias=bias, glorot=True)
        self.att = nn.Parameter(torch.empty(1, heads, out_channels))
        self.lin_edge = make_linear(edge_dim, HC, bias=False, glorot=True) if edge_dim is not None else None
        self._output_parameters(bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin_l, self.lin_r, self.lin_edge, self.res):
            if lin is not None:
                reset_linear(lin, glorot=True)
        glorot_(self.att)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(
        self,
        x,
        edge_index: GraphLike,
        edge_attr: Optional[Tensor] = None,
        return_attention_weights: Optional[bool] = None,
        *,
        size: Optional[Tuple[int, int]] = None,
    ):
        H, C = self.heads, self.out_channels
        x_src_in, x_dst_in, _ = split_pair(x)
        if x_dst_in is None:
            raise ValueError("GATv2Conv needs destination features: pass (x_src, x_dst) with x_dst not None")
        res = self.res(x_dst_in) if self.res is not None else None
        x_l = self.lin_l(x_src_in).view(-1, H, C)
        x_r = x_l if (self.share_weights and x_dst_in is x_src_in) else self.lin_r(x_dst_in).view(-1, H, C)
        graph, edge_attr, adjacency = self.prepare_graph(
            x_src_in, x_dst_in, edge_index, edge_attr, size, self.add_self_loops, self.fill_value
        )
        edge_feat = None if edge_attr is None else self.lin_edge(edge_attr.to(x_l.dtype)).view(-1, H, C)
        op = partial(
            ops.gatv2_attention,
            x_l,
            x_r,
            self.att,
            graph,
            negative_slope=self.negative_slope,
            edge_feat=edge_feat,
            dropout=self.dropout,
            training=self.training,
        )
        out, weights = self.attend(op, graph, adjacency, return_attention_weights, value=x_l)
        return self.with_weights(_heads_out(self, out, res), weights)
