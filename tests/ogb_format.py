"""Write small node- and graph-property datasets in OGB's on-disk layout, so that the
OGB examples run end to end through ogb's own dataset classes without the real data."""

import gzip
from pathlib import Path

import numpy as np
import torch

from graphattn.train.datasets import contextual_sbm

SPLIT = {"ogbn-arxiv": "time", "ogbn-products": "sales_ranking"}
CLASSES = {"ogbn-arxiv": 40, "ogbn-products": 47}


def _csv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(rows)
    if arr.ndim == 1:
        arr = arr[:, None]
    with gzip.open(path, "wt") as fh:
        for row in arr:
            fh.write(",".join(str(v) for v in row) + "\n")


def write_ogbn(root: Path, name: str, num_nodes: int = 400, seed: int = 0) -> Path:
    """A learnable graph (a contextual SBM: labels predictable from features and
    neighbours) with OGB's file names, OGB's class count and a train/valid/test split."""
    g = contextual_sbm(
        num_nodes=num_nodes,
        num_classes=5,
        num_features=16,
        train_per_class=40,
        num_val=num_nodes // 5,
        num_test=num_nodes // 4,
        seed=seed,
    )
    folder = Path(root) / name.replace("-", "_")
    (folder / "RELEASE_v1.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "RELEASE_v1.txt").write_text("test copy in OGB's layout\n")
    src, dst = g.edge_index
    one_way = g.edge_index[:, src < dst]  # arxiv is stored directed; products gets its inverse edges added by ogb
    _csv(folder / "raw" / "edge.csv.gz", one_way.t().numpy())
    _csv(folder / "raw" / "node-feat.csv.gz", np.round(g.x.numpy(), 5))
    _csv(folder / "raw" / "node-label.csv.gz", g.y.numpy())
    _csv(folder / "raw" / "num-node-list.csv.gz", [num_nodes])
    _csv(folder / "raw" / "num-edge-list.csv.gz", [one_way.size(1)])
    if name == "ogbn-arxiv":
        _csv(folder / "raw" / "node_year.csv.gz", (2010 + torch.arange(num_nodes) % 10).numpy())
    split = folder / "split" / SPLIT[name]
    for key, mask in (("train", g.train_mask), ("valid", g.val_mask), ("test", g.test_mask)):
        _csv(split / f"{key}.csv.gz", torch.nonzero(mask).view(-1).numpy())
    return folder


# Label columns and task kinds of the graph-property datasets ``write_ogbg`` writes.
GRAPH_TASKS = {
    "ogbg-molbbbp": ("p_np", "binary"),
    "ogbg-molesol": ("measured log solubility in mols per litre", "regression"),
}
CARBON, NITROGEN, OXYGEN = 5, 6, 7  # OGB's first atom feature is the atomic number minus one


def _molecule(g: torch.Generator, oxygen_share: float):
    """A molecule-like graph: a random tree of 6-18 atoms with one ring-closing bond,
    integer atom and bond features within OGB's vocabularies (``get_atom_feature_dims``,
    ``get_bond_feature_dims``). Each bond is listed once, as in OGB's files."""
    n = int(torch.randint(6, 19, (1,), generator=g))
    kind = torch.rand(n, generator=g)
    atomic = torch.full((n,), CARBON)
    atomic[kind < oxygen_share] = OXYGEN
    atomic[(kind >= oxygen_share) & (kind < oxygen_share + 0.15)] = NITROGEN
    others = [torch.randint(0, hi, (n,), generator=g) for hi in (2, 5, 6, 5, 3, 3, 2, 2)]  # within the vocab sizes
    atoms = torch.stack([atomic, *others], dim=1)
    parents = [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    bonds = [(p, i) for i, p in zip(range(1, n), parents)]
    if parents[-1] != 0:  # close a ring through the first and last atoms
        bonds.append((0, n - 1))
    bond_feat = torch.stack([torch.randint(0, hi, (len(bonds),), generator=g) for hi in (4, 3, 2)], dim=1)
    return atoms, torch.tensor(bonds), bond_feat


def write_ogbg(root: Path, name: str, num_graphs: int = 300, seed: int = 0, unlabeled: float = 0.0) -> Path:
    """A small molecule dataset named ``name`` (``ogbg-molbbbp``: one binary task;
    ``ogbg-molesol``: one regression task) with OGB's file names and folders, read by
    ogb's ``PygGraphPropPredDataset`` like the real one.

    Labels are learnable from the atoms: each molecule draws an oxygen share; the
    binary label says whether more than 20% of its atoms are oxygen, the regression
    target is ``4 x oxygen share - 3 x nitrogen share - 1`` plus noise (sd 0.1).
    ``unlabeled`` is the share of binary labels left missing (NaN, as in ogbg-moltox21).
    The split (``split/scaffold/``) is a seeded 80/10/10 permutation, not a scaffold split."""
    label_column, task = GRAPH_TASKS[name]
    g = torch.Generator().manual_seed(seed)
    molecules = [_molecule(g, float(torch.rand(1, generator=g)) * 0.4) for _ in range(num_graphs)]
    oxygen = torch.tensor([float((atoms[:, 0] == OXYGEN).float().mean()) for atoms, _, _ in molecules])
    nitrogen = torch.tensor([float((atoms[:, 0] == NITROGEN).float().mean()) for atoms, _, _ in molecules])
    if task == "binary":
        labels = (oxygen > 0.2).double()
        labels[torch.rand(num_graphs, generator=g, dtype=torch.float64) < unlabeled] = float("nan")
    else:
        labels = (4 * oxygen - 3 * nitrogen - 1 + 0.1 * torch.randn(num_graphs, generator=g)).double().round(decimals=3)
    folder = Path(root) / name.replace("-", "_")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "RELEASE_v1.txt").write_text("# Release note for ogbg-mol*\n\n### v1\n\ntest copy in OGB's layout\n")
    raw = folder / "raw"
    _csv(raw / "node-feat.csv.gz", torch.cat([atoms for atoms, _, _ in molecules]).numpy())
    _csv(raw / "edge.csv.gz", torch.cat([bonds for _, bonds, _ in molecules]).numpy())
    _csv(raw / "edge-feat.csv.gz", torch.cat([feat for _, _, feat in molecules]).numpy())
    _csv(raw / "num-node-list.csv.gz", [atoms.size(0) for atoms, _, _ in molecules])
    _csv(raw / "num-edge-list.csv.gz", [bonds.size(0) for _, bonds, _ in molecules])
    label_text = ["nan" if v != v else (str(int(v)) if task == "binary" else f"{v:.3f}") for v in labels.tolist()]
    _csv(raw / "graph-label.csv.gz", label_text)
    order = torch.randperm(num_graphs, generator=g)
    n_train, n_valid = int(0.8 * num_graphs), int(0.1 * num_graphs)
    parts = {"train": order[:n_train], "valid": order[n_train : n_train + n_valid], "test": order[n_train + n_valid :]}
    for key, idx in parts.items():
        _csv(folder / "split" / "scaffold" / f"{key}.csv.gz", idx.sort().values.numpy())
    _csv(
        folder / "mapping" / "mol.csv.gz",
        [[label_column, "mol_id"]] + [[t, f"synthetic-{i}"] for i, t in enumerate(label_text)],
    )
    (folder / "mapping" / "README.md").write_text(
        "# ogbg-mol (synthetic test copy)\n\nmol.csv.gz: label, mol_id (no SMILES: the molecules are random graphs).\n"
    )
    return folder
