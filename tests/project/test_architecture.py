"""The layers of docs/architecture.md, read from the imports (AST): every import points downward,
no two files import each other (directly or round a longer loop), and the ROS-free layers import
neither rclpy nor, at module level, MuJoCo.

A file's layer comes from LAYERS (module-name prefixes, lowest first; the longest prefix wins).
Imports inside functions count like any other: a lazy import may only postpone a heavy
third-party library, never hide an upward edge or a circle.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "mtm_runtime"

#: layer name -> module-name prefixes (of mtm_runtime.*), lowest layer first
LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("mtm_runtime", "mtm_runtime.spec", "mtm_runtime.masks", "mtm_runtime.model",
             "mtm_runtime.normalise", "mtm_runtime.checkpoint", "mtm_runtime.integrity",
             "mtm_runtime.fingerprint", "mtm_runtime.fileio", "mtm_runtime.safety",
             "mtm_runtime.safety_contract", "mtm_runtime.robot", "mtm_runtime.joint_order",
             "mtm_runtime.package_paths", "mtm_runtime.loss"),
    # everything else directly in mtm_runtime/ (policy, backends, control loop, ...) is runtime
    "runtime": ("mtm_runtime.",),
    "export": ("mtm_runtime.export",),
    "sim": ("mtm_runtime.sim",),
    "training": ("mtm_runtime.training",),
    "ros": ("mtm_runtime.ros_nodes",),
    "cli": ("mtm_runtime.cli", "mtm_runtime.commands"),
}
ORDER = {name: i for i, name in enumerate(LAYERS)}
ROS_FREE = ("core", "runtime", "export", "sim", "training")
LINKED = ("training", "sim", "export", "ros_nodes")  # top-level folders installed under mtm_runtime


def layer_of(module: str) -> str:
    best, best_len = "runtime", -1
    for name, prefixes in LAYERS.items():
        for p in prefixes:
            hit = module == p or (module.startswith(p if p.endswith(".") else p + "."))
            if hit and len(p) > best_len:
                best, best_len = name, len(p)
    return best


def python_files(root: Path) -> list[Path]:
    """Every .py file under root, following the links to training/, sim/, ... (rglob does not)."""
    return sorted(Path(d) / f for d, _, files in os.walk(root, followlinks=True)
                  for f in files if f.endswith(".py"))


def project_modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for path in python_files(PACKAGE):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(n) for n in tree.body}
    for n in tree.body:  # imports under a module-level `if`/`try` still run at import time
        if isinstance(n, (ast.If, ast.Try)):
            top_level |= {id(c) for c in ast.walk(n)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            target = name
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                out.append((target, node.lineno, id(node) in top_level))
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    mods = project_modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def test_every_import_points_down(graph) -> None:
    upward = sorted({f"{m} ({layer_of(m)}) line {line} imports {t} ({layer_of(t)})"
              for m, edges in graph.items() for t, line, _ in edges
              if ORDER[layer_of(t)] > ORDER[layer_of(m)]})
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_circle_between_files(graph) -> None:
    edges = {m: {t for t, _, _ in e if t not in _ancestors(m)} for m, e in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


def _ancestors(module: str) -> set[str]:
    """A module importing its own package's __init__ is not a circle (the package runs first)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_ros_free_layers_import_no_ros() -> None:
    offenders = []
    for m, path in project_modules().items():
        if layer_of(m) not in ROS_FREE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{m} line {node.lineno}: {n}" for n in names
                          if n.split(".")[0] in ("rclpy", "launch", "launch_ros") or n.endswith("_msgs")
                          or n.split(".")[0].endswith("_msgs")]
    assert not offenders, "ROS imports below the ROS layer:\n" + "\n".join(offenders)


def test_nothing_imports_the_linked_folders_by_their_short_name() -> None:
    """training/, sim/, export/, ros_nodes/ are installed only as mtm_runtime.<name>."""
    offenders = []
    for folder in ("mtm_runtime", *LINKED, "tests", "benchmarks", "launch", "tools"):
        for path in python_files(REPO / folder):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                offenders += [f"{path.relative_to(REPO)} line {node.lineno}: {n}" for n in names
                              if n.split(".")[0] in LINKED]
    assert not offenders, "short-name imports:\n" + "\n".join(offenders)


def test_linked_folders_are_the_installed_subpackages() -> None:
    for name in LINKED:
        link = PACKAGE / name
        assert link.is_symlink() and link.resolve() == (REPO / name).resolve(), link


def test_reading_data_needs_neither_mujoco_nor_ros() -> None:
    """Loading a dataset (training.loaders) or a policy must not pull MuJoCo, Gymnasium or rclpy."""
    code = ("import sys, mtm_runtime.training.loaders, mtm_runtime.policy, mtm_runtime.control_loop;"
            "bad = [m for m in ('mujoco', 'gymnasium', 'rclpy') if m in sys.modules];"
            "print(' '.join(bad)); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"imported: {p.stdout.strip()} {p.stderr[-500:]}"
