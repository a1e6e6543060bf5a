"""What every training script needs: devices, atomic checkpoints, results files, curves."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pickle
import platform
import stat
import sys
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import torch

__all__ = [
    "add_run_arguments",
    "add_config_argument",
    "parse_with_config",
    "bounded",
    "positive_int",
    "nonnegative_int",
    "seed_int",
    "probability",
    "unit_interval",
    "positive_float",
    "nonnegative_float",
    "number_list",
    "choice_list",
    "output_problem",
    "check_outputs",
    "check_heads_divide",
    "restoring",
    "exits_on_checkpoint_error",
    "resume_from",
    "training_state",
    "restore_training_state",
    "resolve_device",
    "device_argument",
    "atomic_save",
    "CheckpointError",
    "load_checkpoint",
    "atomic_write_json",
    "summarize_runs",
    "machine_info",
    "plot_curves",
    "report",
]


def resolve_device(name) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or a ``torch.device``; a GPU asked for
    but absent is a ``ValueError`` that says so."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name!r} is not a device: use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but no CUDA GPU is available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) present")
    return dev


def device_argument(name: str) -> torch.device:
    """``resolve_device`` as an argparse ``type``: a bad ``--device`` is reported by argparse
    (``error: argument --device: ...``, exit status 2), the script's own way of exiting."""
    try:
        return resolve_device(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def bounded(kind: type, low=None, high=None, low_open: bool = False, high_open: bool = False) -> Callable:
    """An argparse ``type``: ``kind`` (``int`` or ``float``, finite) within ``[low, high]``
    (``None``: unbounded; ``*_open``: the bound itself excluded). A value outside is
    argparse's own error (``argument --x: ...``, exit status 2)."""
    if low is not None and high is not None:
        where = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None or high is not None:
        where = (
            f" {'>' if low is not None else '<'}{'' if (low_open or high_open) else '='}"
            f" {low if high is None else high}"
        )
    else:
        where = ""
    need = ("an integer" if kind is int else "a finite number") + where

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}") from None
        if (
            not math.isfinite(value)
            or (low is not None and (value <= low if low_open else value < low))
            or (high is not None and (value >= high if high_open else value > high))
        ):
            raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}")
        return value

    parse.__name__ = need  # what argparse names in its own messages
    return parse


positive_int = bounded(int, 1)
nonnegative_int = bounded(int, 0)
seed_int = bounded(int, 0, 2**32, high_open=True)  # room for the scripts' seed arithmetic in 64 bits
probability = bounded(float, 0, 1, high_open=True)  # dropout, warm-up and label-smoothing shares
unit_interval = bounded(float, 0, 1)
positive_float = bounded(float, 0, low_open=True)
nonnegative_float = bounded(float, 0)


def number_list(item: Callable) -> Callable:
    """An argparse ``type``: comma-separated values, each parsed by ``item`` (e.g.
    ``number_list(nonnegative_float)``); at least one."""

    def parse(text: str) -> list:
        values = [item(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"needs at least one value, got {text!r}")
        return values

    parse.__name__ = f"comma-separated list ({getattr(item, '__name__', 'value')})"
    return parse


def choice_list(choices: Sequence[str]) -> Callable:
    """An argparse ``type``: comma-separated names, each one of ``choices`` (in the
    order given, without repeats); at least one. A name outside is argparse's error,
    listing the choices."""

    def parse(text: str) -> list:
        names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            what = f"unknown {', '.join(map(repr, unknown))}" if unknown else f"none given in {text!r}"
            raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(choices)} (comma-separated)")
        return names

    parse.__name__ = "comma-separated list of names"
    return parse


