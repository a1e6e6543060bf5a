"""Bit-for-bit A/B of the ops between two checkouts, for refactors that must change no arithmetic.

Record each tree's outputs, returned weights and every input gradient on the ``reference`` and
``cpu`` backends (GAT, GATv2, dot-product, score_attention, edge_softmax; with and without
weights, dropout, edge terms and a node order), then compare::

    PYTHONPATH=/path/to/old python tools/ab_outputs.py record old.pt
    PYTHONPATH=.            python tools/ab_outputs.py record new.pt
    python tools/ab_outputs.py compare old.pt new.pt    # exit 1 and the differing cases if any

Run both records with the same torch and thread count (``OMP_NUM_THREADS=1``): the kernels'
reductions are deterministic for a fixed thread count.
"""

from __future__ import annotations

import argparse
import sys

import torch

N, E, H, C = 300, 3000, 4, 16


def _record_case(results: dict, name: str, fn, inputs: dict) -> None:
    for t in inputs.values():
        t.requires_grad_(True)
    torch.manual_seed(1)  # dropout's mask
    out = fn(**inputs)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
    loss.backward()
    results[name] = [o.detach() for o in outs] + [inputs[k].grad for k in sorted(inputs)]


def record() -> dict:
    from graphattn import Graph, ops

    torch.manual_seed(0)
    ei = torch.randint(0, N, (2, E))
    r = lambda *shape: torch.randn(*shape)  # noqa: E731
    results: dict = {}
    for backend in ("reference", "cpu"):
        for ordered in (False, True):
            g = Graph.from_edge_index(ei, (N, N))
            g = g.reorder_nodes("rcm") if ordered else g
            for weights in (False, True):
                for p in (0.0, 0.3):
                    tag = f"-{backend}-order={ordered}-weights={weights}-dropout={p}"
                    common = dict(dropout=p, return_weights=weights, backend=backend)
                    _record_case(
                        results,
                        "gat" + tag,
                        lambda **t: ops.gat_attention(t["a"], t["b"], t["v"], g, edge_score=t["e"], **common),
                        dict(a=r(N, H), b=r(N, H), v=r(N, H, C), e=r(E, H)),
                    )
                    _record_case(
                        results,
                        "gatv2" + tag,
                        lambda **t: ops.gatv2_attention(t["a"], t["b"], t["att"], g, edge_feat=t["e"], **common),
                        dict(a=r(N, H, C), b=r(N, H, C), att=r(H, C), e=r(E, H, C)),
                    )
                    _record_case(
                        results,
                        "dot_product" + tag,
                        lambda **t: ops.dot_product_attention(
                            t["q"], t["k"], t["v"], g, edge_key=t["ek"], edge_value=t["ev"], edge_bias=t["eb"], **common
                        ),
                        dict(q=r(N, H, C), k=r(N, H, C), v=r(N, H, C), ek=r(E, H, C), ev=r(E, H, C), eb=r(E, H)),
                    )
                    _record_case(
                        results,
                        "score" + tag,
                        lambda **t: ops.score_attention(t["s"], t["v"], g, **common),
                        dict(s=r(E, H), v=r(N, H, C)),
                    )
            _record_case(
                results,
                f"edge_softmax-{backend}-order={ordered}",
                lambda **t: ops.edge_softmax(t["s"], g, backend=backend),
                dict(s=r(E, H)),
            )
    return results


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.nan_to_num(), b.nan_to_num())
        and torch.equal(a.isnan(), b.isnan())
    )


def differing(old: dict, new: dict) -> list:
    names = sorted(set(old) | set(new))
    return [
        n
        for n in names
        if n not in old
        or n not in new
        or len(old[n]) != len(new[n])
        or not all(_same(a, b) for a, b in zip(old[n], new[n]))
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("record").add_argument("out")
    cmp = sub.add_parser("compare")
    cmp.add_argument("old")
    cmp.add_argument("new")
    args = parser.parse_args(argv)
    if args.cmd == "record":
        results = record()
        torch.save(results, args.out)
        print(f"{len(results)} cases, {sum(len(v) for v in results.values())} tensors -> {args.out}")
        return 0
    old, new = (torch.load(p, weights_only=True) for p in (args.old, args.new))
    bad = differing(old, new)
    print(f"{len(old)} cases, {sum(len(v) for v in old.values())} tensors; differ: {bad or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
