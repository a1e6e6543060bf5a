"""Stress attention: seeded perturbations of graphs and token sequences, a gradient-based
structure attack, and the attention-side measurements that go with them.

Every perturbation takes a ``budget`` (a fraction of the existing edges / tokens, or an
absolute count when an ``int``) and a ``seed``; the same arguments give the same result.
Graph perturbations treat ``edge_index`` as undirected by default (both directions are
inserted or removed together), as Planetoid graphs are.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._csr import check_count as _check_count
from ._graph_build import both_directions, undirected_pairs

__all__ = [
    "insert_random_edges",
    "delete_random_edges",
    "feature_noise",
    "gradient_attack",
    "token_dropout",
    "token_substitution",
    "attention_on_edges",
]

Budget = Union[int, float]


def _count(budget: Budget, total: int, what: str) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"budget must be an int (count) or a float (fraction of {what}), got {budget!r}")
    if isinstance(budget, float):
        return int(round(_real("budget", budget, low=0.0) * total))
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    return budget


def _real(name: str, value, low: float = -math.inf, high: float = math.inf, low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``), else an error naming it:
    a NaN or infinite parameter would otherwise turn every output into NaN without a word."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        where = (
            f"in {'(' if low_open else '['}{low}, {high}]"
            if math.isfinite(high)
            else f"{'>' if low_open else '>='} {low}"
            if math.isfinite(low)
            else "finite"
        )
        raise ValueError(f"{name} must be a finite number {where}, got {value}")
    return value


def _positive(name: str, value) -> int:
    if _check_count(name, value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_seed(seed) -> int:
    """What ``torch.Generator.manual_seed`` takes: an integer in ``[-2**63, 2**64)``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
    return seed


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def _check_edges(edge_index: Tensor, num_nodes: int) -> None:
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be an integer [2, E] tensor, got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"edge_index must be an integer [2, E] tensor, got {edge_index.dtype} {tuple(edge_index.shape)}"
        )
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"edge_index has node ids outside [0, {num_nodes})")


def insert_random_edges(
    edge_index: Tensor, num_nodes: int, budget: Budget, seed: int = 0, undirected: bool = True
) -> Tuple[Tensor, Tensor]:
    """Add ``budget`` random new edges (no self-loops, none already present).

    Returns ``(new_edge_index, inserted)``: the original edges followed by the inserted
    ones (both directions when ``undirected``); ``inserted`` is ``[2, M]`` in the same form."""
    _check_count("num_nodes", num_nodes)
    _check_edges(edge_index, num_nodes)
    _check_seed(seed), _check_flag("undirected", undirected)
    existing = undirected_pairs(edge_index) if undirected else edge_index
    n_new = _count(budget, existing.size(1), "edges")
    present = set((existing[0] * num_nodes + existing[1]).tolist())
    max_new = num_nodes * (num_nodes - 1) // (2 if undirected else 1) - len(present)
    if n_new > max_new:
        raise ValueError(f"cannot insert {n_new} edges: only {max_new} node pairs are free")
    g = torch.Generator().manual_seed(seed)
    chosen = set()
    out = []
    while len(out) < n_new:
        k = 2 * (n_new - len(out)) + 16
        a = torch.randint(0, num_nodes, (k,), generator=g)
        b = torch.randint(0, num_nodes, (k,), generator=g)
        for i, j in zip(a.tolist(), b.tolist()):
            if i == j:
                continue
            if undirected and i > j:
                i, j = j, i
            key = i * num_nodes + j
            if key in present or key in chosen:
                continue
            chosen.add(key)
            out.append((i, j))
            if len(out) == n_new:
                break
    new = torch.tensor(out, dtype=edge_index.dtype).t().reshape(2, -1).to(edge_index.device)
    if undirected:
        new = both_directions(new)
    return torch.cat([edge_index, new], dim=1), new


