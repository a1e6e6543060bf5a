"""Write small node-property datasets in OGB's on-disk layout, so that the OGB
examples run end to end through ogb's own dataset classes without the real data."""
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
    g = contextual_sbm(num_nodes=num_nodes, num_classes=5, num_features=16, train_per_class=40,
                       num_val=num_nodes // 5, num_test=num_nodes // 4, seed=seed)
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
