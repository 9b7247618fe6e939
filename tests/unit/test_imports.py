"""The import rules of docs/architecture.md, read from the source with ast (nothing is imported):
no circle among the project's modules, the worker's parts depend one way (items on dispatch, store
and downstream; dispatch not on items; store and downstream on none of the others), the CLI imports
nothing of the API, and no Lua in Python."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "cli", "worker", "simulator")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that ``name`` imports anywhere in its file: at the top, inside a
    function, or under ``TYPE_CHECKING`` (a circle through any of them is still a circle)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from worker.store import keys` imports the module worker.store.keys; so does
            # `from worker.store.keys import X`
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_it_must_judge():
    graph = import_graph()
    assert {"worker.store.keys", "worker.store.lua_scripts"} <= graph["worker.store.claims"]
    assert "api.app" in graph and "simulator.app" in graph and "cli.main" in graph


def test_no_module_of_the_project_imports_itself_back_through_others():
    assert circles(import_graph()) == []


#: The worker's parts, and the parts each must not import (worker/<part>/__init__.py says the same).
FORBIDDEN = {
    "worker.store": {"worker.dispatch", "worker.items", "worker.downstream"},
    "worker.downstream": {"worker.store", "worker.dispatch", "worker.items"},
    "worker.dispatch": {"worker.items"},
    "worker.items": set(),
}


def part_of(module: str) -> str | None:
    return next((part for part in FORBIDDEN if module == part or module.startswith(part + ".")), None)


def test_the_worker_is_four_parts_each_a_package_that_says_what_it_owns():
    modules = project_modules()
    for part in FORBIDDEN:
        assert part in modules, f"{part} is not a package"
        doc = ast.get_docstring(ast.parse(modules[part].read_text(encoding="utf-8"))) or ""
        assert "Owns" in doc and "May import" in doc, f"{part}/__init__.py must say what it owns and may import"


def wrong_directions(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Each module of a part, with what it imports of the parts it must not."""
    offending = {}
    for name, targets in graph.items():
        part = part_of(name)
        wrong = sorted(t for t in targets if part is not None and part_of(t) in FORBIDDEN[part])
        if wrong:
            offending[name] = wrong
    return offending


def test_the_worker_parts_depend_one_way():
    """items -> dispatch, store, downstream; dispatch -> store, downstream; store and downstream -> none."""
    assert wrong_directions(import_graph()) == {}


def test_the_direction_check_sees_a_wrong_import():
    graph = {"worker.store.claims": {"worker.items.run", "worker.clock"}, "worker.items.run": {"worker.store.keys"},
             "worker.dispatch.scheduler": {"worker.items.locks", "worker.downstream.ratelimit"},
             "worker.storage": {"worker.items.run"}}
    assert wrong_directions(graph) == {"worker.store.claims": ["worker.items.run"],
                                       "worker.dispatch.scheduler": ["worker.items.locks"]}


def test_the_rate_limiter_names_its_keys_with_the_stores_prefix():
    """worker/downstream/keys.py keeps its own copy of the prefix, as downstream may not import the store."""
    from worker.downstream import keys as downstream_keys
    from worker.store import keys as store_keys

    assert downstream_keys.PREFIX == store_keys.PREFIX


def test_the_cli_talks_to_the_api_over_http_only_and_imports_nothing_of_it():
    graph = import_graph()
    offending = {name: sorted(t for t in targets if t.split(".")[0] == "api")
                 for name, targets in graph.items() if name.split(".")[0] == "cli"}
    assert {name: targets for name, targets in offending.items() if targets} == {}


#: The rate limiter's scripts are being rewritten apart from the move of the others to worker/store/lua/, and
#: move there with that rewrite; until then its file is the one that may hold Lua.
LUA_NOT_YET_MOVED = {"worker/downstream/ratelimit.py"}


def test_no_python_file_holds_lua():
    """Redis scripts live in worker/store/lua/*.lua, each with its header (tests/unit/worker/test_lua.py)."""
    lua_markers = ("redis.call(", "redis.pcall(", "KEYS[", "ARGV[")
    holding = []
    for path in sorted(project_modules().values()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and any(
                    marker in node.value for marker in lua_markers):
                holding.append(str(path.relative_to(ROOT)))
    assert set(holding) - LUA_NOT_YET_MOVED == set()
    assert set(holding) >= LUA_NOT_YET_MOVED, "a file no longer holds Lua: take it off LUA_NOT_YET_MOVED"
