"""Package layering: util/ (and metrics/) are below models/ and never import from it."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("package", ["util", "metrics"])
def test_lower_packages_do_not_import_models(package):
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in sorted((ROOT / package).glob("*.py")) for m in _imports(p)
           if m == "models" or m.startswith("models.")]
    assert not bad, bad


def test_the_check_sees_nested_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from models.networks.winograd import use_winograd\n")
    assert list(_imports(f)) == ["models.networks.winograd"]
