"""Run by tests/test_add_score_kind.py on a patched copy of the package: the new ``relu_add``
op on the backend named in argv, against a hand-written oracle (outputs, weights, gradients)."""

import sys
from pathlib import Path

import torch

import graphattn
from graphattn import Graph, ops
from graphattn.ops import functional
from oracle import loop_attention

N, E, H, C, CV = 12, 50, 2, 5, 3


def oracle(x_src, x_dst, att, value, edge_bias, edge_index):
    src, dst = edge_index
    scores = (att * torch.relu(x_src[src] + x_dst[dst])).sum(-1) + edge_bias
    return loop_attention(scores, value[src], edge_index, N)


def inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, N - 1, (2, E), generator=gen)  # node N - 1 has no in-edges
    shapes = dict(x_src=(N, H, C), x_dst=(N, H, C), att=(H, C), value=(N, H, CV), edge_bias=(E, H))
    tensors = {k: torch.randn(*s, generator=gen, dtype=dtype).requires_grad_() for k, s in shapes.items()}
    return edge_index, tensors


def gradients(outputs, tensors):
    gen = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, list(tensors.values()))


def main(backend: str) -> None:
    assert Path(graphattn.__file__).resolve().is_relative_to(Path.cwd().resolve()), graphattn.__file__
    assert {"reference", "cpu", "triton"} <= set(ops.available_backends("relu_add")), ops.available_backends()
    dtype, tol = (torch.float32, 1e-4) if backend == "triton" else (torch.float64, 1e-10)
    edge_index, t = inputs(dtype)
    got = functional.relu_add_attention(
        t["x_src"],
        t["x_dst"],
        t["att"],
        t["value"],
        Graph.from_edge_index(edge_index, N),
        edge_bias=t["edge_bias"],
        return_weights=True,
        backend=backend,
    )
    assert ops.last_backend("relu_add") == backend
    want = oracle(t["x_src"], t["x_dst"], t["att"], t["value"], t["edge_bias"], edge_index)
    for name, a, b in zip(("out", "alpha"), got, want):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")
    for name, a, b in zip(t, gradients(got, t), gradients(want, t)):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"d{name}: {m}")
    print(f"relu_add {backend} ok")


if __name__ == "__main__":
    main(sys.argv[1])