def delete_random_edges(
    edge_index: Tensor, budget: Budget, seed: int = 0, undirected: bool = True
) -> Tuple[Tensor, Tensor]:
    """Remove ``budget`` random edges (undirected: an edge and its reverse together).
    Returns ``(new_edge_index, removed)`` with the kept edges in their original order."""
    _check_edges(edge_index, 2**62)  # the type and shape first (the count comes from the ids)
    num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
    _check_edges(edge_index, max(num_nodes, 1))
    _check_seed(seed), _check_flag("undirected", undirected)
    g = torch.Generator().manual_seed(seed)
    if undirected:
        pairs = undirected_pairs(edge_index)
        n_del = min(_count(budget, pairs.size(1), "edges"), pairs.size(1))
        drop = pairs[:, torch.randperm(pairs.size(1), generator=g)[:n_del]]
        lo = torch.minimum(edge_index[0], edge_index[1])
        hi = torch.maximum(edge_index[0], edge_index[1])
        gone = torch.isin(lo * num_nodes + hi, drop[0] * num_nodes + drop[1]) & (lo != hi)
        return edge_index[:, ~gone], both_directions(drop)
    n_del = min(_count(budget, edge_index.size(1), "edges"), edge_index.size(1))
    idx = torch.randperm(edge_index.size(1), generator=g)[:n_del]
    keep = torch.ones(edge_index.size(1), dtype=torch.bool)
    keep[idx] = False
    return edge_index[:, keep], edge_index[:, ~keep]


