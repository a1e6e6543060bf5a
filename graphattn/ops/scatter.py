"""Optional backend on ``torch_scatter`` (``pip install graphattn[scatter]``):
``edge_softmax`` over an unsorted destination index with torch-scatter's fused
scatter reductions. Used only when installed; nothing requires it.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

from torch import Tensor

from ._dtypes import FLOAT_DTYPES
from .softmax import segment_softmax


# Looked up once, at import (see triton_backend: no import-system call on the hot path).
_SCATTER_INSTALLED = importlib.util.find_spec("torch_scatter") is not None


def is_available() -> bool:
    """Whether ``torch_scatter`` is installed (looked up once, when this module is imported)."""
    return _SCATTER_INSTALLED


def _scatter_max(scores: Tensor, index: Tensor, n: int) -> Tensor:
    from torch_scatter import scatter_max

    return scatter_max(scores, index, dim=0, dim_size=n)[0]  # 0 for an empty segment: harmless here


def _scatter_sum(t: Tensor, index: Tensor, n: int) -> Tensor:
    from torch_scatter import scatter_add

    return scatter_add(t, index, dim=0, dim_size=n)


def edge_softmax(scores: Tensor, index: Tensor, num_segments: int, graph=None) -> Tensor:
    """The segment softmax of :mod:`.softmax` with torch-scatter's fused reductions."""
    return segment_softmax(scores, index, num_segments, segment_max=_scatter_max, segment_sum=_scatter_sum)


def decline(device=None, dtype=None, **_) -> Optional[str]:
    if not is_available():
        return "torch-scatter is not installed"
    if dtype not in FLOAT_DTYPES:
        return f"dtype {dtype} is not floating point"
    return None
