"""The package's layers (issue 19): imports run only downward, ``voxroute`` (the root) ->
``voxroute.telephony`` -> ``voxroute.agent`` -> ``voxroute.routing``, with :mod:`voxroute.audio` a leaf
any layer may import; production code imports ``voxroute.emulators`` only inside the functions that
start them; and the installed package claims one top-level name."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"agent": "voxroute.agent", "telephony": "voxroute.telephony", "routing": "voxroute.routing",
           "emulators": "voxroute.emulators", "voxroute": "voxroute"}  # fmt: skip
ROOT_MODULES = ("voxroute.cli", "voxroute.runtime", "voxroute.replay", "voxroute.demo", "voxroute.server",
                "voxroute.workers", "voxroute.standins", "voxroute.testing", "voxroute.integrations")  # fmt: skip
# What each layer may import of voxroute's own modules (anywhere in the module, lazily too)
ALLOWED = {
    "voxroute.routing": ("voxroute.routing", "voxroute.audio"),
    "voxroute.agent": ("voxroute.agent", "voxroute.routing", "voxroute.audio"),
    "voxroute.telephony": ("voxroute.telephony", "voxroute.agent", "voxroute.routing", "voxroute.audio"),
}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, at_module_level)`` for every module of voxroute's the file imports."""
    known = modules()
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    top |= {id(n) for node in tree.body if _runs_at_import(node) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from voxroute import audio`` imports voxroute.audio; ``from voxroute.x import f``, voxroute.x
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]  # fmt: skip
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(name, id(node) in top) for name in names if name.split(".")[0] == "voxroute"]
    return found


def _runs_at_import(node: ast.stmt) -> bool:
    """A block at module level that runs on import (``if TYPE_CHECKING:`` does not)."""
    if isinstance(node, ast.If):
        return not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    return isinstance(node, ast.Try | ast.With)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_imports_run_only_downward():
    wrong = []
    for module, path in modules().items():
        layer = next((layer for layer in ALLOWED if _within(module, (layer,))), None)
        if layer is None:
            continue
        wrong += [
            f"{module} imports {name}" for name, _ in imports(path) if not _within(name, ALLOWED[layer])
        ]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_audio_is_a_leaf():
    assert not imports(ROOT / "voxroute" / "audio.py")


def test_production_code_imports_the_emulators_only_lazily():
    test_code = ("voxroute.emulators", "voxroute.testing", "voxroute.integrations.pipecat.harness")
    wrong = [
        f"{module} imports {name} at module level"
        for module, path in modules().items()
        if not _within(module, test_code)
        for name, top in imports(path)
        if top and _within(name, ("voxroute.emulators",))
    ]
    assert not wrong, "\n".join(wrong)


def test_the_installed_package_has_one_top_level_name_and_every_subpackage():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    assert {name.split(".")[0] for name in listed} == {"voxroute"}
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert packages - listed == set(), "packages missing from pyproject.toml [tool.setuptools] packages"
    assert listed - packages == set()
    for package, folder in setuptools["package-dir"].items():
        assert FOLDERS[folder] == package
