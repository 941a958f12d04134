"""The layers: core knows no business, business packages never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
BUSINESS = APP / "business"
PACKAGES = sorted(p.name for p in BUSINESS.iterdir() if (p / "__init__.py").exists())


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an ``import`` or ``from ... import`` in the file names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_start_up_imports_every_business_package_in_name_order():
    """load_business_packages imports each package found in app/business, by name."""
    from app.bootstrap import load_business_packages

    assert PACKAGES, "no business package found"
    assert load_business_packages() == [f"app.business.{name}" for name in PACKAGES]


@pytest.mark.parametrize("package", PACKAGES)
def test_business_packages_do_not_import_each_other(package):
    """A business package imports no other business package, nor the layers above it."""
    others = [f"app.business.{other}" for other in PACKAGES if other != package]
    forbidden = [*others, "app.cli", "app.demo", "app.web", "app.testing", "app.durable"]
    for path in (BUSINESS / package).rglob("*.py"):
        for module in imported_modules(path):
            assert not any(module == f or module.startswith(f + ".") for f in forbidden), (
                f"{path.relative_to(APP.parent)} imports {module}"
            )


def test_business_packages_use_relative_imports_nowhere():
    """Relative imports would hide cross-package imports from this check."""
    for path in BUSINESS.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert not relative, f"{path} uses a relative import"


def test_core_imports_nothing_above_it():
    """``app.core`` imports nothing above it, and no web, database or test framework."""
    above = (
        "app.business",
        "app.cli",
        "app.demo",
        "app.utils",
        "app.testing",
        "app.db",
        "app.durable",
        "app.web",
        "procrastinate",
        "pytest",
        "fastapi",
        "starlette",
        "sqlalchemy",
    )
    for path in (APP / "core").rglob("*.py"):
        for module in imported_modules(path):
            assert not module.startswith(above), f"{path.relative_to(APP.parent)} imports {module}"


def test_the_console_imports_no_business_package():
    """``app.console`` shows any application's events: it knows none of their packages."""
    for path in (APP / "console").rglob("*.py"):
        for module in imported_modules(path):
            assert not module.startswith("app.business"), f"{path.relative_to(APP.parent)}"
