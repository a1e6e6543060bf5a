"""The training harness the example scripts share.

Kept apart from the library's core (``graphattn.graph``, ``patterns``, ``ops``,
``nn``): nothing in the core imports from here.

* :mod:`~graphattn.train.experiment` -- command-line conventions, devices,
  atomic checkpoints and results files, resume.
* :mod:`~graphattn.train.models` -- the node, link and graph-level models the
  examples train, and the one early-stopping rule they share.
* :mod:`~graphattn.train.datasets` -- Planetoid and OGB loading (offline, with
  the narrow ``torch.load`` handling), synthetic graphs.
* :mod:`~graphattn.train.pyg_datasets` -- any ``torch_geometric.datasets`` node
  class read offline by PyG's own class, and the per-run split rule.
* :mod:`~graphattn.train.sampling` -- neighbour sampling for mini-batches.
* :mod:`~graphattn.train.distributed` -- torchrun helpers.
* :mod:`~graphattn.train.metrics` -- ROC-AUC, average precision, Hits@K.
"""
