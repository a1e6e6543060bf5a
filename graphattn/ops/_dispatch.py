"""Backend registry for the attention ops.

Every op (``"edge_softmax"``, ``"gat"``, ``"gatv2"``, ``"dot_product"``) has one or
more named backends. A call picks one by, in order: the ``backend=`` argument, the
innermost :func:`use_backend` context, then the highest-priority registered backend
that accepts the call. :func:`last_backend` says which ran and :func:`why_not` why the
others did not (PyTorch's ``why_not_fast_path`` idea): a backend declines a call by
returning a reason. Declining has no side effects (:func:`explain_dispatch` runs nothing);
a backend with set-up work (the CPU kernel's build) registers a ``prepare`` that runs
only when a call is about to run on it, and whose failure counts as one more decline.
A forced backend that declines raises :class:`BackendDeclined`; a call no backend takes
raises :class:`NoBackendAccepts` (both ``RuntimeError``, carrying the reasons as values).

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

from ._inputs import FUSED as _FUSED_SPECS

__all__ = [
    "register_backend",
    "available_backends",
    "use_backend",
    "last_backend",
    "why_not",
    "explain_dispatch",
    "select_backend",
    "BackendDeclined",
    "NoBackendAccepts",
]

# edge_softmax, then the fused ops as _inputs declares them
OPS = ("edge_softmax",) + tuple(spec.op for spec in _FUSED_SPECS)

# ``decline(**ctx)`` returns None when the backend can run the call, else a reason.
Decline = Callable[..., Optional[str]]
# ``prepare()`` readies the backend to run (once; may take long) and returns None, or why it cannot.
Prepare = Callable[[], Optional[str]]


class BackendDeclined(RuntimeError):
    """The backend a caller named cannot run the call: ``.op``, ``.backend`` and
    ``.reason`` (its decline reason, or why its ``prepare`` failed)."""

    def __init__(self, op: str, backend: str, reason: str, device=None, dtype=None) -> None:
        super().__init__(f"backend {backend!r} cannot run {op!r} here: {reason} (device={device}, dtype={dtype})")
        self.op, self.backend, self.reason, self.device, self.dtype = op, backend, reason, device, dtype

    def __reduce__(self):
        return type(self), (self.op, self.backend, self.reason, self.device, self.dtype)


class NoBackendAccepts(RuntimeError):
    """No backend of ``.op`` takes the call; ``.declined`` maps each backend to its reason."""

    def __init__(self, op: str, declined: Dict[str, str]) -> None:
        super().__init__(f"no backend of {op!r} accepts this call: {declined}")
        self.op, self.declined = op, dict(declined)

    def __reduce__(self):
        return type(self), (self.op, self.declined)


@dataclass
class Backend:
    name: str
    fn: Callable
    decline: Decline
    priority: int
    prepare: Optional[Prepare] = None

    def refusal(self, forced: bool, op: str, ctx: dict) -> Optional[str]:
        """Why this backend will not run the call, its ``prepare`` included (``None``: it will)."""
        reason = self.decline(forced=forced, op=op, **ctx)
        if reason is None and self.prepare is not None:
            reason = self.prepare()
        return reason


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
    prepare: Optional[Prepare] = None,
    priority: int = 0,
) -> None:
    """Register ``fn`` as backend ``name`` of ``op``; higher ``priority`` wins among
    the backends that accept a call.

    Say which calls it takes with either ``decline(**ctx)``, returning ``None`` to
    accept or a short reason to decline, or ``supports(**ctx) -> bool``. Both receive
    ``op``, ``forced`` (whether the caller named this backend) and the call's
    description, the same keys for every attention op (``device``, ``dtype``, ``graph``,
    ``dropout``, ``need_weights``, ``has_edge_terms``, ``has_edge_mask``, ``heads``,
    ``channels``; ``edge_softmax`` passes ``device``, ``dtype``, ``graph``). Either must
    be free of side effects: :func:`explain_dispatch` asks it without running anything.

    Work the backend needs before its first run (building a kernel) goes in
    ``prepare()``, called only when a call it accepted is about to run on it, and
    returning ``None`` when ready or a reason, which then counts as its decline.
    """
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    if supports is not None and decline is not None:
        raise ValueError("give supports= or decline=, not both")
    rule = decline if decline is not None else (_from_supports(supports) if supports is not None else _accept_all)
    _REGISTRY[op][name] = Backend(name, fn, rule, priority, prepare)


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
    would decline. Runs nothing (no backend's ``prepare`` either: a kernel not yet built
    shows as ``None`` if it could be, and a build failing later moves a call to the next
    backend); the first ``None`` is the backend a call would get unless one is forced.
    After a real call, :func:`why_not` says the same for it."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    return {
        b.name: b.decline(forced=False, op=op, **call)
        for b in sorted(_REGISTRY[op].values(), key=lambda b: -b.priority)
    }


def first_accepting(op: str, skip: Tuple[str, ...] = (), **ctx) -> Tuple[Backend, Dict[str, str]]:
    """The highest-priority backend of ``op`` (not in ``skip``) that accepts the call and
    is prepared to run it, and each one before it that declined, with its reason. Records
    nothing; raises :class:`NoBackendAccepts` when none does."""
    declined: Dict[str, str] = {}
    for cand in sorted(_REGISTRY[op].values(), key=lambda b: -b.priority):
        if cand.name in skip:
            continue
        reason = cand.refusal(False, op, ctx)
        if reason is None:
            return cand, declined
        declined[cand.name] = reason
    raise NoBackendAccepts(op, declined)


def select_backend(op: str, backend: Optional[str] = None, **ctx) -> Backend:
    """The backend that runs a call of ``op`` described by ``ctx``, prepared: the one
    named by ``backend`` or the innermost :func:`use_backend` (raising
    :class:`BackendDeclined` if it declines), else the first that accepts. Records the
    choice for :func:`last_backend` and :func:`why_not` (not while compiling)."""
    table = _REGISTRY[op]
    forced = _STATE.forced
    name = backend if backend is not None else (forced[-1] if forced else None)
    declined: Dict[str, str] = {}
    if name is not None:
        if name not in table:
            raise ValueError(f"op {op!r} has no backend {name!r}; available: {available_backends(op)}")
        chosen = table[name]
        reason = chosen.refusal(True, op, ctx)
        if reason is not None:
            raise BackendDeclined(op, name, reason, device=ctx.get("device"), dtype=ctx.get("dtype"))
    else:
        chosen, declined = first_accepting(op, **ctx)
    if not torch.compiler.is_compiling():
        _STATE.last[op] = (chosen.name, declined)
    return chosen
