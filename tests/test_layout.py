"""Architecture rules that a test can check."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> set[str]:
    names = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
    return names


def test_node_and_server_never_import_each_other():
    assert not any(n.startswith("mvic.fusion_server") for n in _imports("node"))
    assert not any(n.startswith("mvic.node") for n in _imports("fusion_server"))


def test_shared_imports_neither():
    assert not any(n.startswith(("mvic.node", "mvic.fusion_server")) for n in _imports("shared"))


def test_node_server_and_shared_never_import_tools():
    for folder in ("node", "fusion_server", "shared"):
        assert not any(n.startswith("mvic.tools") for n in _imports(folder)), folder


def test_packages_import_under_the_mvic_namespace():
    import mvic.fusion_server
    import mvic.node
    import mvic.shared.codec
    import mvic.tools

    assert Path(mvic.shared.codec.__file__).parent == ROOT / "shared" / "codec"
    assert Path(mvic.tools.__file__).parent == ROOT / "tools"
    assert mvic.node.__doc__ and mvic.fusion_server.__doc__ and mvic.tools.__doc__
