"""The package's shape: dependencies point down, the client is light, no import cycle anywhere."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Import name -> source folder, as pyproject.toml's package-dir maps them.
PACKAGES = {
    "attnscope": "attnscope",
    "attnscope.kernels": "kernels",
    "attnscope.extract": "extract",
    "attnscope.proto": "proto",
    "attnscope.service": "service",
    "attnscope.web": "web",
    "attnscope.benchmarks": "benchmarks",
}


def _modules() -> dict[str, Path]:
    """Every module of the installed package: dotted name -> file."""
    found = {}
    for package, folder in PACKAGES.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "attnscope" and parts and parts[0] in {p.split(".")[-1] for p in PACKAGES}:
                continue
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that `name` imports anywhere in its file (functions included)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                for alias in node.names
            ]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def test_no_import_cycle_inside_the_package():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # The walk sees what it must: a known edge in each direction of the layering.
    assert "attnscope.service.view_table" in graph["attnscope.service.core"]
    assert "attnscope.kernels.headstats" in graph["attnscope.kernels.digest"]
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append([*stack[stack.index(dep) :], dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_layers_point_down():
    """kernels know nothing above them, extract nothing of the service, benchmarks nothing of tests."""
    modules = _modules()
    below = {
        "attnscope.proto": (),
        "attnscope.kernels": (),
        "attnscope.extract": ("attnscope.kernels",),
        "attnscope.service": ("attnscope.proto", "attnscope.kernels", "attnscope.extract", "attnscope.web"),
    }
    wrong = []
    for name, path in modules.items():
        layer = next((p for p in below if name == p or name.startswith(p + ".")), None)
        if layer is None:
            continue
        for dep in _imports(name, path, modules):
            if not any(dep == ok or dep.startswith((layer + ".", ok + ".")) for ok in (layer, *below[layer])):
                wrong.append(f"{name} -> {dep}")
    assert wrong == []


def test_no_package_code_edits_sys_path_or_imports_tests():
    tests_modules = {p.stem for p in (ROOT / "tests").rglob("*.py")} | {"tests"}
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and getattr(node.value, "id", "") == "sys"
            ):
                offenders.append(f"{name}: sys.path")
            if (
                isinstance(node, ast.ImportFrom)
                and not node.level
                and (node.module or "").split(".")[0] in tests_modules
            ):
                offenders.append(f"{name}: from {node.module}")
            if isinstance(node, ast.Import):
                offenders += [
                    f"{name}: import {a.name}" for a in node.names if a.name.split(".")[0] in tests_modules
                ]
    assert offenders == []


def test_the_client_side_imports_without_torch():
    code = (
        "import sys\n"
        "import attnscope\n"
        "from attnscope import Client, views\n"
        "request = views.tile(1, 2, queries=(0, 4), kind='cross', name='zoom')\n"
        "assert request.kind == 3 and request.name == 'zoom'\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'numpy.linalg.torch') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_kernels_folder_never_shadows_hugging_faces_kernels_package():
    """From the repository root (`python -m ...` puts it first on the import path) a top-level
    `import kernels` (transformers 5.25+ imports Hugging Face's) never gets attnscope's folder:
    it gets the installed distribution, or fails as if the folder were absent."""
    code = "import kernels, sys; print(kernels.__file__)"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if run.returncode:
        assert "No module named 'kernels'" in run.stderr, run.stderr
    else:
        assert Path(run.stdout.strip()).resolve() != (ROOT / "kernels" / "__init__.py").resolve()
    model = subprocess.run(
        [sys.executable, "-c", "import attnscope.kernels as k; print(k.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert Path(model.stdout.strip()).resolve() == (ROOT / "kernels" / "__init__.py").resolve(), model.stderr
