"""The documented direction of imports between espm's parts (README, "The house") holds."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "espm"

# Each part of espm, and the parts it may import. Data flows one way:
# config -> manager -> (supervisor, api, keystore); supervisor/ and keystore/ never know the API,
# and the API knows the manager only as api/port.py's Control, which the manager implements.
ALLOWED: dict[str, frozenset[str]] = {
    "suggest": frozenset(),
    "config": frozenset({"suggest"}),
    "logs": frozenset({"system"}),
    "system": frozenset(),
    # One h11 message to bytes, for the API's server and the keystore's Elasticsearch client.
    "wire": frozenset(),
    "supervisor": frozenset({"config", "system"}),
    "keystore": frozenset({"config", "system", "supervisor", "wire"}),
    "api": frozenset({"config", "system", "supervisor", "keystore", "wire"}),
    "manager": frozenset({"config", "system", "supervisor", "keystore", "api"}),
    "standins": frozenset({"system", "keystore"}),
    "client": frozenset({"config", "system", "suggest"}),
    "demo": frozenset({"system", "standins"}),
    "install": frozenset({"system"}),
    "cli": frozenset({"*"}),
    "__main__": frozenset({"cli"}),
    "__init__": frozenset(),
}


def part_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _is_part(name: str) -> bool:
    return (SRC / name).is_dir() or (SRC / f"{name}.py").is_file()


def imported_parts(path: Path) -> set[str]:
    """The espm parts a module imports, wherever the import stands (functions, TYPE_CHECKING)."""
    parts: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "espm":
                # `from espm import logs` names a part; `from espm import __version__`, the package.
                names = [
                    f"espm.{alias.name}" if _is_part(alias.name) else "espm.__init__" for alias in node.names
                ]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "espm" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


MODULES = sorted(SRC.rglob("*.py"))


def test_every_part_is_documented() -> None:
    unknown = {part_of(p) for p in MODULES} - set(ALLOWED)
    assert not unknown, f"parts missing from the documented layering: {sorted(unknown)}"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_documented_direction(module: Path) -> None:
    part = part_of(module)
    allowed = ALLOWED.get(part, frozenset())
    if "*" in allowed:
        return
    wrong = imported_parts(module) - allowed - {part, "__init__"}  # the package's __version__
    assert not wrong, f"{module.relative_to(SRC)} ({part}) imports {sorted(wrong)} against the direction"


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    # The rule would be empty if the walker missed the lazy imports espm uses everywhere.
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from espm.api.server import ApiServer\n    import espm.manager\n")
    assert imported_parts(sample) == {"api", "manager"}