def output_problem(path: os.PathLike, directory: bool = False) -> Optional[str]:
    """Why a script could not write ``path`` (a file, or with ``directory`` a folder it
    creates and writes into), or None: the path (when it exists) must be of that kind
    and writable, and its nearest existing folder writable (files are written beside
    themselves and renamed into place; missing folders are created)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if directory != path.is_dir():
            return "it is a directory" if path.is_dir() else "it exists and is not a directory"
        if not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
            return "it exists and is not writable"
        if directory:
            return None
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    return None


def check_outputs(
    parser: argparse.ArgumentParser, files: Mapping[str, os.PathLike] = {}, directories: Mapping[str, os.PathLike] = {}
) -> None:
    """Every output a script will write (``{"--out": path, ...}``), checked before any
    work: one that cannot be written is ``parser.error`` (exit status 2) now, not a
    failure after all the training."""
    for directory, outputs in ((False, files), (True, directories)):
        for name, path in outputs.items():
            problem = output_problem(path, directory)
            if problem is not None:
                parser.error(f"{name} {path} cannot be written: {problem}")


def check_heads_divide(parser: argparse.ArgumentParser, width: int, heads: int, width_flag: str = "--dim") -> None:
    """Heads split the model width (their outputs are concatenated): a width they do not
    divide is ``parser.error`` now, not an assertion inside the first layer built."""
    if width % heads:
        parser.error(f"{width_flag} ({width}) must be a multiple of --heads ({heads}): heads are concatenated")


def add_run_arguments(parser, default_out: str, smoke_help: str, runs: int = 1) -> None:
    """The arguments every example shares: seeds, device, results file, resume, smoke mode."""
    parser.add_argument(
        "--runs", type=positive_int, default=runs, help=f"number of seeds (default {runs}); run r uses --seed + r"
    )
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--device", default="auto", type=device_argument, help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--out", default=None, help=f"results JSON (default {default_out}); checkpoint and plots beside it"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: a JSON object of flags, read by :func:`parse_with_config`."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help='JSON object of flags keyed by their long options, e.g. {"dataset": "Cora", '
        '"weight-decay": 0.001}; flags on the command line override it',
    )


def _long_options(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """``{"weight-decay": action, ...}``: the parser's long options, less --help and --config."""
    return {
        opt[2:]: action
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt not in ("--help", "--config")
    }


def _config_tokens(parser: argparse.ArgumentParser, key: str, value: Any, where: str) -> List[str]:
    """The command-line tokens that the config entry ``key: value`` stands for, its value
    checked by the option's own argparse type and choices (errors name the file and key)."""
    options = _long_options(parser)
    action = options.get(key.replace("_", "-"))
    if action is None:
        parser.error(f"{where}: unknown key {key!r}; keys are the long options: {', '.join(sorted(options))}")
    flag = action.option_strings[-1]
    if action.nargs == 0:  # store_true and the like
        if not isinstance(value, bool):
            parser.error(f"{where}: {key!r} is a switch: give true or false, got {value!r}")
        return [flag] if value else []
    if value is None:
        return []
    if isinstance(value, (bool, list, dict)):
        parser.error(f"{where}: {key!r} takes a number or a string, got {value!r}")
    text = str(value)
    try:
        parsed = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        parser.error(f"{where}: {key!r}: {e}")
    if action.choices is not None and parsed not in action.choices:
        parser.error(f"{where}: {key!r}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return [f"{flag}={text}"]


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with the flags of ``--config FILE`` (if given) read first,
    so that the command line overrides them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    path = pre.parse_known_args(argv)[0].config
    tokens: List[str] = []
    if path is not None:
        where = f"--config {path}"
        try:
            config = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            parser.error(f"{where}: cannot be read as JSON: {e}")
        if not isinstance(config, dict):
            parser.error(f"{where}: must hold a JSON object of flags, got {type(config).__name__}")
        for key, value in config.items():
            tokens += _config_tokens(parser, key, value, where)
    return parser.parse_args(tokens + argv)


def resume_from(
    path: os.PathLike, config: Dict[str, Any], resume: bool, keys: Sequence[str] = ()
) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue from (None: start afresh). A checkpoint written with
    another configuration, or without the entries ``keys`` the script reads from it,
    is an error rather than a silent restart or a mixed result.
    Raises :class:`CheckpointError` (a ``ValueError``) for an unusable file; scripts
    turn it into their own exit message."""
    ckpt = load_checkpoint(path) if resume else None
    if ckpt is not None and ckpt.get("config") != config:
        raise CheckpointError(
            f"{path} was written with another configuration; remove it or rerun with the same arguments"
        )
    missing = [k for k in keys if ckpt is not None and k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} cannot be used: it lacks {', '.join(missing)}; {_RESUME_HINT}")
    return ckpt


def training_state(model, opt, sched: Optional[Any], gen: torch.Generator) -> Dict[str, Any]:
    """What a checkpoint needs to continue training exactly: weights, optimiser and
    schedule state, the data generator's and torch's RNG states."""
    return {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "sched": sched.state_dict() if sched is not None else None,
        "gen": gen.get_state(),
        "rng": torch.get_rng_state(),
    }


def restore_training_state(
    saved: Dict[str, Any], model, opt, sched: Optional[Any], gen: torch.Generator, path: os.PathLike
) -> None:
    """The inverse of :func:`training_state`; ``saved`` came from the checkpoint at
    ``path``, which a :class:`CheckpointError` names when the state does not fit."""
    with restoring(path):
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        if sched is not None:
            sched.load_state_dict(saved["sched"])
        gen.set_state(saved["gen"])
        torch.set_rng_state(saved["rng"])


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:  # read without changing it (os.umask is process-wide)
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere: set and restore; the restrictive value in between
    os.umask(mask)
    return mask


def _file_mode(path: Path) -> int:
    """The mode a rewritten ``path`` keeps: the existing file's, else what ``open(path, "w")``
    gives under the current umask (``mkstemp`` alone would leave 0600)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# What ``torch.load(weights_only=True)`` rebuilds without an allow-list (exact types:
# a numpy scalar is a float subclass, a namedtuple a tuple subclass, and both are refused).
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.Size, torch.device, torch.dtype)
_PLAIN_CONTAINERS = (list, tuple, set, dict, OrderedDict)


