"""The package's shape as the architecture states it: who may import what, and how big a room may get."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "kuberay")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# library -> where it may be imported (path prefixes, relative to the repository root)
ALLOWED = {
    "ray": ("pipeline/runtime/", "pipeline/gateway/serve.py"),
    "psycopg": ("pipeline/storage/",),
    "psycopg_pool": ("pipeline/storage/",),
    "fastapi": ("pipeline/gateway/",),
    "starlette": ("pipeline/gateway/",),
}


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def imported(tree: ast.AST) -> list[tuple[str, int, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno, [a.name for a in node.names]))
    return out


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_libraries_are_imported_only_in_their_rooms() -> None:
    wrong = []
    for path in modules():
        for module, line, _ in imported(ast.parse(path.read_text())):
            top = module.split(".")[0]
            rooms = ALLOWED.get(top)
            if rooms is not None and not rel(path).startswith(rooms):
                wrong.append(f"{rel(path)}:{line} imports {module} (allowed only in {', '.join(rooms)})")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_across_packages() -> None:
    wrong = []
    for path in modules():
        package = rel(path).split("/")[:-1]
        for module, line, names in imported(ast.parse(path.read_text())):
            if not module.startswith(PACKAGES):
                continue
            parts = module.split(".")
            # the package the imported name lives in: the module's own package, or the package itself
            target = parts if (ROOT / "/".join(parts)).is_dir() else parts[:-1]
            for name in names:
                if name.startswith("_") and target != package:
                    wrong.append(f"{rel(path)}:{line} imports {module}.{name}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{rel(path)} has {len(text.splitlines())} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{rel(path)}: {', '.join(long)}"


def test_logging_is_configured_by_entrypoints_only() -> None:
    entrypoints = {"pipeline/cli/parser.py", "pipeline/runtime/cluster.py", "kuberay/cli.py"}
    wrong = [rel(p) for p in modules() if "logging.basicConfig(" in p.read_text() and rel(p) not in entrypoints]
    assert not wrong, wrong


def test_logic_classes_carry_no_ray() -> None:
    """Logic classes (streamer, collector, scaling, queue) never import the runtime or Ray."""
    for name in ("streamer.py", "collector.py", "scaling.py", "queue", "sources", "storage", "records.py"):
        for path in [ROOT / "pipeline" / name] if name.endswith(".py") else (ROOT / "pipeline" / name).rglob("*.py"):
            for module, line, _ in imported(ast.parse(path.read_text())):
                assert not module.startswith(("ray", "pipeline.runtime")), f"{rel(path)}:{line} imports {module}"
