"""Dataset loaders that work offline, and synthetic graphs in the same format.

Real datasets are loaded with their own libraries' classes (PyG's ``Planetoid``,
OGB's dataset classes) from files already on disk; nothing is downloaded. When
the files are missing the error says where to put them. When the folder holding
them is read-only, the raw files are copied to a cache folder first, because
those loaders write a ``processed/`` folder beside ``raw/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import stat
from pathlib import Path
import torch
from torch_geometric.data import Data

__all__ = [
    "PLANETOID",
    "OGB_NODE",
    "OGB_LINK",
    "OGB_GRAPH",
    "load_planetoid",
    "load_ogb_node",
    "load_ogb_link",
    "load_ogb_graph",
    "contextual_sbm",
    "edge_homophily",
    "describe",
    "cache_dir",
    "writable_copy",
]

PLANETOID = ("Cora", "CiteSeer", "PubMed")
_PLANETOID_FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def cache_dir() -> Path:
    """Where read-only datasets are copied: ``$GRAPHATTN_CACHE`` or ``~/.cache/graphattn``."""
    return Path(os.environ.get("GRAPHATTN_CACHE", Path.home() / ".cache" / "graphattn"))


def _writable(folder: Path) -> bool:
    # Permission bits, not just os.access: root passes os.access on a folder
    # marked read-only, and a read-only data folder must stay untouched.
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IWUSR) and os.access(folder, os.W_OK)


def writable_copy(folder: Path, kind: str) -> Path:
    """``folder`` itself if writable, else a cached copy of it (copied once).
    A folder marked read-only is never written to, even by root."""
    folder = Path(folder)
    if _writable(folder):
        return folder
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    dest = cache_dir() / kind / key / folder.name
    if not dest.exists():
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, tmp, copy_function=shutil.copyfile)
        for path in [tmp, *tmp.rglob("*")]:  # copytree keeps the source's read-only bits
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    return dest


def load_planetoid(root: str, name: str, normalize_features: bool = True) -> Data:
    """Load a Planetoid dataset (public split) from PyG's root folder, offline.

    ``root`` is the folder that holds ``<name>/raw/ind.<name>.*`` (PyG's layout).
    Features are row-normalised (sum to 1) as in the GAT paper's preprocessing,
    unless ``normalize_features=False``.
    """
    canonical = {n.lower(): n for n in PLANETOID}.get(name.lower())
    if canonical is None:
        raise ValueError(f"unknown Planetoid dataset {name!r}; choose one of {', '.join(PLANETOID)}")
    raw = Path(root) / canonical / "raw"
    prefix = canonical.lower()
    missing = [f"ind.{prefix}.{s}" for s in _PLANETOID_FILES if not (raw / f"ind.{prefix}.{s}").exists()]
    if missing:
        raise FileNotFoundError(
            f"{canonical} files not found: {raw} lacks {', '.join(missing)}. Put the Planetoid raw files "
            f"(ind.{prefix}.x, .tx, .allx, .y, .ty, .ally, .graph, .test.index) in {raw}, or pass --root "
            f"pointing at the folder that contains {canonical}/raw/."
        )
    try:
        import scipy  # noqa: F401  (PyG's Planetoid reader needs it)
    except ImportError as e:
        raise ImportError("loading Planetoid needs scipy: pip install 'graphattn[data]'") from e
    from torch_geometric.datasets import Planetoid

    base = writable_copy(Path(root) / canonical, "planetoid")
    _check_pyg_processed(base / "processed", "data.pt")
    dataset = Planetoid(str(base.parent), canonical)
    data = dataset[0]
    if normalize_features:
        data.x = data.x / data.x.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    data.num_classes = dataset.num_classes
    data.name = canonical
    return data


OGB_NODE = ("ogbn-arxiv", "ogbn-products")
OGB_LINK = ("ogbl-ddi",)
# OGB's public molecule datasets (MoleculeNet, scaffold split): integer atom and bond features.
OGB_GRAPH = (
    "ogbg-molbace",
    "ogbg-molbbbp",
    "ogbg-molclintox",
    "ogbg-molmuv",
    "ogbg-molpcba",
    "ogbg-molsider",
    "ogbg-moltox21",
    "ogbg-moltoxcast",
    "ogbg-molhiv",
    "ogbg-molesol",
    "ogbg-molfreesolv",
    "ogbg-mollipo",
)
_OGB_MOL_FILES = (
    "RELEASE_v1.txt",
    "raw/edge.csv.gz",
    "raw/node-feat.csv.gz",
    "raw/edge-feat.csv.gz",
    "raw/graph-label.csv.gz",
    "raw/num-node-list.csv.gz",
    "raw/num-edge-list.csv.gz",
    "split/scaffold/train.csv.gz",
    "split/scaffold/valid.csv.gz",
    "split/scaffold/test.csv.gz",
)
# Files OGB's own dataset classes read from ``<root>/<name with _>/`` (its on-disk layout).
_OGB_FILES = {
    "ogbn-arxiv": (
        "RELEASE_v1.txt",
        "raw/edge.csv.gz",
        "raw/node-feat.csv.gz",
        "raw/node-label.csv.gz",
        "raw/num-node-list.csv.gz",
        "raw/num-edge-list.csv.gz",
        "raw/node_year.csv.gz",
        "split/time/train.csv.gz",
        "split/time/valid.csv.gz",
        "split/time/test.csv.gz",
    ),
    "ogbn-products": (
        "RELEASE_v1.txt",
        "raw/edge.csv.gz",
        "raw/node-feat.csv.gz",
        "raw/node-label.csv.gz",
        "raw/num-node-list.csv.gz",
        "raw/num-edge-list.csv.gz",
        "split/sales_ranking/train.csv.gz",
        "split/sales_ranking/valid.csv.gz",
        "split/sales_ranking/test.csv.gz",
    ),
    "ogbl-ddi": (
        "RELEASE_v1.txt",
        "raw/edge.csv.gz",
        "raw/num-node-list.csv.gz",
        "raw/num-edge-list.csv.gz",
        "split/target/train.pt",
        "split/target/valid.pt",
        "split/target/test.pt",
    ),
    **{name: _OGB_MOL_FILES for name in OGB_GRAPH},
}


def _ogb_folder(root: str, name: str) -> Path:
    """``<root>/<name>`` checked for the files OGB's classes need. OGB's classes would
    try to download missing files (or prompt on stdin); offline, say what is missing."""
    if name not in _OGB_FILES:
        raise ValueError(f"unknown OGB dataset {name!r}; choose one of {', '.join(_OGB_FILES)}")
    try:
        import ogb  # noqa: F401
    except ImportError as e:
        raise ImportError(f"loading {name} needs the ogb package: pip install 'graphattn[ogb]'") from e
    folder = Path(root) / name.replace("-", "_")
    missing = [f for f in _OGB_FILES[name] if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"{name} files not found in {folder}: missing {', '.join(missing)}. Unzip OGB's {name} archive "
            f"(http://snap.stanford.edu/ogb/data/) so that {folder}/raw/ and {folder}/split/ exist, or pass --root "
            f"pointing at the folder that contains {folder.name}/."
        )
    return writable_copy(folder, "ogb")


def _ogb_safe_globals() -> list:
    """The allow-list for ``torch.load(weights_only=True)`` of OGB's files: exactly the
    classes that the files of :data:`OGB_NODE`, :data:`OGB_LINK` and :data:`OGB_GRAPH` hold beyond what
    torch rebuilds by default (tensors, plain containers, ``_codecs.encode`` for bytes).
    Found by loading them (``torch.serialization.get_unsafe_globals_in_checkpoint`` and
    the legacy pickles' GLOBAL opcodes):

    - ``split/target/{valid,test}.pt`` of ogbl-ddi, as OGB distributes them (legacy
      torch pickles written with numpy 1.x): dicts of int64 numpy arrays, which need
      ``numpy.core.multiarray._reconstruct`` (numpy's array rebuild function, under
      the name numpy 1.x pickles it by; numpy 2 keeps it in ``numpy._core``),
      ``numpy.ndarray``, ``numpy.dtype`` and the int64 dtype's class
      (``numpy.dtypes.Int64DType``). ``train.pt`` holds a tensor: nothing needed.
    - ``processed/geometric_data_processed.pt``, which ogb writes with PyG's ``collate``
      on first load and reads back with ``torch.load``: ``torch_geometric.data.Data``
      (PyG also allow-lists it itself on import), the ``DataEdgeAttr`` and
      ``DataTensorAttr`` classes a ``Data`` keeps as attributes, and ``GlobalStorage``.

    The ogbn and ogbg-mol datasets' raw files and splits are ``.csv.gz`` (no pickles);
    the ``processed/`` file ogb writes for an ogbg-mol dataset (:data:`OGB_GRAPH`) holds
    the same four PyG classes, with the slices as a dict of tensors. No function
    other than numpy's array rebuild is allowed: every entry only builds data.
    """
    import numpy as np
    from torch_geometric.data.data import Data, DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    try:  # numpy >= 2 (``numpy.core`` is a deprecated alias there)
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    legacy = "numpy.core.multiarray._reconstruct"  # the name OGB's files use
    if f"{_reconstruct.__module__}.{_reconstruct.__qualname__}" != legacy:  # numpy 2 moved it to numpy._core
        _reconstruct = (_reconstruct, legacy)  # allow it under the name in the files (torch >= 2.6 takes pairs)
    return [
        _reconstruct,
        np.ndarray,
        np.dtype,
        type(np.dtype(np.int64)),
        Data,
        DataEdgeAttr,
        DataTensorAttr,
        GlobalStorage,
    ]


@contextlib.contextmanager
def _ogb_files_allowed(folder: Path, name: str):
    """Within this block, ``torch.load`` (called by ogb with torch's default
    ``weights_only=True``) also rebuilds the classes of :func:`_ogb_safe_globals`.
    ``torch.load`` itself is untouched. The allow-list is torch's
    ``serialization.safe_globals`` context: it is added on entry and removed on exit
    (entries that were already allowed before, e.g. PyG's ``Data``, are left alone).
    A file that needs anything else is refused: a ``ValueError`` naming the folder."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: torch.load defaults to weights_only=False there
        yield
        return
    already = set(torch.serialization.get_safe_globals())
    try:
        with safe_globals([g for g in _ogb_safe_globals() if g not in already]):
            yield
    except pickle.UnpicklingError as e:
        detail = next(
            (
                line.replace("WeightsUnpickler error:", "").strip()
                for line in str(e).splitlines()
                if "global" in line.lower() or "unsupported" in line.lower()
            ),
            type(e).__name__,
        )
        raise ValueError(
            f"{name}: a file under {folder} holds objects other than those OGB's {name} files contain ({detail}); "
            f"it was not unpickled, as that could run code. Restore the files from OGB's archive, and delete "
            f"{folder / 'processed'} to have it rebuilt"
        ) from e


def _check_pyg_processed(processed: Path, *data_files: str) -> None:
    """PyG's ``Dataset`` reads ``processed/pre_transform.pt`` and ``pre_filter.pt`` with
    ``torch.load(weights_only=False)``, and ``InMemoryDataset.load`` retries its data
    file with ``weights_only=False`` when the safe load fails. Check those files with
    ``weights_only=True`` before PyG sees them (the markers only ever hold a string),
    so that a crafted file is refused here instead of run there."""
    checks = [("pre_transform.pt", True), ("pre_filter.pt", True)] + [(f, False) for f in data_files]
    for marker, is_string in checks:
        path = Path(processed) / marker
        if not path.exists():
            continue
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            ok = isinstance(obj, str) or not is_string
        except Exception:
            ok = False
        if not ok:
            raise ValueError(
                f"{path} is not a file PyG writes; it was not loaded, as unpickling it could run code. "
                f"Delete {path.parent} to have it rebuilt"
            )


def _open_ogb(root: str, name: str, dataset_class, split_method: str, **kwargs):
    """``(dataset, split)`` through one of ogb's Pyg dataset classes, offline: the
    files found (or copied to the cache) by :func:`_ogb_folder`, PyG's
    ``weights_only=False`` paths pre-checked, and ogb's own ``torch.load`` calls
    under the scoped allow-list."""
    folder = _ogb_folder(root, name)
    _check_pyg_processed(folder / "processed")  # ogb reads its data file itself, under the allow-list
    with _ogb_files_allowed(folder, name):
        dataset = dataset_class(name=name, root=str(folder.parent), **kwargs)
        return dataset, getattr(dataset, split_method)()


def load_ogb_node(root: str, name: str) -> Data:
    """An OGB node-property dataset through ``ogb``'s ``PygNodePropPredDataset``, offline.

    ``root`` holds ``<name with _>/`` in OGB's layout (``ogbn_arxiv/raw/edge.csv.gz``, ...).
    Returns a ``Data`` with ``x``, ``y`` (``[N]``), ``edge_index`` (both directions: the
    arxiv citation graph is made undirected as in OGB's GAT baselines), ``train/val/test_mask``,
    ``split_idx`` (OGB's index split) and ``num_classes``.
    """
    from ogb.nodeproppred import PygNodePropPredDataset
    from torch_geometric.utils import to_undirected

    dataset, split = _open_ogb(root, name, PygNodePropPredDataset, "get_idx_split")
    data = dataset[0]
    data.edge_index = to_undirected(data.edge_index, num_nodes=data.num_nodes)
    data.y = data.y.view(-1)
    for key, idx in (("train", split["train"]), ("val", split["valid"]), ("test", split["test"])):
        mask = torch.zeros(data.num_nodes, dtype=torch.bool)
        mask[idx] = True
        data[f"{key}_mask"] = mask
    data.split_idx = split
    data.num_classes = dataset.num_classes
    data.name = name
    return data


def load_ogb_link(root: str, name: str = "ogbl-ddi"):
    """An OGB link-property dataset through ``ogb``'s ``PygLinkPropPredDataset``, offline.
    Returns ``(data, split_edge)`` as OGB's examples use them."""
    from ogb.linkproppred import PygLinkPropPredDataset

    dataset, split_edge = _open_ogb(root, name, PygLinkPropPredDataset, "get_edge_split")
    data = dataset[0]
    data.name = name
    return data, split_edge


def load_ogb_graph(root: str, name: str, transform=None):
    """An OGB graph-property dataset through ``ogb``'s ``PygGraphPropPredDataset``, offline.

    ``root`` holds ``<name with _>/`` in OGB's layout (``ogbg_molbbbp/raw/edge.csv.gz``, ...).
    ``transform`` (e.g. PyG's ``AddRandomWalkPE``) is applied to each graph as it is read.
    Returns ``(dataset, split_idx)`` as OGB's examples use them: the dataset carries
    ``num_tasks``, ``task_type`` and ``eval_metric``; ``split_idx`` holds ``train``,
    ``valid`` and ``test`` graph indices."""
    if name not in OGB_GRAPH:
        raise ValueError(f"unknown OGB graph-property dataset {name!r}; choose one of {', '.join(OGB_GRAPH)}")
    from ogb.graphproppred import PygGraphPropPredDataset

    return _open_ogb(root, name, PygGraphPropPredDataset, "get_idx_split", transform=transform)


def contextual_sbm(
    num_nodes: int = 3000,
    num_classes: int = 5,
    num_features: int = 64,
    avg_degree: float = 12.0,
    homophily: float = 0.6,
    feature_signal: float = 0.35,
    noisy_fraction: float = 0.3,
    train_per_class: int = 20,
    num_val: int = 500,
    num_test: int = 1000,
    seed: int = 0,
) -> Data:
    """A contextual stochastic block model, split like Planetoid.

    Nodes get a class, Gaussian features around a class mean (``feature_signal``
    sets how separable the features alone are) and edges that join same-class
    nodes with probability ``homophily``. A ``noisy_fraction`` of nodes draw their
    edges uniformly at random instead, so neighbourhoods mix informative and
    uninformative neighbours: a model that learns *whom* to attend to gains over
    one that averages neighbours uniformly. Returns a PyG ``Data`` with ``x``,
    ``y``, ``edge_index`` (both directions), ``train/val/test_mask`` and
    ``num_classes``.
    """
    if train_per_class * num_classes + num_val + num_test > num_nodes:
        raise ValueError(
            f"split does not fit: {train_per_class}x{num_classes} train + {num_val} val + {num_test} test "
            f"> {num_nodes} nodes"
        )
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (num_nodes,), generator=g)
    means = torch.randn(num_classes, num_features, generator=g)
    means = means / means.norm(dim=1, keepdim=True) * feature_signal * num_features**0.5
    x = means[y] + torch.randn(num_nodes, num_features, generator=g)

    num_half = int(num_nodes * avg_degree / 2)
    src = torch.randint(0, num_nodes, (num_half,), generator=g)
    same = torch.rand(num_half, generator=g) < homophily
    noisy = torch.rand(num_nodes, generator=g) < noisy_fraction
    by_class = [torch.nonzero(y == c).view(-1) for c in range(num_classes)]
    dst = torch.randint(0, num_nodes, (num_half,), generator=g)
    for c in range(num_classes):
        pick = same & (y[src] == c) & ~noisy[src]
        members = by_class[c]
        dst[pick] = members[torch.randint(0, members.numel(), (int(pick.sum()),), generator=g)]
    keep = src != dst
    src, dst = src[keep], dst[keep]
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    edge_index = torch.unique(edge_index, dim=1)

    perm = torch.randperm(num_nodes, generator=g)
    train = torch.zeros(num_nodes, dtype=torch.bool)
    for c in range(num_classes):
        members = perm[y[perm] == c][:train_per_class]
        train[members] = True
    rest = perm[~train[perm]]
    val = torch.zeros(num_nodes, dtype=torch.bool)
    test = torch.zeros(num_nodes, dtype=torch.bool)
    val[rest[:num_val]] = True
    test[rest[num_val : num_val + num_test]] = True
    data = Data(x=x, y=y, edge_index=edge_index, train_mask=train, val_mask=val, test_mask=test)
    data.num_classes = num_classes
    data.name = "synthetic-csbm"
    return data


def edge_homophily(data: Data) -> float:
    """Fraction of edges joining nodes of the same class."""
    src, dst = data.edge_index
    return float((data.y[src] == data.y[dst]).float().mean()) if src.numel() else float("nan")


def describe(data: Data) -> str:
    return (
        f"{getattr(data, 'name', 'graph')}: {data.num_nodes} nodes, {data.edge_index.size(1)} edges, "
        f"{data.x.size(1)} features, {data.num_classes} classes, "
        f"split {int(data.train_mask.sum())}/{int(data.val_mask.sum())}/{int(data.test_mask.sum())}"
    )
