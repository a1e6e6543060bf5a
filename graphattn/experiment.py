"""What every training script needs: devices, atomic checkpoints, results files, curves."""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

__all__ = [
    "add_run_arguments",
    "resume_from",
    "training_state",
    "restore_training_state",
    "resolve_device",
    "atomic_save",
    "load_checkpoint",
    "atomic_write_json",
    "summarize_runs",
    "machine_info",
    "plot_curves",
    "report",
]


def resolve_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``; a GPU asked for but absent is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} was asked for but no CUDA GPU is available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SystemExit(f"error: --device {name}: only {torch.cuda.device_count()} GPU(s) present")
    return dev


def add_run_arguments(parser, default_out: str, smoke_help: str, runs: int = 1) -> None:
    """The arguments every example shares: seeds, device, results file, resume, smoke mode."""
    parser.add_argument("--runs", type=int, default=runs, help=f"number of seeds (default {runs}); run r uses --seed + r")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--out", default=None, help=f"results JSON (default {default_out}); checkpoint and plots beside it")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def resume_from(path: os.PathLike, config: Dict[str, Any], resume: bool) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue from (None: start afresh). A checkpoint written with
    another configuration is an error rather than a silent restart or a mixed result."""
    ckpt = load_checkpoint(path) if resume else None
    if ckpt is not None and ckpt.get("config") != config:
        raise SystemExit(f"error: {path} was written with another configuration; remove it or rerun with the "
                         f"same arguments")
    return ckpt


def training_state(model, opt, sched: Optional[Any], gen: torch.Generator) -> Dict[str, Any]:
    """What a checkpoint needs to continue training exactly: weights, optimiser and
    schedule state, the data generator's and torch's RNG states."""
    return {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict() if sched is not None else None,
            "gen": gen.get_state(), "rng": torch.get_rng_state()}


def restore_training_state(saved: Dict[str, Any], model, opt, sched: Optional[Any], gen: torch.Generator) -> None:
    """The inverse of :func:`training_state`."""
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    if sched is not None:
        sched.load_state_dict(saved["sched"])
    gen.set_state(saved["gen"])
    torch.set_rng_state(saved["rng"])


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a
    crash never leaves a half-written checkpoint behind."""
    _atomic(Path(path), lambda fh: torch.save(obj, fh))


def load_checkpoint(path: os.PathLike) -> Optional[Dict[str, Any]]:
    """The checkpoint at ``path`` or None. Our own checkpoints hold RNG states and
    plain Python containers, hence ``weights_only=False`` (only load files you wrote)."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def atomic_write_json(obj: Any, path: os.PathLike) -> None:
    _atomic(Path(path), lambda fh: fh.write((json.dumps(obj, indent=2) + "\n").encode()))


def summarize_runs(values: Sequence[float]) -> Dict[str, float]:
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std}


def machine_info() -> Dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import torch_geometric

        info["torch_geometric"] = torch_geometric.__version__
    except ImportError:  # pragma: no cover
        pass
    import graphattn

    info["graphattn"] = graphattn.__version__
    return info


def plot_curves(curves: Dict[str, List[Iterable[float]]], path: os.PathLike, title: str = "", xlabel: str = "epoch",
                labels: Optional[Sequence[str]] = None) -> bool:
    """One panel per metric, one line per run (named by ``labels``, default "run i").
    Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(curves)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, run in enumerate(curves[name]):
            ax.plot(list(run), lw=1.2, label=labels[i] if labels is not None else f"run {i}")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    if len(curves[names[0]]) <= 10:
        axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(result: Dict[str, Any], out: os.PathLike, histories: Sequence[Dict[str, List[float]]],
           keys: Sequence[str], title: str, xlabel: str = "epoch") -> None:
    """Finish an example: ``result`` to ``out`` (JSON, atomically), the curves named by
    ``keys`` (one line per run) to a PNG beside it, and a one-line summary."""
    atomic_write_json(result, out)
    png = Path(out).with_suffix(".png")
    plotted = plot_curves({k: [h[k] for h in histories] for k in keys}, png, title=title, xlabel=xlabel)
    print(f"{result['dataset']} {result['model']}: {result['metric'].replace('_', ' ')} {100 * result['mean']:.2f} "
          f"+- {100 * result['std']:.2f} over {result['runs']} run(s)")
    print(f"results: {out}" + (f", curves: {png}" if plotted else ""))
