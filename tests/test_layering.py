"""The import structure: the core (``etegrl``) imports no stage and no reward module, no stage
imports another, and no module imports itself through others (no cycles), read from the source
with ``ast`` (imports inside functions included)."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("etegrl", "pretrain", "finetune", "rl", "rewards")
STAGES = ("pretrain", "finetune", "rl")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # the longest known module it names
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def top(name: str) -> str:
    return name.split(".")[0]


def test_the_core_imports_no_stage_and_no_stage_another():
    g = graph()
    assert len(g) > 30  # the walk found the code
    for name, targets in g.items():
        for target in targets:
            if top(name) == "etegrl":
                assert top(target) == "etegrl", f"the core module {name} imports {target}"
            if top(name) in STAGES:
                assert top(target) in (top(name), "etegrl", "rewards"), f"{name} imports {target}"
            if top(name) == "rewards":
                assert top(target) in ("rewards", "etegrl"), f"{name} imports {target}"


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """A module that reaches itself through others (→ the path), or None. A package's
    ``__init__`` importing its own submodules is how packages export names, so an edge from a
    module to its own package does not count."""
    edges = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in g.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for t in sorted(edges.get(n, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_walk_sees_a_cycle(tmp_path, monkeypatch):
    """The checks are not vacuous: a lazy import back is an edge, and the cycle is found."""
    pkg = tmp_path / "etegrl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from etegrl.a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("etegrl",))
    g = graph()
    assert g == {"etegrl": {"etegrl.a"}, "etegrl.a": {"etegrl.b"}, "etegrl.b": {"etegrl.a"}}
    assert find_cycle(g) == ["etegrl.a", "etegrl.b", "etegrl.a"]