def feature_noise(x: Tensor, scale: float, seed: int = 0, relative: bool = True) -> Tensor:
    """``x + N(0, sigma^2)`` with ``sigma = scale * x.std()`` (``relative``) or ``scale``."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor (noise on integers would be rounded away), got "
            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}"
        )
    scale = _real("scale", scale, low=0.0)
    _check_seed(seed), _check_flag("relative", relative)
    if relative and scale and x.numel() < 2:
        raise ValueError(
            f"relative noise scales by x.std(), which needs at least 2 elements (x has {x.numel()}); "
            f"pass relative=False for an absolute scale"
        )
    g = torch.Generator().manual_seed(seed)
    sigma = scale * float(x.float().std()) if relative and scale else scale
    if not math.isfinite(sigma):
        raise ValueError(
            "relative noise scales by x.std(), which is not finite (x holds NaN or inf); pass "
            "relative=False for an absolute scale"
        )
    return x + sigma * torch.randn(x.shape, generator=g).to(x.device, x.dtype)


def _norm_adj(A: Tensor) -> Tensor:
    A = A + torch.eye(A.size(0), device=A.device)
    d = A.sum(1).rsqrt()
    return d.unsqueeze(1) * A * d.unsqueeze(0)


def gradient_attack(
    x: Tensor,
    edge_index: Tensor,
    y: Tensor,
    train_mask: Tensor,
    target_mask: Tensor,
    budget: Budget,
    seed: int = 0,
    steps: int = 20,
    surrogate_epochs: int = 200,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Greedy gradient-based edge-flip attack (evasion) on a linearised two-layer GCN
    surrogate, :math:`\\text{softmax}(\\hat A^2 X W)` (Wu et al. 2019's SGC; the surrogate of
    Zügner et al.'s Nettack/Metattack).

    The surrogate is trained on ``train_mask``; then, ``steps`` times, the gradient of its
    classification margin on the ``target_mask`` nodes it still classifies correctly (true
    labels on training nodes, the surrogate's own predictions elsewhere: no test labels are
    used; a margin rather than cross-entropy, so flips are not spent on nodes already lost)
    with respect to the dense adjacency scores every flip ``(i, j)`` by :math:`g_{ij}(1 - 2A_{ij})`,
    and the best ``budget / steps`` flips (insertions or deletions, symmetric, no self-loops, no
    pair flipped twice) are made.
    The perturbed graph transfers to the attention models being evaluated (a grey-box attack).
    Dense ``N x N``: for graphs up to a few tens of thousands of nodes.

    Returns ``(new_edge_index, {"inserted": [2, M], "removed": [2, K]})`` (both directions).
    """
    N = _check_attack_inputs(x, y, train_mask, target_mask)
    _check_edges(edge_index, N)
    _positive("steps", steps), _check_count("surrogate_epochs", surrogate_epochs), _check_seed(seed)
    _real("lr", lr, low=0.0, low_open=True), _real("weight_decay", weight_decay, low=0.0)
    pairs = undirected_pairs(edge_index)
    n_flip = _count(budget, pairs.size(1), "edges")
    if n_flip > N * (N - 1) // 2:
        raise ValueError(f"cannot flip {n_flip} edges: a graph of {N} nodes has only {N * (N - 1) // 2} node pairs")
    A = torch.zeros(N, N)
    A[pairs[0], pairs[1]] = 1.0
    A = A + A.t()
    X = x.detach().float().cpu()
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(X.size(1), int(y.max()) + 1, generator=g) * 0.01).requires_grad_()
    S = _norm_adj(A)
    SSX = S @ (S @ X)
    opt = torch.optim.Adam([W], lr=lr, weight_decay=weight_decay)
    yc, tm = y.cpu(), train_mask.cpu()
    for _ in range(surrogate_epochs):
        opt.zero_grad()
        F.cross_entropy(SSX[tm] @ W, yc[tm]).backward()
        opt.step()
    W = W.detach()
    XW = X @ W
    with torch.no_grad():
        labels = (SSX @ W).argmax(-1)
        labels[tm] = yc[tm]
    targets = target_mask.cpu()
    flipped = torch.zeros(N, N, dtype=torch.bool)
    flipped.fill_diagonal_(True)
    done = 0
    for s in range(steps):
        k = (n_flip - done) // (steps - s)
        if k <= 0:
            continue
        Av = A.clone().requires_grad_()
        S = _norm_adj(Av)
        p = torch.softmax((S @ (S @ XW))[targets], dim=-1)
        true = p.gather(1, labels[targets].unsqueeze(1)).squeeze(1)
        other = p.scatter(1, labels[targets].unsqueeze(1), -1.0).max(1).values
        # margin loss, zero once a node is misclassified: flips go to nodes still standing
        loss = -(true - other).clamp_min(0).sum()
        (grad,) = torch.autograd.grad(loss, Av)
        grad = grad + grad.t()
        score = (grad * (1 - 2 * A)).triu(1)
        score[flipped] = float("-inf")
        best = torch.topk(score.flatten(), k).indices
        i, j = best // N, best % N
        A[i, j] = 1 - A[i, j]
        A[j, i] = A[i, j]
        flipped[i, j] = flipped[j, i] = True
        done += k
    new_pairs = A.triu(1).nonzero().t()
    old = set((pairs[0] * N + pairs[1]).tolist())
    new = set((new_pairs[0] * N + new_pairs[1]).tolist())

    def as_index(keys):
        keys = torch.tensor(sorted(keys), dtype=torch.long)
        return (
            both_directions(torch.stack([keys // N, keys % N])) if keys.numel() else torch.empty(2, 0, dtype=torch.long)
        )

    dev = edge_index.device
    return both_directions(new_pairs).to(dev), {
        "inserted": as_index(new - old).to(dev),
        "removed": as_index(old - new).to(dev),
    }


def _check_attack_inputs(x: Tensor, y: Tensor, train_mask: Tensor, target_mask: Tensor) -> int:
    """The node count, after checking the features, labels and masks against it."""
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point [num_nodes, features] tensor, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    N = x.size(0)
    if not isinstance(y, Tensor) or y.shape != (N,) or y.dtype != torch.long or (N and int(y.min()) < 0):
        raise ValueError(f"y must be a long [{N}] tensor of class ids >= 0")
    for name, m in (("train_mask", train_mask), ("target_mask", target_mask)):
        if not isinstance(m, Tensor) or m.shape != (N,) or m.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool [{N}] tensor")
    return N


def _check_ids(ids: Tensor, rate, seed, **ids_args) -> float:
    """Token perturbations: ``ids`` a ``(B, L)`` integer tensor, ``rate`` in [0, 1], the seed,
    and every other id argument a non-negative integer (None where allowed)."""
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(
            f"ids must be a (batch, length) integer tensor, got "
            f"{f'{ids.dtype} {tuple(ids.shape)}' if isinstance(ids, Tensor) else type(ids).__name__}"
        )
    for name, value in ids_args.items():
        if value is not None:
            _check_count(name, value)
    _check_seed(seed)
    return _real("rate", rate, 0.0, 1.0)


def _token_positions(ids: Tensor, pad_id: int, protect: Sequence[int]) -> Tensor:
    ok = ids != pad_id
    for t in protect:
        ok &= ids != t
    return ok


def token_dropout(
    ids: Tensor, rate: float, seed: int = 0, pad_id: int = 0, unk_id: Optional[int] = None, protect: Sequence[int] = ()
) -> Tensor:
    """Drop a ``rate`` fraction of each sequence's real tokens (not padding, not ``protect``):
    replaced by ``unk_id``, or removed and the row left-compacted (padding at the end) when
    ``unk_id`` is None. ``ids``: ``(B, L)`` long."""
    rate = _check_ids(ids, rate, seed, pad_id=pad_id, unk_id=unk_id)
    g = torch.Generator().manual_seed(seed)
    cand = _token_positions(ids, pad_id, protect)
    drop = (torch.rand(ids.shape, generator=g) < rate).to(ids.device) & cand
    if unk_id is not None:
        return ids.masked_fill(drop, unk_id)
    out = torch.full_like(ids, pad_id)
    for r in range(ids.size(0)):
        kept = ids[r][(ids[r] != pad_id) & ~drop[r]]
        out[r, : kept.numel()] = kept
    return out


def token_substitution(
    ids: Tensor, rate: float, vocab_size: int, seed: int = 0, pad_id: int = 0, protect: Sequence[int] = (), low: int = 0
) -> Tensor:
    """Replace a ``rate`` fraction of the real tokens by uniformly random ids in
    ``[low, vocab_size)`` (set ``low`` past the special tokens)."""
    rate = _check_ids(ids, rate, seed, pad_id=pad_id, vocab_size=vocab_size, low=low)
    if low >= vocab_size:
        raise ValueError(f"low ({low}) must be below vocab_size ({vocab_size}): no ids to substitute")
    g = torch.Generator().manual_seed(seed)
    cand = _token_positions(ids, pad_id, protect)
    sub = (torch.rand(ids.shape, generator=g) < rate).to(ids.device) & cand
    rnd = torch.randint(low, vocab_size, ids.shape, generator=g).to(ids.device)
    return torch.where(sub, rnd, ids)


def attention_on_edges(edge_index: Tensor, weights: Tensor, edges: Tensor, num_nodes: int) -> Dict[str, float]:
    """How much attention goes over ``edges`` (e.g. an attack's insertions): for the
    destinations that have at least one of them, the mean over those nodes (and heads) of
    the weight summed over those edges (``mass``), and the uniform-attention baseline
    (``uniform``: the share those edges would get if every in-edge weighed the same).
    ``edge_index``/``weights`` as an attention record holds them (``[2, E]``, ``[E, H]``)."""
    _check_count("num_nodes", num_nodes)
    _check_edges(edge_index, num_nodes)
    _check_edges(edges, num_nodes)
    if not isinstance(weights, Tensor) or weights.dim() == 0 or weights.size(0) != edge_index.size(1):
        raise ValueError(
            f"weights must have one row per edge of edge_index ({edge_index.size(1)}), got "
            f"{tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__}"
        )
    if edges.numel() == 0:
        return {"mass": 0.0, "uniform": 0.0, "nodes": 0}
    key = edge_index[0] * num_nodes + edge_index[1]
    hit = torch.isin(key, edges[0] * num_nodes + edges[1])
    dst = edge_index[1]
    w = weights.float().view(weights.size(0), -1).mean(1)
    mass = torch.zeros(num_nodes).index_add_(0, dst[hit].cpu(), w[hit].cpu())
    n_hit = torch.zeros(num_nodes).index_add_(0, dst[hit].cpu(), torch.ones(int(hit.sum())))
    deg = torch.zeros(num_nodes).index_add_(0, dst.cpu(), torch.ones(dst.numel()))
    affected = n_hit > 0
    if not bool(affected.any()):
        return {"mass": 0.0, "uniform": 0.0, "nodes": 0}
    return {
        "mass": float(mass[affected].mean()),
        "uniform": float((n_hit[affected] / deg[affected]).mean()),
        "nodes": int(affected.sum()),
    }
