"""The environment switches graphattn reads, one function each and one rule for all: a
switch is on when its variable is exactly ``"1"``, off otherwise (unset, ``"0"``, any
other text). Each function says when it is read: a switch read at each call takes
effect at the next call; one read when the CPU kernel is built takes effect only in a
process that has not built it yet.

Plain functions over ``os.environ`` (no caching): the dispatcher reads them inside
layers that ``torch.compile`` traces, which guards on the values it reads.
"""

from __future__ import annotations

import os

__all__ = ["kernel_checks", "cpu_kernel_disabled", "triton_interpret"]


def _on(name: str) -> bool:
    return os.environ.get(name) == "1"


def kernel_checks() -> bool:
    """``GRAPHATTN_KERNEL_CHECKS=1``: the native CPU kernel is built (and cached
    separately) with a bounds check on every index it reads, raising instead of reading
    out of range; for tests and for hunting a suspected validation gap. Read when the
    kernel is built, once per process (:func:`graphattn.ops.cpu.load_extension`)."""
    return _on("GRAPHATTN_KERNEL_CHECKS")


def cpu_kernel_disabled() -> bool:
    """``GRAPHATTN_DISABLE_CPU_KERNEL=1``: the ``cpu`` backend declines every call and its
    kernel is never built (nor the failed build's warning given). Read at each call, when
    the dispatcher asks the backend."""
    return _on("GRAPHATTN_DISABLE_CPU_KERNEL")


def triton_interpret() -> bool:
    """``TRITON_INTERPRET=1``: Triton's interpreter runs the kernels on CPU, and the
    ``triton`` backend takes CPU calls that name it. Read by graphattn at each call;
    Triton itself reads it when its kernels are defined, so it must be set before
    anything imports triton."""
    return _on("TRITON_INTERPRET")
