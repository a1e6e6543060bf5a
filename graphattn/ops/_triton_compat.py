"""Triton interpreter compatibility (``TRITON_INTERPRET=1`` only; compiled kernels are untouched).

The interpreter of Triton 3.6 and older turns a scalar tensor into a Python int with
``int(array)``, but every interpreted scalar is a one-element 1-d numpy array, which
numpy 2.4 no longer converts (``TypeError: only 0-dimensional arrays can be converted to
Python scalars``). So any loop whose bounds are loaded from memory -- every CSR row walk
of :mod:`graphattn.ops.triton_kernels` -- fails there, while compiled Triton accepts it.
Newer interpreters convert ``int(array.squeeze())``; :func:`ensure_interpreter_compat`
gives an old one that same conversion, after a probe shows it is needed, and only then.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch


def _probe_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def loop_bound_probe(bounds, out):
        # a loop whose bounds come from memory, as in every CSR row walk
        acc = tl.zeros((), tl.int32)
        for _ in range(tl.load(bounds), tl.load(bounds + 1)):
            acc += 1
        tl.store(out, acc)

    return loop_bound_probe


def _loop_bounds_work(kernel) -> Optional[str]:
    """None when an interpreted loop over loaded bounds runs (and counts right), else the error."""
    out = torch.zeros(1, dtype=torch.int32)
    try:
        kernel[(1,)](torch.tensor([2, 5], dtype=torch.int32), out)
    except Exception as exc:  # the interpreter wraps the TypeError in InterpreterError
        return f"{type(exc).__name__}: {exc}"
    return None if int(out) == 3 else f"the probe loop ran {int(out)} times, not 3"


def _patch_scalar_index() -> None:
    """Make the interpreter's ``tensor.__index__`` squeeze one-element arrays, as Triton >= 3.7's does."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_lang_tensor


@functools.lru_cache(maxsize=None)
def ensure_interpreter_compat() -> Optional[str]:
    """Probe the interpreter once; patch it if (and only if) loaded loop bounds fail there.
    Returns what was done (for tests and ``graphattn.check``), or None when nothing was needed."""
    kernel = _probe_kernel()
    failure = _loop_bounds_work(kernel)
    if failure is None:
        return None
    _patch_scalar_index()
    still = _loop_bounds_work(kernel)
    if still is not None:
        raise RuntimeError(f"the Triton interpreter cannot run loops over loaded bounds here ({still})")
    return f"patched the interpreter's scalar-to-int conversion ({failure})"
