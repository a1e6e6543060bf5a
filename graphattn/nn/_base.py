"""Shared plumbing for the graph layers: graph resolution with a safe cache, init,
the forward's ending (:meth:`GraphLayer.attend`), ``from_pyg`` from a declared table
(:class:`FromPyG`), and the per-thread attention hooks."""

from __future__ import annotations

import enum
import functools
import importlib
import math
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional, Tuple, Type, TypeVar, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from torch_geometric.nn.conv import MessagePassing

from .._graph_build import is_sparse_tensor_class as _is_sparse_tensor_class
from ..graph import Graph
from ..ops._inputs import check_scalar

GraphLike = Union[Graph, Tensor]
_Copy = TypeVar("_Copy", bound=nn.Module)


class _ThreadHooks(threading.local):
    """The calling thread's attention hooks: their scope, per thread, is documented in
    :mod:`graphattn.explain`."""

    def __init__(self) -> None:
        self.hooks: "OrderedDict[int, Callable]" = OrderedDict()


_HOOKS = _ThreadHooks()


def register_attention_hook(hook: Callable) -> RemovableHandle:
    """Call ``hook(module, edge_index, weights, num_src, num_dst, seq_shape)`` after every
    attention computed by a graphattn layer (graph layers, ``MultiheadGraphAttention``,
    ``LinearAttention``) in the calling thread, until ``handle.remove()``.

    ``weights`` is ``[E, H]`` in the order of ``edge_index`` (``[2, E]``, row 0 = source),
    taken before dropout; ``seq_shape = (batch, Lq, Lk)`` for sequence layers, else
    ``None``. The tensors are the layer's own: detach or copy what you keep. PyG's
    per-module ``register_message_forward_hook`` also works on the graph layers.
    """
    hooks = _HOOKS.hooks
    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    return handle


def capturing() -> bool:
    """Whether the calling thread has an attention hook (its layers then compute their weights)."""
    return bool(_HOOKS.hooks)


def record_attention(
    module: nn.Module,
    edge_index: Tensor,
    weights: Tensor,
    num_src: int,
    num_dst: int,
    seq_shape: Optional[Tuple[int, int, int]] = None,
) -> None:
    """Give a layer's normalised weights to the calling thread's attention hooks."""
    for hook in list(_HOOKS.hooks.values()):
        hook(module, edge_index, weights, num_src, num_dst, seq_shape)


def glorot_(t: Optional[Tensor]) -> None:
    """Glorot-uniform init over the last two dims (PyG's ``glorot``)."""
    if t is not None:
        a = math.sqrt(6.0 / (t.size(-2) + t.size(-1)))
        with torch.no_grad():
            t.uniform_(-a, a)


def make_linear(in_features: int, out_features: int, bias: bool, glorot: bool = False) -> nn.Module:
    """``nn.Linear``, or ``nn.LazyLinear`` when ``in_features`` is ``-1`` / ``None``
    (PyG's lazy initialisation)."""
    if in_features is None or in_features <= 0:
        return nn.LazyLinear(out_features, bias=bias)
    lin = nn.Linear(in_features, out_features, bias=bias)
    if glorot:
        glorot_(lin.weight)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)
    return lin


def reset_linear(lin: nn.Module, glorot: bool) -> None:
    if isinstance(lin, nn.Linear) and not isinstance(lin, nn.LazyLinear):
        if glorot:
            glorot_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        else:
            lin.reset_parameters()


def split_pair(x) -> Tuple[Tensor, Optional[Tensor], bool]:
    """``x`` or ``(x_src, x_dst)`` -> ``(x_src, x_dst, is_pair)``."""
    if isinstance(x, Tensor):
        if x.dim() != 2:
            raise ValueError(f"x must have shape [num_nodes, channels], got {list(x.shape)}")
        return x, x, False
    if isinstance(x, (tuple, list)) and len(x) == 2:
        x_src, x_dst = x
        if not isinstance(x_src, Tensor) or x_src.dim() != 2:
            raise ValueError("x_src must be a tensor of shape [num_src, channels]")
        if x_dst is not None and (not isinstance(x_dst, Tensor) or x_dst.dim() != 2):
            raise ValueError("x_dst must be a tensor of shape [num_dst, channels] or None")
        return x_src, x_dst, True
    raise TypeError(f"x must be a tensor or a pair (x_src, x_dst), got {type(x).__name__}")


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_hyperparameters(*, out_channels=None, heads=None, dropout=None, negative_slope=None, edge_dim=None) -> None:
    """The constructor arguments every graph layer shares, each checked against its
    domain with an error that names it (the ops apply the same scalar rules per call)."""
    if out_channels is not None:
        check_positive_int("out_channels", out_channels)
    if heads is not None:
        check_positive_int("heads", heads)
    if dropout is not None:
        check_scalar("dropout", dropout, "probability")
    if negative_slope is not None:
        check_scalar("negative_slope", negative_slope, "finite")
    if edge_dim is not None:
        check_positive_int("edge_dim", edge_dim)


