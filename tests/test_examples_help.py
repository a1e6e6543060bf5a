"""Every example answers --help (argparse exits 0 and prints its docstring) and lists every
flag its source gives argparse; every flag the README's commands and the script's own
docstring pass it is one it has."""

import ast
import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES_DIR))

EXAMPLES = [
    "node_classification",
    "graph_classification",
    "text_classification",
    "translation",
    "language_model",
    "robustness",
    "visualize_attention",
    "link_prediction",
    "ogbn_arxiv",
    "ogbn_products",
]

FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
OPTION_LINE = re.compile(r"^  (?:-\w(?: \S+)?, )?(--[a-z][\w-]*)")  # how argparse lists an option


def _help(name, capsys):
    mod = importlib.import_module(name)
    with pytest.raises(SystemExit) as exc:
        mod.parse_args(["--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _listed(help_text):
    """The long flags in the option lists of an argparse help text."""
    return {m.group(1) for m in map(OPTION_LINE.match, help_text.splitlines()) if m}


def _added(tree):
    """Long flags passed to ``add_argument`` in a module or function, less those whose help is suppressed."""
    flags = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            if any(
                k.arg == "help" and isinstance(k.value, ast.Attribute) and k.value.attr == "SUPPRESS"
                for k in node.keywords
            ):
                continue
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    return flags


def _source_flags(name):
    """The flags the example's source defines: its own ``add_argument`` calls, those of the sibling
    example modules it imports (ogbn_common), and those of the graphattn helpers those files call
    (``add_run_arguments``)."""
    files, flags, seen = [EXAMPLES_DIR / f"{name}.py"], set(), set()
    while files:
        path = files.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        flags |= _added(tree)
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if (EXAMPLES_DIR / f"{node.module}.py").is_file():
                files.append(EXAMPLES_DIR / f"{node.module}.py")
            elif node.module.startswith("graphattn"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    fn = getattr(module, alias.name, None)
                    if alias.asname is None and alias.name in called and inspect.isfunction(fn):
                        flags |= _added(ast.parse(inspect.getsource(fn)))
    return flags


def _commands(text, name):
    """The flags of each ``examples/<name>.py`` command in ``text`` (continued over ``\\`` line ends,
    up to the end of the shell command or the inline code)."""
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        for m in re.finditer(rf"examples/{name}\.py", line):
            rest, j = line[m.end() :], i
            while rest.rstrip().endswith("\\") and j + 1 < len(lines):
                j += 1
                rest = rest.rstrip()[:-1] + " " + lines[j]
            rest = re.split(r"`|;|&&|\||\)", rest)[0]
            found.append(FLAG.findall(rest))
    return found


def test_the_list_holds_every_example_script():
    scripts = {p.stem for p in EXAMPLES_DIR.glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}
    assert set(EXAMPLES) == scripts


@pytest.mark.parametrize("name", EXAMPLES)
def test_help_lists_every_flag_the_source_defines(name, capsys):
    out = _help(name, capsys)
    assert "usage:" in out
    defined = _source_flags(name)
    assert len(defined) >= 5, (name, defined)  # the source was read, not just an empty parser
    assert "--out" in defined or "--out-dir" in defined
    assert _listed(out) == defined | {"--help"}, (name, defined ^ (_listed(out) - {"--help"}))


README_COMMANDS = {name: _commands((ROOT / "README.md").read_text(), name) for name in EXAMPLES}


def test_the_readme_has_example_commands_with_flags():
    assert sum(len(flags) for commands in README_COMMANDS.values() for flags in commands) >= 20


@pytest.mark.parametrize("name", EXAMPLES)
def test_readme_and_docstring_commands_pass_only_flags_the_example_has(name, capsys):
    out = _help(name, capsys)
    listed = _listed(out)
    docstring = importlib.import_module(name).__doc__ or ""
    for source, commands in (("README.md", README_COMMANDS[name]), ("its docstring", _commands(docstring, name))):
        for flags in commands:
            assert set(flags) <= listed, f"{source} runs examples/{name}.py with {sorted(set(flags) - listed)}"
