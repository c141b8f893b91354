"""The shape of the house, kept true: the API reads and writes only through the service,
the binding machine stays pure, the service stays small, and nothing imports our folders
as top-level modules (the wheel has only ``vfence.*``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "controller"


def _imports(path: Path) -> set[str]:
    """Every module a file imports: relative ones as '.name', absolute as written."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.module:
                out.add("." * node.level + node.module)
            else:  # from . import x: the module x
                out |= {"." * node.level + a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_the_api_imports_nothing_below_the_service():
    """(auth: who may call, from the request's headers alone.)"""
    ours = {m for m in _imports(CORE / "api.py") if m.startswith(".")}
    assert ours == {".service", ".api_schemas", ".auth"}, ours
    assert {m for m in _imports(CORE / "auth.py") if m.startswith(".")} == set()


def test_the_console_reads_through_the_service_like_the_api():
    """Its own modules draw; the data comes from service.queries, as for the API."""
    ours = {m for p in (CORE / "console").glob("*.py") for m in _imports(p)
            if m.startswith(".")}
    assert ours <= {"..auth", "..api", "..api_schemas", "..errors", "..service", "..flows",
                    ".ofctl", ".witness"}, ours


def test_the_binding_machine_is_pure():
    allowed = {"__future__", "time", "collections.abc", "dataclasses", "typing", ".hosts",
               ".model"}
    assert _imports(CORE / "binding.py") <= allowed, _imports(CORE / "binding.py") - allowed


def test_the_service_stays_small():
    lines = len((CORE / "service.py").read_text().splitlines())
    assert lines < 250, f"service.py has {lines} lines: move a concern into its own module"


def test_nothing_imports_our_folders_as_top_level_modules():
    top = {"controller", "apps", "migrations", "mininet_topos", "schemas"}
    for folder in [*top, "tests", "bench", "docs"]:
        for path in (ROOT / folder).rglob("*.py"):
            bad = {m for m in _imports(path) if m.split(".")[0] in top}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}: use vfence.{bad.pop()}"
