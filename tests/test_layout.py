"""The house's shape: arrows run one way, no private names cross modules, modules and functions stay small.

edge_agent -> triggers, cloud, store and cloud -> store; nothing runs back up (DESIGN.md, docs/layout.md).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_agent", "triggers", "cloud", "store")
# first-party packages each package may import, besides itself
ALLOWED = {"edge_agent": {"triggers", "cloud", "store"}, "cloud": {"store"}, "triggers": set(), "store": set()}
NO_CLI = {"triggers", "store"}  # packages that must not know about the command line
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
SCHEMA = {("store/db.py", "m001_initial")}  # a schema literal: long by nature


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def _imports(package: str, path: Path):
    """(imported module, names) for every import statement, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = path.relative_to(ROOT).with_suffix("").parts
    here = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                module = ".".join(base + ((node.module,) if node.module else ()))
            else:
                module = node.module or ""
            yield module, tuple(a.name for a in node.names)


@pytest.mark.parametrize("package, path", list(_modules()), ids=lambda v: str(v).split("/work/main/")[-1])
def test_arrows_run_one_way_and_no_private_name_crosses(package, path):
    for module, names in _imports(package, path):
        top = module.split(".")[0]
        if top in PACKAGES and top != package:
            assert top in ALLOWED[package], f"{path.relative_to(ROOT)} imports {module}: {package} -> {top} runs back"
        if package in NO_CLI:
            assert top != "click", f"{path.relative_to(ROOT)} imports click"
        if top in PACKAGES and module != ".".join(path.relative_to(ROOT).with_suffix("").parts):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{path.relative_to(ROOT)} imports private {private} from {module}"
            assert not any(p.startswith("_") and not p.startswith("__") for p in module.split(".")), module


@pytest.mark.parametrize("package, path", list(_modules()), ids=lambda v: str(v).split("/work/main/")[-1])
def test_modules_and_functions_stay_small(package, path):
    text = path.read_text(encoding="utf-8")
    rel = str(path.relative_to(ROOT))
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{rel} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in SCHEMA:
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{rel}: {node.name} is {length} lines"
