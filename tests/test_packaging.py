"""Packaging: the wheel and the sdist carry the native CPU kernel's source, a wheel
installed outside the checkout finds it, and ``import graphattn`` stays cheap.

The wheel and sdist are built offline from a copy of the checkout with the
environment's own setuptools (``--no-build-isolation --no-index``), so the
checkout's build/ and *.egg-info are never touched and no network is needed.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "graphattn"
CPP = "graphattn/ops/csrc/fused_attention.cpp"
# Copied next to the root-level files; tests/ and examples/ only so that the build
# has them in reach and the checks can show they stay out of the wheel.
COPY_DIRS = ("graphattn", "tests", "examples")
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.so", "*.egg-info")


def _run(cmd, **kw):
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", OMP_NUM_THREADS="1")
    env.update(kw.pop("env", {}))
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)
    if res.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {res.returncode}\n--- stdout\n{res.stdout[-4000:]}"
            f"\n--- stderr\n{res.stderr[-4000:]}"
        )
    return res


def _package_files(src: Path) -> set:
    """Every file of the package in a source tree, as archive names."""
    return {
        p.relative_to(src).as_posix()
        for p in (src / PKG).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo", ".so")
    }


def _build_wheel(src: Path, out: Path) -> Path:
    _run(
        [sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", out]
    )
    (wheel,) = out.glob(f"{PKG}-*.whl")
    return wheel


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in the environment")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for p in ROOT.iterdir():
        if p.is_file():
            shutil.copy2(p, src / p.name)
    for d in COPY_DIRS:
        if (ROOT / d).is_dir():
            shutil.copytree(ROOT / d, src / d, ignore=JUNK)
    wheel = _build_wheel(src, tmp / "wheel")
    sdist_dir = tmp / "sdist"
    _run(
        [sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(sdist_dir)!r})"],
        cwd=src,
    )
    (sdist,) = sdist_dir.glob(f"{PKG}-*.tar.gz")
    return {"tmp": tmp, "src": src, "wheel": wheel, "sdist": sdist}


def test_wheel_has_every_module_and_the_kernel_source(built):
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    assert CPP in names
    missing = _package_files(built["src"]) - names
    assert not missing, f"package files missing from the wheel: {sorted(missing)}"
    subpackages = {p.parent.relative_to(built["src"]).as_posix() for p in (built["src"] / PKG).rglob("__init__.py")}
    assert {"graphattn", "graphattn/nn", "graphattn/ops"} <= subpackages
    assert all(f"{d}/__init__.py" in names for d in subpackages)
    # Nothing but the package and its metadata: no tests/, examples/ or top-level modules.
    name, version = built["wheel"].name.split("-")[:2]
    stray = sorted(n for n in names if not n.startswith((f"{PKG}/", f"{name}-{version}.dist-info/")))
    assert not stray, f"files outside the package in the wheel: {stray}"
    assert not any(n.startswith(("tests/", "examples/")) or "/tests/" in n for n in names)


def test_sdist_has_the_kernel_source_and_builds_a_complete_wheel(built):
    with tarfile.open(built["sdist"]) as tar:
        top = built["sdist"].name[: -len(".tar.gz")]
        names = {n[len(top) + 1 :] for n in tar.getnames() if n.startswith(top + "/")}
        assert CPP in names
        assert {"pyproject.toml", "README.md", "PKG-INFO"} <= names
        missing = _package_files(built["src"]) - names
        assert not missing, f"package files missing from the sdist: {sorted(missing)}"
        unpacked = built["tmp"] / "from-sdist"
        if hasattr(tarfile, "data_filter"):
            tar.extractall(unpacked, filter="data")
        else:
            tar.extractall(unpacked)
    # pip install from the sdist builds a wheel from it: that wheel must have the kernel too.
    wheel = _build_wheel(unpacked / top, built["tmp"] / "wheel-from-sdist")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert CPP in names
    assert not _package_files(built["src"]) - names


def _install(built, name: str) -> Path:
    target = built["tmp"] / name
    _run([sys.executable, "-m", "pip", "install", built["wheel"], "--no-deps", "--no-index", "-q", "--target", target])
    return target


def _run_installed(target: Path, code: str, env=None):
    """Run ``code`` with the installed wheel and the environment's site-packages
    (for torch) as the only import paths: ``-S`` skips site-packages' .pth files,
    so an editable install of the checkout cannot shadow the wheel."""
    paths = sysconfig.get_paths()
    pythonpath = os.pathsep.join(dict.fromkeys([str(target), paths["purelib"], paths["platlib"]]))
    return _run(
        [sys.executable, "-S", "-c", textwrap.dedent(code)],
        cwd=target.parent,
        env={"PYTHONPATH": pythonpath, **(env or {})},
    )


def test_installed_wheel_finds_the_kernel_source(built):
    target = _install(built, "site")
    res = _run_installed(
        target,
        """
        import json, sys
        import graphattn.ops.cpu as cpu
        print(json.dumps({"module": cpu.__file__, "source": str(cpu._SOURCE), "exists": cpu._SOURCE.exists(),
                          "size": cpu._SOURCE.stat().st_size if cpu._SOURCE.exists() else -1}))
    """,
    )
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(info["module"]).resolve().is_relative_to(target.resolve()), info
    assert Path(info["source"]).resolve().is_relative_to(target.resolve()), info
    assert info["exists"], f"the installed package has no kernel source: {info}"
    assert info["size"] == (ROOT / CPP).stat().st_size


@pytest.mark.slow
def test_installed_wheel_compiles_and_runs_the_kernel(built):
    """End to end (about 40 s of compiling): the kernel builds from the installed
    wheel's source alone, in a fresh extensions cache, and matches the reference."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    target = _install(built, "site-compile")
    res = _run_installed(
        target,
        """
        import torch
        from graphattn import Graph, ops
        from graphattn.ops import cpu
        assert cpu.is_available(), cpu._EXT_ERROR
        g = Graph.from_edge_index(torch.randint(0, 50, (2, 300), generator=torch.Generator().manual_seed(0)), 50)
        s = torch.randn(g.num_edges, 3, dtype=torch.float64)
        y = ops.edge_softmax(s, g, backend="cpu")
        assert ops.last_backend("edge_softmax") == "cpu", ops.last_backend("edge_softmax")
        torch.testing.assert_close(y, ops.edge_softmax(s, g, backend="reference"))
        print("EXT", cpu._EXT.__file__)
    """,
        env={"TORCH_EXTENSIONS_DIR": str(built["tmp"] / "torch-extensions"), "GRAPHATTN_DISABLE_CPU_KERNEL": "0"},
    )
    assert str(built["tmp"] / "torch-extensions") in res.stdout


HEAVY = ("torch._dynamo", "torch._inductor", "triton")


def test_import_graphattn_is_cheap():
    """``import graphattn`` loads nothing heavy: torch.compile's machinery (and
    triton, which it pulls in) costs seconds and is only needed when used."""
    res = _run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import json, sys, time
        t0 = time.perf_counter()
        import torch
        t1 = time.perf_counter()
        import graphattn
        t2 = time.perf_counter()
        print(json.dumps({{"torch_s": t1 - t0, "graphattn_s": t2 - t1, "file": graphattn.__file__,
                          "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """),
        ],
        cwd=ROOT,
    )
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(info["file"]).resolve().is_relative_to(ROOT), info
    assert not info["heavy"], (
        f"import graphattn loaded {info['heavy']} ({info['graphattn_s']:.2f} s after torch's {info['torch_s']:.2f} s); "
        "find the importer with: python -X importtime -c 'import graphattn'"
    )
