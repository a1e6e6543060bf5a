"""Backend registry for the attention ops.

Every op (``"edge_softmax"``, ``"gat"``, ``"gatv2"``, ``"dot_product"``) has one or
more named backends. A call picks one by, in order: the ``backend=`` argument, the
innermost :func:`use_backend` context, then the highest-priority registered backend
whose ``supports(**ctx)`` accepts the call. :func:`last_backend` says which ran.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import torch

__all__ = ["register_backend", "available_backends", "use_backend", "last_backend", "select_backend"]

OPS = ("edge_softmax", "gat", "gatv2", "dot_product")


@dataclass
class Backend:
    name: str
    fn: Callable
    supports: Callable[..., bool]
    priority: int


_REGISTRY: Dict[str, Dict[str, Backend]] = {op: {} for op in OPS}
_FORCED: List[str] = []
_LAST: Dict[str, str] = {}


def _always(**ctx) -> bool:
    return True


def register_backend(
    op: str,
    name: str,
    fn: Callable,
    *,
    supports: Optional[Callable[..., bool]] = None,
    priority: int = 0,
) -> None:
    """Register ``fn`` as backend ``name`` of ``op``. ``supports(**ctx)`` receives
    ``device``, ``dtype``, ``graph`` and op-specific flags, and says whether the
    backend can run that call (``forced`` says whether the caller named it);
    higher ``priority`` wins among those that can."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    _REGISTRY[op][name] = Backend(name, fn, supports or _always, priority)


def available_backends(op: Optional[str] = None):
    """Names of the registered backends, per op (or for one op)."""
    if op is not None:
        if op not in _REGISTRY:
            raise ValueError(f"unknown op {op!r}; ops are {OPS}")
        return sorted(_REGISTRY[op], key=lambda n: -_REGISTRY[op][n].priority)
    return {o: available_backends(o) for o in OPS}


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force every op inside the block to run on backend ``name``
    (e.g. ``"reference"``). An op that has no such backend raises."""
    if not any(name in table for table in _REGISTRY.values()):
        raise ValueError(f"unknown backend {name!r}; registered: {available_backends()}")
    _FORCED.append(name)
    try:
        yield
    finally:
        _FORCED.pop()


def last_backend(op: str) -> Optional[str]:
    """The backend that ran the most recent eager call of ``op`` (not recorded
    while tracing under ``torch.compile``)."""
    return _LAST.get(op)


def select_backend(op: str, backend: Optional[str] = None, **ctx) -> Backend:
    table = _REGISTRY[op]
    name = backend if backend is not None else (_FORCED[-1] if _FORCED else None)
    if name is not None:
        if name not in table:
            raise ValueError(f"op {op!r} has no backend {name!r}; available: {available_backends(op)}")
        chosen = table[name]
        if not chosen.supports(forced=True, **ctx):
            raise RuntimeError(
                f"backend {name!r} cannot run {op!r} here "
                f"(device={ctx.get('device')}, dtype={ctx.get('dtype')})"
            )
    else:
        chosen = None
        for cand in sorted(table.values(), key=lambda b: -b.priority):
            if cand.supports(forced=False, **ctx):
                chosen = cand
                break
        if chosen is None:
            raise RuntimeError(f"no backend of {op!r} supports this call ({ctx})")
    if not torch.compiler.is_compiling():
        _LAST[op] = chosen.name
    return chosen
