"""The package's import structure: no import cycle, no ROS below the node, the layers of
docs ARCHITECTURE (models < backends < engine < training; ROS only in ros/ and tools/).

The graph is read from the source (ast), so an import inside a function counts as much as one at
the top of a module: a lazy import still ties the two modules together.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "video_seg_ros"

#: Packages that exist only in a ROS installation.
ROS_PACKAGES = (
    "rclpy",
    "rosidl_runtime_py",
    "rosidl_parser",
    "sensor_msgs",
    "std_msgs",
    "builtin_interfaces",
    "diagnostic_msgs",
    "ament_index_python",
    "launch_ros",
)
#: The node and the console scripts: the only parts that may import ROS.
ROS_PARTS = (f"{PACKAGE}.ros", f"{PACKAGE}.tools")
#: Imports of ROS packages outside ROS_PARTS that are allowed, and why.
ROS_EXCEPTIONS = {
    # Finding the installed config/ folder asks ament_index when it is there (inside a function,
    # in a try block); a plain venv falls back to the source checkout.
    (f"{PACKAGE}.config_files", "ament_index_python.packages"),
}

MODELS = (f"{PACKAGE}.models", f"{PACKAGE}.checkpoint")
BACKENDS = (f"{PACKAGE}.backends",)
ENGINE = (
    f"{PACKAGE}.engine",
    f"{PACKAGE}.engine_io",
    f"{PACKAGE}.engine_batches",
    f"{PACKAGE}.temporal",
    f"{PACKAGE}.temporal_states",
    f"{PACKAGE}.precision",
)
TRAINING = (f"{PACKAGE}.training", f"{PACKAGE}.adaptation")


def module_files(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every module of ``package``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules it imports anywhere in its source (internal ones by their module
    name, a name imported from a module counting as that module; external ones as written)."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in modules else source)
        graph[name] = {t for t in targets if t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (each sorted), Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in graph:
                continue  # outside the package
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(groups)


def describe_cycle(graph: dict[str, set[str]], group: list[str]) -> str:
    members = set(group)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in group)


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def reachable_imports(graph: dict[str, set[str]], start: str) -> list[tuple[str, str]]:
    """Every (importer, imported) edge reachable from ``start`` through internal modules."""
    seen, todo, edges = {start}, [start], []
    while todo:
        module = todo.pop()
        for target in sorted(graph[module]):
            edges.append((module, target))
            if target in graph and target not in seen:
                seen.add(target)
                todo.append(target)
    return edges


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT, PACKAGE)


# ---- cycles -------------------------------------------------------------------------------------
def test_the_cycle_check_finds_planted_cycles_lazy_and_relative_ones_included(tmp_path):
    files = {
        "planted/__init__.py": "",
        "planted/a.py": "from planted.b import thing\n",
        "planted/b.py": "thing = 1\n\n\ndef later():\n    from . import a\n    return a\n",
        "planted/c.py": "import planted.a\n\nfrom planted.sub import d\n",
        "planted/sub/__init__.py": "",
        "planted/sub/d.py": "from ..c import planted\n",
        "planted/e.py": "import os\n\nfrom planted import c\n",  # imports a cycle, is in none
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    planted = import_graph(tmp_path, "planted")
    assert planted["planted.e"] == {"os", "planted.c"}
    assert import_cycles(planted) == [["planted.a", "planted.b"], ["planted.c", "planted.sub.d"]]
    (tmp_path / "planted/b.py").write_text("thing = 1\n")
    assert import_cycles(import_graph(tmp_path, "planted")) == [["planted.c", "planted.sub.d"]]


def test_no_import_cycle_among_the_package_modules(graph):
    cycles = import_cycles(graph)
    assert not cycles, "import cycles: " + " | ".join(describe_cycle(graph, c) for c in cycles)


# ---- ROS only in ros/ and tools/ ----------------------------------------------------------------
def test_importing_every_module_outside_ros_in_a_fresh_interpreter_imports_no_ros(graph):
    modules = sorted(m for m in graph if not under(m, (f"{PACKAGE}.ros",)))
    # One interpreter for all: the first import that brings a ROS package in is the one named.
    script = f"""
import importlib, json, sys
ros = {ROS_PACKAGES!r}
culprits = {{}}
for module in {modules!r}:
    importlib.import_module(module)
    seen = set().union(*culprits.values())
    loaded = sorted(p for p in ros if p in sys.modules and p not in seen)
    if loaded:
        culprits[module] = loaded
print(json.dumps({{m: list(v) for m, v in culprits.items()}}))
"""
    environment = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    culprits = json.loads(done.stdout.strip().splitlines()[-1])
    assert culprits == {}, f"importing these modules loads ROS packages: {culprits}"


def test_the_fresh_interpreter_check_sees_a_module_that_imports_rclpy(tmp_path):
    # The check above asks sys.modules; a planted module with a top-level rclpy import must show.
    (tmp_path / "uses_ros.py").write_text("import rclpy  # noqa: F401\n")
    done = subprocess.run(
        [sys.executable, "-c", "import sys, uses_ros; print('rclpy' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
    )
    if "ModuleNotFoundError" in done.stderr:
        pytest.skip("rclpy is not installed here")
    assert done.stdout.strip() == "True", done.stderr[-2000:]


# ---- the layers of ARCHITECTURE.md --------------------------------------------------------------
LAYER_RULES = [
    (
        "models know neither how they are trained nor what runs them",
        MODELS,
        TRAINING + ENGINE + BACKENDS,
    ),
    ("backends do not reach back into the engine", BACKENDS, ENGINE + TRAINING),
    ("the engine never imports training", ENGINE, TRAINING),
    (
        "nothing outside ros/ and tools/ imports ROS or the parts that may",
        None,
        ROS_PACKAGES + ROS_PARTS,
    ),
]


@pytest.mark.parametrize("rule, sources, forbidden", LAYER_RULES, ids=[r[0] for r in LAYER_RULES])
def test_layer_rules_hold_through_every_import_chain(graph, rule, sources, forbidden):
    if sources is None:  # the whole core
        starts = [m for m in graph if not under(m, ROS_PARTS)]
    else:
        starts = [m for m in graph if under(m, sources)]
    assert starts, f"no module matches {sources}"
    broken = sorted(
        {
            f"{start}: {importer} imports {target}"
            for start in starts
            for importer, target in reachable_imports(graph, start)
            if under(target, forbidden) and (importer, target) not in ROS_EXCEPTIONS
        }
    )
    assert not broken, f"{rule}:\n" + "\n".join(broken)


def test_the_layer_check_reports_a_forbidden_import_through_a_chain():
    chain = {
        "p.models.a": {"p.util"},
        "p.util": {"p.training.loop", "numpy"},
        "p.training.loop": set(),
    }
    edges = reachable_imports(chain, "p.models.a")
    assert [e for e in edges if under(e[1], ("p.training",))] == [("p.util", "p.training.loop")]