def _check_plain(obj: Any, where: str, path: Path) -> None:
    kind = type(obj)
    if kind in (torch.Tensor, torch.nn.Parameter) or kind in _PLAIN_LEAVES:
        return
    if kind in _PLAIN_CONTAINERS:
        if isinstance(obj, dict):
            for key, value in obj.items():
                _check_plain(key, f"{where} key {key!r}", path)
                _check_plain(value, f"{where}[{key!r}]", path)
        else:
            for i, value in enumerate(obj):
                _check_plain(value, f"{where}[{i}]", path)
        return
    raise TypeError(
        f"atomic_save({path}): {where} is a {kind.__module__}.{kind.__qualname__}, which "
        f"torch.load(weights_only=True) refuses; save it as plain ints/floats/strings/lists/dicts "
        f"or tensors (e.g. vars(args), int(x), x.tolist())"
    )


def atomic_save(obj: Any, path: os.PathLike, plain: bool = True) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a
    crash never leaves a half-written checkpoint behind.

    With ``plain`` (the default) ``obj`` must hold only tensors, numbers, strings,
    None and plain lists/tuples/sets/dicts, i.e. what :func:`load_checkpoint`
    (``weights_only=True``) loads back; anything else (a numpy scalar, an argparse
    Namespace, a custom class) is a ``TypeError`` here rather than at ``--resume``."""
    path = Path(path)
    if plain:
        _check_plain(obj, "the object", path)
    _atomic(path, lambda fh: torch.save(obj, fh))


class CheckpointError(ValueError):
    """A checkpoint or saved model that cannot be used: missing pieces (truncated or
    empty), not written by ``torch.save``, not a checkpoint dictionary, holding objects
    other than tensors and plain containers, or written with another configuration.
    The message names the file and what to do."""


_RESUME_HINT = "delete it (or move it away) to start afresh, or run without --resume"


def _load_failure(exc: BaseException) -> str:
    """The informative line of a ``torch.load`` error, without torch's advice to retry
    with ``weights_only=False`` (which is what a crafted file wants)."""
    skip = (
        "weights only load failed",
        "check the documentation",
        "(1)",
        "(2)",
        "please file an issue",
        "in pytorch 2.6",
    )
    for line in str(exc).splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        if line and not line.lower().startswith(skip):
            first = line.split(". ")[0].rstrip(".")  # torch's first sentence says what; the rest is advice
            return f"{type(exc).__name__}: {first[:200]}"
    return type(exc).__name__


def load_checkpoint(path: os.PathLike, hint: str = _RESUME_HINT) -> Optional[Dict[str, Any]]:
    """The checkpoint dictionary at ``path``, or None when there is no file.

    Loaded with ``torch.load(weights_only=True)``: tensors (RNG states included),
    numbers, strings, None and plain lists/tuples/dicts only, so a crafted file cannot
    run code; everything the examples save is of that kind. A file that cannot be
    loaded that way (empty, truncated, not written by ``torch.save``, holding other
    objects, or not a dictionary) raises :class:`CheckpointError` naming the file;
    ``hint`` says what to do about it (default: for a ``--resume`` checkpoint).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be used: it is not a checkpoint these scripts write (it is corrupt, or holds "
            f"objects other than tensors and plain containers, which are never unpickled because that could run "
            f"code; {_load_failure(e)}); {hint}"
        ) from e
    except Exception as e:  # truncated zip, empty file, bytes that are not a torch file, unreadable path
        what = (
            "is empty"
            if path.is_file() and path.stat().st_size == 0
            else "is truncated or was not written by torch.save"
        )
        raise CheckpointError(f"checkpoint {path} cannot be used: it {what} ({_load_failure(e)}); {hint}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} cannot be used: it holds a {type(obj).__name__}, not a checkpoint dictionary; {hint}"
        )
    return obj


