"""Backend registry for the attention ops.

Every op (``"edge_softmax"``, ``"gat"``, ``"gatv2"``, ``"dot_product"``) has one or
more named backends. A call picks one by, in order: the ``backend=`` argument, the
innermost :func:`use_backend` context, then the highest-priority registered backend
that accepts the call. :func:`last_backend` says which ran and :func:`why_not` why the
others did not (PyTorch's ``why_not_fast_path`` idea): a backend declines a call by
returning a reason.

Both the forced backend and the record of the last choice are per thread, so one
thread's ``use_backend`` never changes another's calls. (A ``threading.local`` rather
than a ``contextvars`` variable: ``torch.compile`` traces through the former, and the
dispatcher runs inside compiled layers; asyncio tasks sharing a thread share it.)
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

__all__ = ["register_backend", "available_backends", "use_backend", "last_backend", "why_not", "explain_dispatch",
           "select_backend"]

OPS = ("edge_softmax", "gat", "gatv2", "dot_product")

# ``decline(**ctx)`` returns None when the backend can run the call, else a reason.
Decline = Callable[..., Optional[str]]


@dataclass
class Backend:
    name: str
    fn: Callable
    decline: Decline
    priority: int


_REGISTRY: Dict[str, Dict[str, Backend]] = {op: {} for op in OPS}


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.forced: Tuple[str, ...] = ()  # use_backend stack, innermost last
        # op -> (chosen backend, {declined backend: reason}) of the most recent eager call
        self.last: Dict[str, Tuple[str, Dict[str, str]]] = {}


_STATE = _ThreadState()


def _accept_all(**ctx) -> Optional[str]:
    return None


def _from_supports(supports: Callable[..., bool]) -> Decline:
    def decline(**ctx) -> Optional[str]:
        return None if supports(**ctx) else "its supports() returned False for this call"

    return decline


def register_backend(
    op: str,
    name: str,
    fn: Callable,
    *,
    supports: Optional[Callable[..., bool]] = None,
    decline: Optional[Decline] = None,
    priority: int = 0,
) -> None:
    """Register ``fn`` as backend ``name`` of ``op``; higher ``priority`` wins among
    the backends that accept a call.

    Say which calls it takes with either ``decline(**ctx)``, returning ``None`` to
    accept or a short reason to decline, or ``supports(**ctx) -> bool``. Both receive
    ``op``, ``forced`` (whether the caller named this backend) and the call's
    description, the same keys for every attention op (``device``, ``dtype``, ``graph``,
    ``dropout``, ``need_weights``, ``has_edge_terms``, ``has_edge_mask``, ``heads``,
    ``channels``; ``edge_softmax`` passes ``device``, ``dtype``, ``graph``).
    """
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    if supports is not None and decline is not None:
        raise ValueError("give supports= or decline=, not both")
    rule = decline if decline is not None else (_from_supports(supports) if supports is not None else _accept_all)
    _REGISTRY[op][name] = Backend(name, fn, rule, priority)


def available_backends(op: Optional[str] = None):
    """Names of the registered backends, per op (or for one op), highest priority first."""
    if op is not None:
        if op not in _REGISTRY:
            raise ValueError(f"unknown op {op!r}; ops are {OPS}")
        return sorted(_REGISTRY[op], key=lambda n: -_REGISTRY[op][n].priority)
    return {o: available_backends(o) for o in OPS}


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force every op inside the block to run on backend ``name`` (e.g.
    ``"reference"``), in this thread only. An op that has no such backend,
    or whose backend declines the call, raises and says why."""
    if not any(name in table for table in _REGISTRY.values()):
        raise ValueError(f"unknown backend {name!r}; registered: {available_backends()}")
    outer = _STATE.forced
    _STATE.forced = outer + (name,)
    try:
        yield
    finally:
        _STATE.forced = outer


def last_backend(op: str) -> Optional[str]:
    """The backend that ran the most recent eager call of ``op`` in this thread (not
    recorded while tracing under ``torch.compile``)."""
    last = _STATE.last.get(op)
    return None if last is None else last[0]


def why_not(op: str) -> Dict[str, str]:
    """For the most recent eager call of ``op`` in this thread: each higher-priority
    backend that declined it, with its reason (empty when the first choice ran)."""
    last = _STATE.last.get(op)
    return {} if last is None else dict(last[1])


def explain_dispatch(op: str, **call) -> Dict[str, Optional[str]]:
    """Each backend of ``op``, highest priority first, with ``None`` if it would take a
    call described by ``call`` (the keys :func:`graphattn.ops._pipeline.describe_call`
    gives: ``device``, ``dtype``, ``graph``, ``dropout``, ``need_weights``,
    ``has_edge_terms``, ``has_edge_mask``, ``heads``, ``channels``) or the reason it
    would decline. Runs nothing; the first ``None`` is the backend a call would get
    unless one is forced. After a real call, :func:`why_not` says the same for it."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    return {b.name: b.decline(forced=False, op=op, **call)
            for b in sorted(_REGISTRY[op].values(), key=lambda b: -b.priority)}


def select_backend(op: str, backend: Optional[str] = None, **ctx) -> Backend:
    table = _REGISTRY[op]
    forced = _STATE.forced
    name = backend if backend is not None else (forced[-1] if forced else None)
    declined: Dict[str, str] = {}
    if name is not None:
        if name not in table:
            raise ValueError(f"op {op!r} has no backend {name!r}; available: {available_backends(op)}")
        chosen = table[name]
        reason = chosen.decline(forced=True, op=op, **ctx)
        if reason is not None:
            raise RuntimeError(
                f"backend {name!r} cannot run {op!r} here: {reason} "
                f"(device={ctx.get('device')}, dtype={ctx.get('dtype')})"
            )
    else:
        chosen = None
        for cand in sorted(table.values(), key=lambda b: -b.priority):
            reason = cand.decline(forced=False, op=op, **ctx)
            if reason is None:
                chosen = cand
                break
            declined[cand.name] = reason
        if chosen is None:
            raise RuntimeError(f"no backend of {op!r} accepts this call: {declined}")
    if not torch.compiler.is_compiling():
        _STATE.last[op] = (chosen.name, declined)
    return chosen
