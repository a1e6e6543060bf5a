"""The dtype rule every backend follows: fp16/bf16 inputs are computed in fp32,
fp32 and fp64 in themselves."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def upcast(t: Optional[Tensor]) -> Optional[Tensor]:
    """``t`` in its compute dtype (``None`` stays ``None``)."""
    return None if t is None else t.to(compute_dtype(t.dtype))