_ERRORS_OF_A_MISFIT = (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError, AssertionError)


def _misfit(exc: BaseException) -> str:
    """``load_state_dict``'s complaint on one line (its first lines name the keys and shapes)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines)
    return f"{type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


@contextmanager
def restoring(path: os.PathLike, hint: str = _RESUME_HINT):
    """Around the code that puts a loaded file's contents back (``load_state_dict`` of a
    model, optimiser, schedule or early-stopping rule, generator states, the entries a
    script reads): contents that do not fit what the configuration builds (other keys,
    shapes or parameter groups, missing entries, entries of another kind) raise
    :class:`CheckpointError` naming ``path``, instead of a traceback from deep inside torch."""
    try:
        yield
    except CheckpointError:
        raise
    except torch.cuda.OutOfMemoryError:
        raise
    except _ERRORS_OF_A_MISFIT as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be used: its contents do not fit the model this "
            f"configuration builds ({_misfit(e)}); {hint}"
        ) from e


def exits_on_checkpoint_error(main: Callable) -> Callable:
    """A script's ``main``: a :class:`CheckpointError` anywhere in it (at ``--resume``, or
    when a run's saved state is restored) ends the script with ``error: <message>``, as
    the scripts report every bad input, rather than a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}") from None

    return wrapper


def atomic_write_json(obj: Any, path: os.PathLike) -> None:
    """``obj`` as indented JSON, written atomically (the same way as :func:`atomic_save`)."""
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


def plot_curves(
    curves: Dict[str, List[Iterable[float]]],
    path: os.PathLike,
    title: str = "",
    xlabel: str = "epoch",
    labels: Optional[Sequence[str]] = None,
) -> bool:
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


def report(
    result: Dict[str, Any],
    out: os.PathLike,
    histories: Sequence[Dict[str, List[float]]],
    keys: Sequence[str],
    title: str,
    xlabel: str = "epoch",
    percent: bool = True,
) -> None:
    """Finish an example: ``result`` to ``out`` (JSON, atomically), the curves named by
    ``keys`` (one line per run) to a PNG beside it, and a one-line summary (the metric
    as a percentage, or in its own units with ``percent=False``: an RMSE is not one)."""
    atomic_write_json(result, out)
    png = Path(out).with_suffix(".png")
    plotted = plot_curves({k: [h[k] for h in histories] for k in keys}, png, title=title, xlabel=xlabel)
    mean, std = (100 * result["mean"], 100 * result["std"]) if percent else (result["mean"], result["std"])
    digits = 2 if percent else 4
    print(
        f"{result['dataset']} {result['model']}: {result['metric'].replace('_', ' ')} {mean:.{digits}f} "
        f"+- {std:.{digits}f} over {result['runs']} run(s)"
    )
    print(f"results: {out}" + (f", curves: {png}" if plotted else ""))
