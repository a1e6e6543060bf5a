"""Adding a score kind is the edits docs/adding-a-score-kind.md lists, and nothing more.

A copy of the package gets exactly those edits for a new kind, ``RELU_ADD``
(``att . relu(x_src[j] + x_dst[i]) + edge_bias[e]``, with a new activation row), then
``python -m graphattn.ops._codegen`` writes its traits into the copy's kernels. In a
subprocess (the package's registries here stay as they are) the new op must then be
registered on every fused backend and match a hand-written oracle
(``add_score_kind_worker.py``), outputs, weights and gradients, on the reference backend,
the C++ kernel (built for the copy: slow) and the Triton kernels under the interpreter.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import graphattn

TESTS = Path(__file__).resolve().parent
PACKAGE = Path(graphattn.__file__).resolve().parent

# (file, anchor, text): the text goes in after the anchor, or before it where the text
# ends in a newline and the anchor starts with one; each anchor must occur exactly once.
EDITS = [
    (
        "ops/_fused.py",
        'Activation("identity", "z", "1"),\n',
        '    Activation("relu", "max(z, 0)", "where(z > 0, 1, 0)"),\n',
    ),
    (
        "ops/_fused.py",
        "scalar=False, takes_edge_bias=True),\n",
        '    ScoreKind("RELU_ADD", 3, adds_dst=True, weight="att", activation="relu", scalar=False, '
        "takes_edge_bias=True),\n",
    ),
    (
        "ops/_inputs.py",
        "\n# The fused ops, each naming its score kind",
        """
RELU_ADD = OpSpec("relu_add", (
    TensorArg("x_src", "src", ("heads", "channels")),
    TensorArg("x_dst", "dst", ("heads", "channels")),
    TensorArg("att", None, ("heads", "channels")),
    TensorArg("value", "src", ("heads", "value_channels")),
    TensorArg("edge_bias", "edge", ("heads",), optional=True),
    _EDGE_MASK,
), (_DROPOUT,), fused_call("RELU_ADD", ("x_src", "x_dst", "att", "value"), dst_term="x_dst", src_term="x_src",
                           value="value", att="att", edge_bias="edge_bias"))
""",
    ),
    ("ops/_inputs.py", "FUSED = (GAT, GATV2, DOT_PRODUCT", ", RELU_ADD"),
    (
        "ops/reference.py",
        "\n# Each fused kind's formula, by the kind's name",
        """
def relu_add_scores(graph, dst_term, src_term, edge_score_term, edge_bias, att, slope, scale, dtype):
    z = src_term.to(dtype).index_select(0, graph.col) + dst_term.to(dtype).index_select(0, graph.row)
    s = (torch.relu(z) * att.to(dtype)).sum(-1)
    return s if edge_bias is None else s + edge_bias.to(dtype)

""",
    ),
    ("ops/reference.py", "KIND_SCORES = {", '"RELU_ADD": relu_add_scores, '),
    (
        "ops/functional.py",
        "\nRECORDS = {r.name: r for r in (GAT, GATV2, DOT_PRODUCT",
        """
RELU_ADD = OpRecord(_inputs.RELU_ADD, lead="x_src", node_inputs=("x_src", "x_dst", "value"),
                    edge_terms=("edge_bias",), score_inputs=("x_src", "x_dst", "att", "edge_bias"))
""",
    ),
    ("ops/functional.py", "RECORDS = {r.name: r for r in (GAT, GATV2, DOT_PRODUCT", ", RELU_ADD"),
    (
        "ops/functional.py",
        "\n# The public function of each record, by op name",
        '''
def relu_add_attention(x_src, x_dst, att, value, graph, *, edge_bias=None, dropout=0.0, training=True,
                       return_weights=False, backend=None, edge_mask=None):
    """``att . relu(x_src[j] + x_dst[i]) + edge_bias[e]``, softmax, weighted sum of ``value``."""
    tensors = dict(x_src=x_src, x_dst=x_dst, att=att, value=value, edge_bias=edge_bias, edge_mask=edge_mask)
    return run(RELU_ADD, graph, tensors, dict(dropout=dropout), training=training,
               return_weights=return_weights, backend=backend)

''',
    ),
    ("ops/functional.py", "PUBLIC_OPS = {", "RELU_ADD.name: relu_add_attention, "),
]


def _insert(path: Path, anchor: str, text: str) -> None:
    source = path.read_text()
    assert source.count(anchor) == 1, f"{path.name}: the anchor {anchor!r} occurs {source.count(anchor)} times"
    before = anchor.startswith("\n") and text.endswith("\n")
    path.write_text(source.replace(anchor, text + anchor if before else anchor + text))


@pytest.fixture(scope="module")
def patched(tmp_path_factory) -> Path:
    """A copy of the package with the new kind's edits, its kernels regenerated."""
    root = tmp_path_factory.mktemp("add_kind")
    shutil.copytree(PACKAGE, root / "graphattn", ignore=shutil.ignore_patterns("__pycache__"))
    for name, anchor, text in EDITS:
        _insert(root / "graphattn" / name, anchor, text)
    codegen = subprocess.run(
        [sys.executable, "-m", "graphattn.ops._codegen"],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert codegen.returncode == 0, codegen.stderr
    return root


def _env(root: Path, **extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(TESTS)]), OMP_NUM_THREADS="1", **extra)
    env.pop("GRAPHATTN_DISABLE_CPU_KERNEL", None)
    return env


def _worker(root: Path, backend: str, timeout: int, **env) -> str:
    proc = subprocess.run(
        [sys.executable, str(TESTS / "add_score_kind_worker.py"), backend],
        cwd=root,
        env=_env(root, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_codegen_writes_the_new_kind_into_both_kernels(patched):
    header = (patched / "graphattn" / "ops" / "csrc" / "score_kinds.h").read_text()
    assert "struct KindTraits<RELU_ADD>" in header and "kAct_relu" in header
    assert "ACT_RELU" in (patched / "graphattn" / "ops" / "triton_score_kinds.py").read_text()
    check = subprocess.run(
        [sys.executable, "-m", "graphattn.ops._codegen", "--check"],
        cwd=patched,
        env=_env(patched),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout


def test_new_kind_matches_its_oracle_on_reference(patched):
    assert "relu_add reference ok" in _worker(patched, "reference", timeout=300)


@pytest.mark.slow
def test_new_kind_matches_its_oracle_on_the_cpp_kernel(patched):
    assert "relu_add cpu ok" in _worker(patched, "cpu", timeout=900)


@pytest.mark.slow
def test_new_kind_matches_its_oracle_on_triton_interpreted(patched):
    pytest.importorskip("triton")
    assert "relu_add triton ok" in _worker(patched, "triton", timeout=900, TRITON_INTERPRET="1")
