"""Every example answers --help (argparse exits 0 and prints its docstring)."""
import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

EXAMPLES = ["node_classification", "graph_classification", "text_classification", "translation", "language_model", "robustness",
            "visualize_attention", "link_prediction", "ogbn_arxiv", "ogbn_products"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_help(name, capsys):
    mod = importlib.import_module(name)
    with pytest.raises(SystemExit) as exc:
        mod.parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--out" in out  # --out or --out-dir
