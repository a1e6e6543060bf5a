import os

import torch

# Without a GPU, Triton kernels are tested under the interpreter. The variable must
# be set before anything imports triton (PyG and torch probe for it), so here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], derandomize=True
)
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
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
