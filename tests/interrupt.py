"""Killed runs for the resume tests: a script's function raises KeyboardInterrupt at
its n-th call, as if the process were stopped there."""

import pytest


def run_killed(monkeypatch, module, name: str, at_call: int, run) -> None:
    """Call ``run()`` with ``module.<name>`` raising ``KeyboardInterrupt`` on its
    ``at_call``-th call; the run must be interrupted, and the function is restored."""
    real, calls = getattr(module, name), {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        monkeypatch.setattr(module, name, real)
