"""The shape docs/architecture.md promises, checked: module sizes and the direction of imports."""

from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"
MODULES = sorted(p for p in PIPELINE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.lstrip("."))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_module_is_over_500_lines():
    sizes = {p.relative_to(PIPELINE).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in MODULES}
    assert {name: n for name, n in sizes.items() if n > 500} == {}


def test_the_runner_class_keeps_to_orchestration():
    tree = ast.parse((PIPELINE / "runner.py").read_text(encoding="utf-8"))
    runner = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Runner")
    assert runner.end_lineno is not None and runner.end_lineno - runner.lineno < 300


def test_nothing_imports_the_cli_and_pure_modules_do_no_io():
    for path in MODULES:
        if path.stem not in ("cli", "__main__"):
            assert not {m for m in _imports(path) if m.endswith("cli") or m.endswith("cli_parser")}, path
    for pure in ("request", "parse", "tokens", "cost", "rows", "run_meta", "dialects/openai", "dialects/base"):
        imported = _imports(PIPELINE / f"{pure}.py")
        assert not imported & {"httpx", "aiohttp", "anyio", "os", "subprocess", "socket"}, (pure, imported)