def version_of(obj) -> tuple:
    """What a cache must see unchanged to serve what it built from ``obj``: a Graph's
    stamp (its index tensors and their version counters), a tensor's version counter
    and device, a ``torch_sparse.SparseTensor``'s index and value versions. One rule
    for every cache in the layers; any in-place edit changes it."""
    if obj is None:
        return ()
    if isinstance(obj, Graph):
        return obj._stamp()
    if isinstance(obj, Tensor):
        return (obj._version, obj.device)
    storage = getattr(obj, "storage", None)  # torch_sparse.SparseTensor
    parts = [getattr(storage, name, None) for name in ("_row", "_rowptr", "_col", "_value")]
    return tuple(-1 if t is None else t._version for t in parts)


def _no_object() -> None:
    return None


class GraphCache:
    """Remembers what was built for the last objects a layer saw: for :meth:`get`, the
    Graph of an ``edge_index`` tensor, a torch sparse ``adj_t`` or a
    ``torch_sparse.SparseTensor``; for :meth:`lookup`, any value built from a few objects.

    A hit requires the very same objects (weak references: the cache never keeps them
    alive), unchanged (:func:`version_of`), with the same key; anything else rebuilds.
    So a training loop that passes the same adjacency every step sorts once, and
    editing it in place is never served stale. A miss builds under the cache's lock and
    then publishes one tuple, so threads sharing the cache build once and never pair
    one call's objects with another's value.
    """

    def __init__(self) -> None:
        self._entry: Optional[Tuple[tuple, tuple, object]] = None
        self._lock = threading.Lock()

    def __reduce__(self):
        """A copied or pickled cache starts empty (its entry is for the original's objects,
        and a lock cannot be copied): ``copy.deepcopy`` of a layer, as ``to_hetero`` does, works."""
        return GraphCache, ()

    def _hit(self, objects: tuple, stamp: tuple):
        entry = self._entry  # one read: the refs, stamp and value belong together
        if entry is not None and entry[1] == stamp and all(r() is o for r, o in zip(entry[0], objects)):
            return entry
        return None

    def lookup(self, objects: tuple, key: tuple, build: Callable[[], object]):
        """The value built by ``build()`` for ``objects`` (compared by identity and
        :func:`version_of`) and ``key``; built on a miss, once."""
        stamp = (tuple(version_of(o) for o in objects), key)
        entry = self._hit(objects, stamp)
        if entry is None:
            with self._lock:
                entry = self._hit(objects, stamp)  # another thread may have just built it
                if entry is None:
                    refs = tuple(_no_object if o is None else weakref.ref(o) for o in objects)
                    entry = self._entry = (refs, stamp, build())
        return entry[2]

    def get(self, adjacency, num_src: Optional[int], num_dst: Optional[int]) -> Tuple[Graph, Optional[Tensor]]:
        """``(graph, values)``: the graph of ``adjacency`` and, for a sparse one, its
        values in the graph's user order."""

        def build() -> Tuple[Graph, Optional[Tensor]]:
            if isinstance(adjacency, Tensor) and adjacency.layout == torch.strided:
                return Graph.from_edge_index(adjacency, num_src=num_src, num_dst=num_dst), None
            return Graph.from_sparse(adjacency)

        return self.lookup((adjacency,), (num_src, num_dst), build)

    @property
    def graph(self) -> Optional[Graph]:
        """The cached graph, if any."""
        entry = self._entry
        return None if entry is None else entry[2][0]


class AdjacencyForm(str, enum.Enum):
    """The form a layer's caller passed the graph in (and gets attention weights back in)."""

    GRAPH = "graph"  # a graphattn.Graph
    EDGE_INDEX = "edge_index"  # a [2, E] integer tensor
    TORCH_SPARSE = "torch_sparse"  # a torch sparse adj_t (COO / CSR / CSC)
    SPARSE_TENSOR = "sparse_tensor"  # a torch_sparse.SparseTensor


class Adjacency(NamedTuple):
    """What the caller passed as the graph, so results are returned in the same form."""

    kind: AdjacencyForm
    layout: Optional[torch.layout] = None


