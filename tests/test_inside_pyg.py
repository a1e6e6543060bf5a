"""graphattn's layers inside PyG's own machinery, each case run with PyG's layer and
with ours (weights copied by ``from_pyg``) and compared: sparse ``adj_t`` inputs,
``size=``, the explain module (AttentionExplainer, GNNExplainer edge masks), message
hooks, HeteroConv, to_hetero, Sequential, Batch + pooling and torch.compile."""

import copy

import pytest
import torch
import torch_geometric.nn as pygnn
from torch_geometric.data import Batch, Data, HeteroData
from torch_geometric.explain import Explainer
from torch_geometric.explain.algorithm import AttentionExplainer, GNNExplainer
from torch_geometric.utils import coalesce, to_torch_coo_tensor, to_torch_csc_tensor, to_torch_csr_tensor

import graphattn.nn as ours
from graphattn import Graph

from conftest import random_graph

TOL = dict(atol=1e-5, rtol=1e-5)
PAIRS = {
    "gat": (lambda: pygnn.GATConv(8, 4, heads=2), ours.GATConv),
    "gatv2": (lambda: pygnn.GATv2Conv(8, 4, heads=2), ours.GATv2Conv),
    "transformer": (lambda: pygnn.TransformerConv(8, 4, heads=2, beta=True), ours.TransformerConv),
}
LAYOUTS = {"coo": to_torch_coo_tensor, "csr": to_torch_csr_tensor, "csc": to_torch_csc_tensor}


def _pair(name):
    make_pyg, cls = PAIRS[name]
    torch.manual_seed(0)
    pyg = make_pyg().eval()
    return pyg, cls.from_pyg(pyg).eval()


def _data(n=12, e=40, seed=0):
    """Features and a coalesced edge_index (sparse adjacencies merge duplicate edges,
    so the two inputs describe the same graph only without them)."""
    torch.manual_seed(seed)
    return torch.randn(n, 8), coalesce(random_graph(n, n, e, seed=seed), num_nodes=n)


# ------------------------------------------------------------ sparse adj_t and size=
def _dense_weights(ei, alpha, n):
    dense = alpha.new_zeros(n, n, alpha.size(-1))
    dense.index_put_((ei[1], ei[0]), alpha, accumulate=True)
    return dense


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", PAIRS)
def test_sparse_adj_t_gives_pygs_outputs_and_weights(name, layout):
    pyg, mine = _pair(name)
    x, ei = _data()
    adj_t = LAYOUTS[layout](ei, size=(12, 12)).t()
    ref, (ref_ei, ref_alpha) = pyg(x, ei, return_attention_weights=True)
    torch.testing.assert_close(mine(x, adj_t), ref, **TOL)
    try:  # PyG itself takes some layouts only (e.g. not CSC adj_t, nor an uncoalesced COO in TransformerConv)
        torch.testing.assert_close(mine(x, adj_t), pyg(x, adj_t), **TOL)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        if "layout" not in str(exc) and "coalesce" not in str(exc):
            raise
    got, (adj_w, alpha) = mine(x, adj_t, return_attention_weights=True)
    torch.testing.assert_close(got, ref, **TOL)
    # PyG's form: the adjacency (self-loops included) with the weights as values, and the weights
    assert adj_w.layout == adj_t.layout and adj_w.shape == (12, 12, 2) and adj_w._nnz() == ref_ei.size(1)
    torch.testing.assert_close(adj_w.to_dense(), _dense_weights(ref_ei, ref_alpha, 12), **TOL)
    assert alpha.shape == ref_alpha.shape


@pytest.mark.parametrize("name", PAIRS)
def test_bipartite_sparse_adj_t_and_size(name):
    make_pyg, cls = PAIRS[name]
    torch.manual_seed(1)
    pyg_kwargs = dict(heads=2)
    if name != "transformer":
        pyg_kwargs["add_self_loops"] = False
    pyg = type(make_pyg())((8, 6), 4, **pyg_kwargs).eval()
    mine = cls.from_pyg(pyg).eval()
    xs, xd = torch.randn(10, 8), torch.randn(5, 6)
    ei = coalesce(torch.stack([torch.randint(0, 10, (30,)), torch.randint(0, 5, (30,))]))
    adj_t = to_torch_csr_tensor(ei, size=(10, 5)).t()
    ref = pyg((xs, xd), ei)
    torch.testing.assert_close(mine((xs, xd), ei), ref, **TOL)
    torch.testing.assert_close(mine((xs, xd), adj_t), ref, **TOL)
    torch.testing.assert_close(mine((xs, xd), ei, size=(10, 5)), ref, **TOL)
    with pytest.raises(ValueError, match="size gives num_dst=4 but the node features have 5 rows"):
        mine((xs, xd), ei, size=(10, 4))


