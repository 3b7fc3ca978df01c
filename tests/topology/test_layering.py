"""Ray stays at the edges: the math packages import without Ray (docs/architecture.md, section 1)."""

import subprocess
import sys

MATH_MODULES = ["raytopo.topology", "raytopo.diffusion", "raytopo.models.adm", "raytopo.families.tdn",
                "raytopo.eval.topology_metrics"]


def test_math_modules_do_not_import_ray():
    code = (
        "import importlib, sys\n"
        f"for name in {MATH_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'ray' in sys.modules:\n"
        "        sys.exit(name + ' imported ray')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Floors of the package, bottom to top (docs/architecture.md, section 1). A module may import its own floor and
# the floors below it, never one above. Checked statically over every module (imports inside functions too).
FLOORS = {
    "errors": 0, "config": 0, "progress": 0, "pretrained": 0, "job_paths": 0, "outputs": 0, "checkpoint": 0,
    "topology": 1, "diffusion": 1, "models": 1, "eval": 1, "data": 1, "experiments": 1,
    "families": 2, "registry": 2,
    "parallel": 3,
    "train": 4,
    "tune": 5,
    "commands": 6, "cli": 6,
}


def _package_imports():
    """(module, imported raytopo module) for every import statement in the package, at any depth."""
    import ast
    from pathlib import Path

    import raytopo

    root = Path(raytopo.__file__).parent
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            yield from ((module, name) for name in names if name.startswith("raytopo."))


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS[parts[1]] if len(parts) > 1 else 0


def test_every_top_level_package_has_a_floor():
    import raytopo
    from pathlib import Path

    root = Path(raytopo.__file__).parent
    tops = {p.stem for p in root.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and any(p.glob("*.py")))}
    assert tops == set(FLOORS), f"give these a floor: {sorted(tops ^ set(FLOORS))}"


def test_no_import_runs_up_the_floors():
    upward = sorted({(module, name) for module, name in _package_imports() if _floor(name) > _floor(module)})
    assert upward == [], "imports from a lower floor to a higher one: " + ", ".join(f"{m} -> {n}" for m, n in upward)


def test_no_import_circles_between_modules():
    from pathlib import Path

    import raytopo

    root = Path(raytopo.__file__).parent
    modules = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, name in _package_imports():
        if name in modules and name != module and not name.startswith(module + "."):
            graph[module].add(name)
    circles = []

    def visit(node: str, path: list[str], done: set[str]) -> None:
        for target in graph[node]:
            if target in path:
                circles.append(path[path.index(target):] + [target])
            elif target not in done:
                done.add(target)
                visit(target, path + [target], done)

    for module in sorted(graph):
        visit(module, [module], {module})
    assert circles == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles[:5])