def _adjacency_kind(edge_index) -> Adjacency:
    if isinstance(edge_index, Graph):
        return Adjacency(AdjacencyForm.GRAPH)
    if isinstance(edge_index, Tensor):
        if edge_index.layout == torch.strided:
            return Adjacency(AdjacencyForm.EDGE_INDEX)
        return Adjacency(AdjacencyForm.TORCH_SPARSE, edge_index.layout)
    if _is_sparse_tensor_class(edge_index):
        return Adjacency(AdjacencyForm.SPARSE_TENSOR)
    raise TypeError(
        "edge_index must be a [2, E] integer tensor, a sparse adjacency (torch sparse adj_t or "
        f"torch_sparse.SparseTensor) or a graphattn.Graph, got {type(edge_index).__name__}"
    )


def _attribute(module: nn.Module, path: str):
    return functools.reduce(getattr, path.split("."), module)


def has(path: str) -> Callable[[nn.Module], bool]:
    """A :class:`PyGSpec` source: whether the PyG module's attribute ``path`` (e.g.
    ``"lin_key.bias"``) is set, i.e. not ``None``."""
    return lambda module: _attribute(module, path) is not None


def pyg_class(path: str) -> type:
    """The PyG class at import path ``path`` (``"torch_geometric.nn.GATConv"``)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_pyg_type(module: nn.Module, path: str) -> None:
    """A ``TypeError`` unless ``module`` is an instance of the PyG class at ``path``."""
    if not isinstance(module, pyg_class(path)):
        raise TypeError(f"expected {path}, got {type(module).__name__}")


class PyGSpec(NamedTuple):
    """How :meth:`FromPyG.from_pyg` copies a PyG module into a graphattn one.

    ``pyg_class`` is the PyG class's import path; ``arguments`` maps each constructor
    argument of the graphattn class to where the PyG module holds it: an attribute
    path (``"dropout.p"``) or a function of the module (e.g. :func:`has`). Parameters
    and buffers carry PyG's names, so the weights then copy by name (:func:`copy_from`).
    """

    pyg_class: str
    arguments: Mapping[str, Union[str, Callable[[nn.Module], Any]]]


class FromPyG:
    """Mixin: :meth:`from_pyg` for a class that declares its PyG counterpart in
    :attr:`pyg_spec` (a :class:`PyGSpec`)."""

    pyg_spec: ClassVar[Optional[PyGSpec]] = None

    @classmethod
    def from_pyg(cls: Type[_Copy], module: nn.Module) -> _Copy:
        """A copy of the PyG module named by ``pyg_spec``: its constructor arguments,
        weights and buffers, on its device and dtype, in its training mode. Another
        module type is a ``TypeError``."""
        spec = cls.pyg_spec
        if spec is None:
            raise TypeError(f"{cls.__name__} declares no PyG counterpart (pyg_spec) to copy from")
        check_pyg_type(module, spec.pyg_class)
        kwargs = {
            name: source(module) if callable(source) else _attribute(module, source)
            for name, source in spec.arguments.items()
        }
        return copy_from(cls(**kwargs), module)


class GraphLayer(FromPyG, MessagePassing):
    """Base of the graph attention layers.

    A PyG ``MessagePassing`` subclass, so PyG's machinery treats the layers as its own:
    explainers find them and set their edge masks, message hooks fire, ``to_hetero`` and
    ``Sequential`` handle them. ``forward`` never runs PyG's ``propagate``: attention runs
    in :mod:`graphattn.ops`; this class turns any graph input (``edge_index``, sparse
    ``adj_t``, ``SparseTensor``, :class:`Graph`) into a Graph, applies an explainer's edge
    mask and PyG's message hooks, and returns attention weights in the caller's form.

    A layer states what differs: its PyG counterpart (:attr:`pyg_spec`, for
    :meth:`from_pyg`), whether it takes edge features (:meth:`has_edge_features`), and
    its scores and op; its forward resolves the graph with :meth:`prepare_graph` and
    ends with :meth:`attend` and :meth:`with_weights`.
    """

    def __init__(self, prune_threshold: Optional[float] = None, **hyperparameters) -> None:
        check_hyperparameters(**hyperparameters)
        super().__init__(aggr="add", node_dim=0)
        self._graph_cache = GraphCache()
        self._alpha: Optional[Tensor] = None  # PyG's attribute; weights are returned, never kept
        if prune_threshold is not None and not -1.0 <= float(prune_threshold) <= 1.0:
            raise ValueError(f"prune_threshold is a cosine similarity in [-1, 1], got {prune_threshold}")
        self.prune_threshold = prune_threshold

    def prune_edges(
        self, x_src: Tensor, x_dst: Optional[Tensor], graph: Graph, edge_attr: Optional[Tensor]
    ) -> Tuple[Graph, Optional[Tensor]]:
        """Defence against structure attacks: before any attention, drop the edges whose
        endpoints' input features have cosine similarity below ``prune_threshold``
        (GNNGuard / Jaccard-style). Self-loops are never dropped. No-op when unset."""
        t = self.prune_threshold
        if t is None:
            return graph, edge_attr
        x_dst = x_src if x_dst is None else x_dst
        if x_src.size(-1) != x_dst.size(-1):
            raise ValueError(
                "prune_threshold compares source and destination features, which need the same "
                f"size; got {x_src.size(-1)} and {x_dst.size(-1)}"
            )
        num_src, num_dst, ei = graph.num_src, graph.num_dst, graph.edge_index
        src, dst = ei[0], ei[1]
        xs, xd = F.normalize(x_src.detach().float(), dim=-1), F.normalize(x_dst.detach().float(), dim=-1)
        sim = torch.empty(src.numel(), device=xs.device)
        step = max(1, 2**24 // max(1, xs.size(-1)))  # bounded memory for wide features
        for a in range(0, src.numel(), step):
            sim[a : a + step] = (xs[src[a : a + step]] * xd[dst[a : a + step]]).sum(-1)
        keep = sim >= t
        if num_src == num_dst:
            keep |= src == dst
        pruned = Graph.from_edge_index(ei[:, keep], num_src=num_src, num_dst=num_dst)
        pruned.node_order = graph.node_order  # the caller's locality order holds for the kept edges too
        if edge_attr is not None:
            edge_attr = edge_attr[keep]
        return pruned, edge_attr

    @torch.compiler.disable
    def _cached_graph(self, adjacency, num_src: Optional[int], num_dst: Optional[int]):
        return self._graph_cache.get(adjacency, num_src, num_dst)

    def prepare_graph(
        self,
        x_src: Tensor,
        x_dst: Optional[Tensor],
        edge_index,
        edge_attr: Optional[Tensor],
        size: Optional[Tuple[int, int]],
        add_self_loops: bool,
        fill_value="mean",
    ) -> Tuple[Graph, Optional[Tensor], Adjacency]:
        """``(graph, edge_attr rows in the graph's user order or None, adjacency kind)``.

        ``size`` is PyG's ``(num_src, num_dst)``; it must agree with the node features and
        gives the destination count when ``x_dst`` is ``None``. A sparse adjacency's values
        serve as ``edge_attr`` when none is passed and the layer has ``edge_dim``."""
        adjacency = _adjacency_kind(edge_index)
        num_src, num_dst = x_src.size(0), None if x_dst is None else x_dst.size(0)
        if size is not None:
            if len(size) != 2:
                raise ValueError(f"size must be (num_src, num_dst), got {size!r}")
            s_src, s_dst = (None if v is None else int(v) for v in size)
            for name, given, have in (("num_src", s_src, num_src), ("num_dst", s_dst, num_dst)):
                if given is not None and have is not None and given != have:
                    raise ValueError(f"size gives {name}={given} but the node features have {have} rows")
            num_dst = s_dst if num_dst is None else num_dst
        values = None
        if adjacency.kind == AdjacencyForm.GRAPH:
            graph = edge_index
            graph.ensure_valid()
        else:
            as_edges = adjacency.kind == AdjacencyForm.EDGE_INDEX  # a sparse adjacency carries its own sizes
            graph, values = self._cached_graph(edge_index, num_src if as_edges else None, num_dst if as_edges else None)
        graph.check_nodes(num_src, num_dst)
        if edge_attr is None and values is not None and self.has_edge_features():
            edge_attr = values
        graph, edge_attr = self.prune_edges(x_src, x_dst, graph, edge_attr)
        if add_self_loops:
            graph = graph.with_self_loops()
        rows = None
        if edge_attr is not None:
            if not self.has_edge_features():
                raise self._no_edge_dim_error()
            rows = self.edge_attr_rows(edge_attr, graph, fill_value)
        return graph, rows, adjacency

    def has_edge_features(self) -> bool:
        """Whether the layer takes ``edge_attr`` (it was built with ``edge_dim``). The base
        layer takes none; a layer with an edge term overrides this. With edge features a
        sparse adjacency's values serve as ``edge_attr`` when none is passed; without,
        an ``edge_attr`` is an error (:meth:`prepare_graph`)."""
        return False

    def explain_edge_mask(self, graph: Graph) -> Optional[Tensor]:
        """The edge mask a PyG explainer set on this layer (``set_masks``), on the graph's
        user-order edges: removed self-loops dropped, added ones masked by 1 (as PyG's
        ``explain_message`` does). ``None`` when no explainer is active."""
        mask = self._edge_mask
        if not self._explain or mask is None:
            return None
        mask = mask.sigmoid() if self._apply_sigmoid else mask
        if mask.dim() != 1 or mask.size(0) != graph.num_base_edges:
            raise ValueError(
                f"the explainer's edge mask has shape {list(mask.shape)} but the graph was built from "
                f"{graph.num_base_edges} edges"
            )
        return graph.edge_attr_for_edges(mask.view(-1, 1), fill_value=1.0).view(-1)

    def wants_weights(self, return_attention_weights) -> bool:
        """Whether the op must return weights: asked for, being captured, or hooked."""
        return bool(return_attention_weights) or capturing() or bool(self._message_forward_hooks)

    def attend(
        self,
        op: Callable[..., Any],
        graph: Graph,
        adjacency: Adjacency,
        return_attention_weights,
        value: Tensor,
        edge_value: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Any]:
        """The end of every layer's forward: run the attention ``op`` (the layer's op
        with its inputs bound, e.g. a ``functools.partial``; called here with the
        explainer's ``edge_mask`` and ``return_weights``), computing weights only when
        :meth:`wants_weights`, then pass them to :meth:`attention_result`.
        Returns ``(out, weights)``, ``weights`` in the caller's form or ``None``."""
        want = self.wants_weights(return_attention_weights)
        out = op(edge_mask=self.explain_edge_mask(graph), return_weights=want)
        out, alpha = out if want else (out, None)
        return out, self.attention_result(graph, alpha, value, adjacency, return_attention_weights, edge_value)

    @staticmethod
    def with_weights(out: Tensor, weights):
        """What ``forward`` returns: ``out``, or ``(out, weights)`` when weights were asked for."""
        return out if weights is None else (out, weights)

    def attention_result(
        self,
        graph: Graph,
        alpha: Optional[Tensor],
        value: Tensor,
        adjacency: Adjacency,
        return_attention_weights,
        edge_value: Optional[Tensor] = None,
    ):
        """Hand the weights to recorders and PyG message hooks, and return them in the
        caller's form (``None`` when not asked for): ``(edge_index, alpha)`` for an
        ``edge_index`` or Graph, ``(adj_t with alpha values, alpha)`` for a torch sparse
        ``adj_t`` (PyG's form), a ``SparseTensor`` with alpha values for one."""
        if alpha is None:
            return None
        if capturing():
            record_attention(self, graph.edge_index, alpha, graph.num_src, graph.num_dst)
        if self._message_forward_hooks:
            src = graph.edge_index[0]
            messages = value.index_select(0, src) + (0 if edge_value is None else edge_value)
            messages = messages * alpha.unsqueeze(-1)
            inputs = ({"alpha": alpha, "edge_index": graph.edge_index, "index": graph.edge_index[1]},)
            for hook in list(self._message_forward_hooks.values()):
                hook(self, inputs, messages)  # observers only: the output is already computed
        if not return_attention_weights:
            return None
        if adjacency.kind == AdjacencyForm.TORCH_SPARSE:
            return graph.to_sparse(alpha, adjacency.layout), alpha
        if adjacency.kind == AdjacencyForm.SPARSE_TENSOR:
            from torch_sparse import SparseTensor

            ei = graph.edge_index
            return SparseTensor(row=ei[1], col=ei[0], value=alpha, sparse_sizes=(graph.num_dst, graph.num_src))
        return graph.edge_index, alpha

    @staticmethod
    def edge_attr_rows(edge_attr: Tensor, graph: Graph, fill_value) -> Tensor:
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        return graph.edge_attr_for_edges(edge_attr, fill_value)

    def _no_edge_dim_error(self) -> ValueError:
        return ValueError(
            f"{type(self).__name__} was built without edge_dim, so it cannot use edge_attr; "
            "pass edge_dim=<edge feature size> to the constructor"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"


def copy_from(layer: nn.Module, other: nn.Module) -> nn.Module:
    """Load ``other``'s parameters into ``layer`` (same parameter names), matching
    its device and dtype."""
    sd = other.state_dict()
    missing, unexpected = layer.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"cannot copy weights: missing {missing}, unexpected {unexpected}")
    first = next(iter(sd.values()), None)
    if first is not None:
        layer.to(device=first.device, dtype=first.dtype)
    layer.train(other.training)
    return layer