def test_gat_destination_count_from_size_when_x_dst_is_none():
    torch.manual_seed(2)
    pyg = pygnn.GATConv((8, 6), 4, heads=2, add_self_loops=False).eval()
    mine = ours.GATConv.from_pyg(pyg).eval()
    xs = torch.randn(10, 8)
    ei = coalesce(torch.stack([torch.randint(0, 10, (20,)), torch.randint(0, 3, (20,))]))  # 3, 4 unused
    ref = pyg((xs, None), ei, size=(10, 5))
    assert ref.shape == (5, 8)
    torch.testing.assert_close(mine((xs, None), ei, size=(10, 5)), ref, **TOL)
    torch.testing.assert_close(mine((xs, None), to_torch_csr_tensor(ei, size=(10, 5)).t()), ref, **TOL)


def test_sparse_values_are_edge_attributes_when_the_layer_has_edge_dim():
    torch.manual_seed(3)
    x, ei = _data()
    w = torch.rand(ei.size(1))
    layer = ours.GATConv(8, 4, heads=2, edge_dim=1, add_self_loops=False).eval()
    adj_t = torch.sparse_coo_tensor(ei.flip(0), w, (12, 12))
    torch.testing.assert_close(layer(x, adj_t), layer(x, ei, w), **TOL)
    plain = ours.GATConv(8, 4, heads=2).eval()  # no edge_dim: values are not used (as in PyG)
    torch.testing.assert_close(plain(x, adj_t), plain(x, ei), **TOL)


def test_the_graph_is_built_once_per_adjacency():
    layer = ours.GATConv(8, 4)
    x, ei = _data()
    adj_t = to_torch_csr_tensor(ei, size=(12, 12)).t()
    layer(x, adj_t)
    first = layer._graph_cache.graph
    layer(x, adj_t)
    assert layer._graph_cache.graph is first
    layer(x, to_torch_csr_tensor(ei, size=(12, 12)).t())
    assert layer._graph_cache.graph is not first


def test_a_csr_adj_t_is_taken_as_the_graphs_csr_without_sorting():
    x, ei = _data()
    adj_t = to_torch_csr_tensor(ei, size=(12, 12)).t().to_sparse_csr()
    graph, values = Graph.from_sparse(adj_t)
    assert graph.perm is None and torch.equal(graph.rowptr, adj_t.crow_indices())
    assert torch.equal(graph.col, adj_t.col_indices()) and values.shape == (graph.num_edges,)


def test_transformer_conv_has_pygs_name_repr_and_alpha_attribute():
    pyg, mine = _pair("transformer")
    assert repr(mine) == repr(pyg) == "TransformerConv(8, 4, heads=2)"
    assert ours.DotProductConv is ours.TransformerConv
    x, ei = _data()
    out, (ei_out, alpha) = mine(x, ei, return_attention_weights=True)
    assert mine._alpha is None and alpha.shape == (ei.size(1), 2)


# ------------------------------------------------------------ PyG's explain module
def _two_layer(conv_a, conv_b):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = conv_a, conv_b

        def forward(self, x, edge_index):
            return self.conv2(self.conv1(x, edge_index).relu(), edge_index)

    return Net().eval()


def _models(name):
    torch.manual_seed(4)
    make = {
        "gat": lambda i, o, h: pygnn.GATConv(i, o, heads=h),
        "gatv2": lambda i, o, h: pygnn.GATv2Conv(i, o, heads=h),
        "transformer": lambda i, o, h: pygnn.TransformerConv(i, o, heads=h),
    }[name]
    cls = {"gat": ours.GATConv, "gatv2": ours.GATv2Conv, "transformer": ours.TransformerConv}[name]
    a, b = make(8, 4, 2), make(8, 3, 1)
    return _two_layer(a, b), _two_layer(cls.from_pyg(a), cls.from_pyg(b))


@pytest.mark.parametrize("name", PAIRS)
def test_attention_explainer_collects_the_same_masks_as_pyg(name):
    pyg_model, our_model = _models(name)
    x, ei = _data(seed=5)
    masks = []
    for model in (pyg_model, our_model):
        explainer = Explainer(
            model,
            algorithm=AttentionExplainer(),
            explanation_type="model",
            edge_mask_type="object",
            model_config=dict(mode="multiclass_classification", task_level="node", return_type="raw"),
        )
        masks.append(explainer(x, ei, index=3).edge_mask)
    assert masks[0].shape == (ei.size(1),) and masks[0].abs().sum() > 0
    torch.testing.assert_close(masks[1], masks[0], **TOL)


@pytest.mark.parametrize("name", ["gat", "transformer"])
def test_gnn_explainer_learns_an_edge_mask_as_with_pygs_layers(name):
    pyg_model, our_model = _models(name)
    x, ei = _data(seed=6)
    masks = []
    for model in (pyg_model, our_model):
        torch.manual_seed(7)
        explainer = Explainer(
            model,
            algorithm=GNNExplainer(epochs=30),
            explanation_type="model",
            edge_mask_type="object",
            node_mask_type="attributes",
            model_config=dict(mode="multiclass_classification", task_level="node", return_type="raw"),
        )
        masks.append(explainer(x, ei, index=2).edge_mask)
    assert masks[1].shape == (ei.size(1),) and (masks[1] > 0).any()
    torch.testing.assert_close(masks[1], masks[0], atol=1e-4, rtol=1e-4)


