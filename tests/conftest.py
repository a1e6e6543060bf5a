import os

import torch

# Without a GPU, Triton kernels are tested under the interpreter. The variable must
# be set before anything imports triton (PyG and torch probe for it), so here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.register_profile(
    "dev",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def random_graph(num_src, num_dst, num_edges, *, seed=0, self_loops=True, duplicates=True, isolated=True):
    """Random edge_index with the awkward cases in it: duplicate edges, existing
    self-loops and destination nodes without in-edges."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_src, (num_edges,), generator=g)
    hi = max(1, num_dst - 2) if (isolated and num_dst > 3) else num_dst
    dst = torch.randint(0, hi, (num_edges,), generator=g)
    ei = torch.stack([src, dst])
    if duplicates and num_edges > 4:
        ei = torch.cat([ei, ei[:, :3]], dim=1)
    if self_loops and num_src == num_dst and num_dst > 2:
        ei = torch.cat([ei, torch.tensor([[1, 2], [1, 2]])], dim=1)
    perm = torch.randperm(ei.size(1), generator=g)
    return ei[:, perm]


# ------------------------------------------------------------ backends: a parametrisation each, a skip that says why
# A backend that cannot run here shows as a skip with its reason instead of vanishing from
# the list. The reason is asked for when a test is set up, never at collection: asking the
# CPU backend builds its extension.
def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "needs_backend(name): skip, with the backend's own reason, where backend "
        "`name` cannot run the tests' calls (CPU tensors, the backend forced)",
    )


def needs_backend(name):
    """Mark: the test forces backend ``name``; it skips with that backend's reason where it cannot run."""
    return pytest.mark.needs_backend(name)


def backend_params(*names):
    """One ``pytest.param`` per backend name, each skipping (at set-up) with its backend's reason where
    that backend cannot run here: ``@pytest.mark.parametrize("backend", backend_params("reference", "cpu"))``."""
    return [pytest.param(name, id=name, marks=needs_backend(name)) for name in names]


def backend_unavailable_reason(name):
    """Why backend ``name`` cannot run the tests' calls here (CPU tensors, the backend forced), or None."""
    from graphattn import ops

    if name == "reference":
        return None
    if name == "cpu":
        return ops.cpu.unavailable_reason()
    if name == "triton":
        return ops.triton_backend.decline(device=torch.device("cpu"), dtype=torch.float32, forced=True)
    if name == "scatter":
        return ops.scatter.decline(device=torch.device("cpu"), dtype=torch.float32)
    raise ValueError(f"tests/conftest.py has no rule for whether backend {name!r} can run; add one")


def default_cpu_backend():
    """The backend the dispatcher picks unforced for float32 CPU tensors: the fused CPU kernel where it
    can run, else the reference."""
    return "cpu" if backend_unavailable_reason("cpu") is None else "reference"


@pytest.fixture(autouse=True)
def _skip_backends_that_cannot_run(request):
    for mark in request.node.iter_markers("needs_backend"):
        reason = backend_unavailable_reason(mark.args[0])
        if reason is not None:
            pytest.skip(f"backend {mark.args[0]!r} cannot run here: {reason}")
