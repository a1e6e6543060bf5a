"""The README's Python snippets run as written (they are the quick start)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)
    assert namespace["out"].shape == (100, 4, 32)
    # What the README prints as its parity results must be what the code gives.
    assert namespace["gat_diff"] < 1e-5  # "~1e-7"
    assert namespace["mha_diff"] < 1e-5 and namespace["w"].shape == (2, 300, 300)
    assert namespace["gps_diff"] < 1e-5 and namespace["h"].shape == (57, 32)
    assert namespace["alpha"].shape == (namespace["graph"].num_edges, 4)  # the functional snippet's weights