def test_edge_mask_gradient_is_exact():
    layer = ours.GATConv(8, 3, heads=2).double().eval()
    x, ei = _data()
    x = x.double()
    mask = torch.randn(ei.size(1), dtype=torch.float64, requires_grad=True)

    def f(m):
        layer.explain, layer._edge_mask, layer._apply_sigmoid = True, m, True
        try:
            return layer(x, ei)
        finally:
            layer.explain, layer._edge_mask = False, None

    assert torch.autograd.gradcheck(f, (mask,))


def test_message_hooks_see_the_weights_and_messages():
    _, mine = _pair("gat")
    x, ei = _data()
    seen = []
    handle = mine.register_message_forward_hook(lambda mod, inputs, out: seen.append((inputs[0]["alpha"], out)))
    _, (ei_loops, alpha) = mine(x, ei, return_attention_weights=True)
    handle.remove()
    mine(x, ei)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0][0], alpha)
    assert seen[0][1].shape == (ei_loops.size(1), 2, 4)


# ------------------------------------------------------------ containers and batching
@pytest.mark.parametrize("name", PAIRS)
def test_sequential_and_batch_pooling_match_pyg(name):
    make_pyg, cls = PAIRS[name]
    torch.manual_seed(8)
    conv = make_pyg()
    graphs = [Data(x=torch.randn(n, 8), edge_index=random_graph(n, n, 3 * n, seed=n)) for n in (5, 9, 7)]
    batch = Batch.from_data_list(graphs)
    outs = []
    for layer in (conv, cls.from_pyg(conv)):
        model = pygnn.Sequential(
            "x, edge_index, batch",
            [
                (layer, "x, edge_index -> x"),
                (torch.nn.ReLU(), "x -> x"),
                (pygnn.global_mean_pool, "x, batch -> x"),
            ],
        ).eval()
        outs.append(model(batch.x, batch.edge_index, batch.batch))
    assert outs[0].shape == (3, 8)
    torch.testing.assert_close(outs[1], outs[0], **TOL)


def _hetero_data():
    torch.manual_seed(9)
    data = HeteroData()
    data["paper"].x = torch.randn(10, 8)
    data["author"].x = torch.randn(6, 8)
    data["author", "writes", "paper"].edge_index = torch.stack(
        [torch.randint(0, 6, (20,)), torch.randint(0, 10, (20,))]
    )
    data["paper", "cites", "paper"].edge_index = random_graph(10, 10, 25)
    data["paper", "rev_writes", "author"].edge_index = data["author", "writes", "paper"].edge_index.flip(0)
    return data


def test_hetero_conv_matches_pyg():
    data = _hetero_data()
    torch.manual_seed(10)
    make = lambda: {  # noqa: E731
        ("author", "writes", "paper"): pygnn.GATConv((8, 8), 4, heads=2, add_self_loops=False),
        ("paper", "cites", "paper"): pygnn.GATv2Conv(8, 4, heads=2),
        ("paper", "rev_writes", "author"): pygnn.TransformerConv((8, 8), 4, heads=2),
    }
    pyg_convs = make()
    conv_of = {
        pygnn.GATConv: ours.GATConv,
        pygnn.GATv2Conv: ours.GATv2Conv,
        pygnn.TransformerConv: ours.TransformerConv,
    }
    our_convs = {k: conv_of[type(v)].from_pyg(v) for k, v in pyg_convs.items()}
    ref = pygnn.HeteroConv(pyg_convs, aggr="sum").eval()(data.x_dict, data.edge_index_dict)
    got = pygnn.HeteroConv(our_convs, aggr="sum").eval()(data.x_dict, data.edge_index_dict)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], **TOL)


def test_to_hetero_matches_pyg():
    data = _hetero_data()

    class Net(torch.nn.Module):
        def __init__(self, conv_cls):
            super().__init__()
            self.conv = conv_cls((-1, -1), 4, heads=2, add_self_loops=False)

        def forward(self, x, edge_index):
            return self.conv(x, edge_index)

    torch.manual_seed(11)
    pyg_model = pygnn.to_hetero(Net(pygnn.GATConv), data.metadata(), aggr="sum")
    pyg_model(data.x_dict, data.edge_index_dict)  # materialise the lazy layers
    our_model = pygnn.to_hetero(Net(ours.GATConv), data.metadata(), aggr="sum")
    our_model(data.x_dict, data.edge_index_dict)
    our_model.load_state_dict(pyg_model.state_dict())
    ref = pyg_model.eval()(data.x_dict, data.edge_index_dict)
    got = our_model.eval()(data.x_dict, data.edge_index_dict)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], **TOL)


@pytest.mark.compile
def test_torch_compile_inside_a_pyg_model_matches_pyg():
    pyg_model, our_model = _models("gat")
    x, ei = _data(seed=12)
    ref = pyg_model(x, ei)
    torch._dynamo.reset()
    got = torch.compile(copy.deepcopy(our_model))(x, ei)
    torch.testing.assert_close(got, ref, **TOL)
