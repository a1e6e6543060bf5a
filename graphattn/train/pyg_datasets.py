"""Any ``torch_geometric.datasets`` node dataset, read offline by PyG's own class.

A dataset is named ``ClassName`` or ``ClassName:name`` (``WikiCS``, ``Amazon:Computers``,
``HeterophilousGraphDataset:Minesweeper``); ``root`` is the root PyG's class takes, laid out
as PyG lays it out. Before PyG runs, a probe of the class (its ``raw_dir`` and
``raw_file_names``, nothing written) checks that the raw files are there: PyG would download
missing ones, and offline the error says which files to put in which folder instead. A
read-only dataset folder is copied to the cache first, as PyG writes ``processed/`` beside
``raw/``.

Splits: a dataset with mask columns (``train_mask`` of shape ``[N, S]``) gives run ``r``
column ``r mod S`` of each mask (each mask by its own column count, so WikiCS's single test
mask serves every run); one without masks gets the split of Shchur et al. (2018, "Pitfalls
of GNN evaluation"), drawn afresh per run: :data:`RANDOM_SPLIT`.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch_geometric.data import Data

from .datasets import _check_pyg_processed, _writable, writable_copy

__all__ = [
    "RANDOM_SPLIT",
    "parse_dataset_spec",
    "load_pyg_node_dataset",
    "split_for_run",
    "random_class_split",
    "split_rule",
]

TRAIN_PER_CLASS, VAL_PER_CLASS = 20, 30
RANDOM_SPLIT = (
    f"random per run (seed + run): {TRAIN_PER_CLASS} train and {VAL_PER_CLASS} validation nodes per "
    f"class, the rest test (Shchur et al., 2018)"
)
SPLIT_KEYS = ("train", "val", "test")


def _dataset_classes() -> dict:
    import torch_geometric.datasets as pyg_datasets
    from torch_geometric.data import Dataset

    classes = (getattr(pyg_datasets, n, None) for n in pyg_datasets.__all__)
    return {c.__name__.lower(): c for c in classes if inspect.isclass(c) and issubclass(c, Dataset)}


def parse_dataset_spec(spec: str) -> Tuple[type, Optional[str]]:
    """``"ClassName[:name]"`` -> ``(class, name or None)``; the class name is matched
    case-insensitively among ``torch_geometric.datasets``. ValueError if there is none."""
    class_name, _, name = spec.partition(":")
    cls = _dataset_classes().get(class_name.strip().lower())
    if cls is None:
        raise ValueError(f"{class_name!r} is not a dataset class of torch_geometric.datasets")
    takes_name = "name" in inspect.signature(cls.__init__).parameters
    if name and not takes_name:
        raise ValueError(f"{cls.__name__} takes no name; write --dataset {cls.__name__}")
    if takes_name and not name:
        raise ValueError(f"{cls.__name__} needs a name: write --dataset {cls.__name__}:<name>")
    return cls, name.strip() or None


class _Probed(Exception):
    """Raised by a probe instance at the point PyG would first touch the disk."""

    def __init__(self, dataset) -> None:
        super().__init__("probe")
        self.raw_dir, self.raw_paths = Path(dataset.raw_dir), [Path(p) for p in dataset.raw_paths]
        self.processed_dir = Path(dataset.processed_dir)
        self.processed_names = [Path(p).name for p in dataset.processed_paths]


def _probe(cls: type, root: str, kwargs: dict) -> _Probed:
    """Where ``cls(root, **kwargs)`` reads and writes, found by running its constructor up
    to (not into) PyG's download/process step."""

    def stop(self):
        raise _Probed(self)

    probe = type(cls.__name__, (cls,), {"_download": stop, "_process": stop})
    try:
        probe(root=root, **kwargs)
    except _Probed as found:
        return found
    raise ValueError(f"{cls.__name__} neither reads raw files nor processes them; it is not a dataset on disk")


def _missing_files_error(cls: type, found: _Probed) -> FileNotFoundError:
    names = [p.name for p in found.raw_paths]
    missing = [p.name for p in found.raw_paths if not p.exists()]
    return FileNotFoundError(
        f"{cls.__name__} files not found: {found.raw_dir} lacks {', '.join(missing) or 'its raw files'}. Place "
        f"{', '.join(names)} (as PyG's {cls.__name__} downloads them) in {found.raw_dir}, or pass --root pointing "
        f"at the root that holds them there; nothing is downloaded."
    )


def _writable_root(root: Path, found: _Probed) -> Path:
    """``root`` if PyG can write its ``processed/`` folder there, else the root of a cached
    copy of the dataset's folder (its first folder under ``root``, or ``root`` itself)."""
    target = found.processed_dir if found.processed_dir.exists() else found.processed_dir.parent
    if _writable(target):
        return root
    rel = found.raw_dir.resolve().relative_to(root.resolve())
    if len(rel.parts) <= 1:  # raw/ directly under root (WikiCS): copy the root
        return writable_copy(root, "pyg")
    return writable_copy(root / rel.parts[0], "pyg").parent


def _offline(cls: type) -> type:
    """``cls`` with its download replaced by an error (a second guard behind the probe)."""

    def refuse(self):
        raise FileNotFoundError(f"{cls.__name__} tried to download into {self.raw_dir}; place its raw files there")

    return type(cls.__name__, (cls,), {"download": refuse})


def load_pyg_node_dataset(root: str, spec: str) -> Data:
    """The first graph of ``torch_geometric.datasets.<ClassName>(root[, name])``, offline.

    Returns a ``Data`` with ``x`` (float), ``y`` (``[N]``), ``edge_index``, ``num_classes``,
    ``name`` (the spec) and the masks PyG gives (absent, ``[N]`` or ``[N, S]``)."""
    cls, name = parse_dataset_spec(spec)
    kwargs = {"name": name} if name else {}
    found = _probe(cls, root, kwargs)
    if not found.raw_paths or not all(p.exists() for p in found.raw_paths):
        raise _missing_files_error(cls, found)
    base = _writable_root(Path(root), found)
    if base != Path(root):
        found = _probe(cls, str(base), kwargs)
    _check_pyg_processed(found.processed_dir, *found.processed_names)
    dataset = _offline(cls)(root=str(base), **kwargs)
    data = dataset[0]
    if data.x is None or data.y is None:
        raise ValueError(f"{spec}: node classification needs node features x and labels y")
    data.x, data.y = data.x.float(), data.y.view(-1)
    data.num_classes = int(dataset.num_classes)
    data.name = f"{cls.__name__}:{name}" if name else cls.__name__
    return data


def random_class_split(y: torch.Tensor, num_classes: int, seed: int) -> dict:
    """Per class, ``TRAIN_PER_CLASS`` random nodes train, the next ``VAL_PER_CLASS``
    validation, the rest test; drawn from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    masks = {k: torch.zeros(y.numel(), dtype=torch.bool) for k in SPLIT_KEYS}
    for c in range(num_classes):
        members = torch.nonzero(y == c).view(-1)
        members = members[torch.randperm(members.numel(), generator=g)]
        masks["train"][members[:TRAIN_PER_CLASS]] = True
        masks["val"][members[TRAIN_PER_CLASS : TRAIN_PER_CLASS + VAL_PER_CLASS]] = True
        masks["test"][members[TRAIN_PER_CLASS + VAL_PER_CLASS :]] = True
    return masks


def _has_masks(data: Data) -> bool:
    return all(getattr(data, f"{k}_mask", None) is not None for k in SPLIT_KEYS)


def _columns(mask: torch.Tensor) -> int:
    return mask.size(1) if mask.dim() == 2 else 1


def split_rule(data: Data) -> str:
    """In words, the split :func:`split_for_run` gives ``data``'s runs."""
    if not _has_masks(data):
        return RANDOM_SPLIT
    counts = {k: _columns(getattr(data, f"{k}_mask")) for k in SPLIT_KEYS}
    if set(counts.values()) == {1}:
        return "the dataset's fixed split"
    return "run r uses mask column r mod S: " + ", ".join(f"{k} S={s}" for k, s in counts.items())


def split_for_run(data: Data, run: int, seed: int) -> Tuple[Data, dict]:
    """``(data with 1-D train/val/test masks for run ``run``, the columns used)``: column
    ``run mod S`` of each ``[N, S]`` mask, or (no masks) :func:`random_class_split` seeded
    with ``seed + run``. ``data`` itself is not changed."""
    out = copy.copy(data)  # shallow: tensors shared, masks replaced on the copy only
    if not _has_masks(data):
        out.update(
            {
                f"{k}_mask": m.to(data.y.device)
                for k, m in random_class_split(data.y.cpu(), data.num_classes, seed + run).items()
            }
        )
        return out, {"random_seed": seed + run}
    used = {}
    for k in SPLIT_KEYS:
        mask = getattr(data, f"{k}_mask")
        used[k] = run % _columns(mask)
        out[f"{k}_mask"] = mask[:, used[k]] if mask.dim() == 2 else mask
    return out, used
