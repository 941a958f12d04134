"""Adding a business package exactly as README describes keeps the checks and tests green."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LEFT_OUT = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*_cache", "*.db", "*.egg-info", "build", "dist"
)
RECIPE = re.compile(r"`(app/business/[\w/]+\.py)`:\n\n```python\n(.*?)```", re.DOTALL)
TESTS = [
    "tests/test_layering.py",
    "tests/test_events_check.py::test_the_repository_events_md_is_current",
    "tests/test_events_check.py::test_static_handler_order_is_the_registration_order",
    "tests/test_catalogue.py::test_the_reference_packages_verify",
    "tests/test_business.py",
]
"""The tests that read the packages, the handlers or EVENTS.md, run in the copy."""


def run(copy: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``copy``; ``python -m`` puts the copy's ``app`` first on the path."""
    return subprocess.run(
        list(command), cwd=copy, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def copy_with_a_new_package(tmp_path):
    """The project copied to a temporary directory, with the README's example package added."""
    copy = tmp_path / "project"
    shutil.copytree(REPO, copy, ignore=LEFT_OUT)
    section = (REPO / "README.md").read_text().split("### Adding a business package", 1)[1]
    files = RECIPE.findall(section.split("\n## ", 1)[0])
    assert [path for path, _ in files] == [
        "app/business/stats/__init__.py",
        "app/business/stats/events.py",
    ]
    for relative, text in files:
        path = copy / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return copy


def test_adding_a_package_as_readme_says_keeps_everything_green(copy_with_a_new_package):
    """events write then events check pass, the code is lint-clean and the tests pass."""
    copy = copy_with_a_new_package
    python = sys.executable
    ruff = str(Path(python).with_name("ruff"))
    written = run(copy, python, "-m", "app", "events", "write")
    assert written.returncode == 0, written.stdout + written.stderr
    checked = run(copy, python, "-m", "app", "events", "check")
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.startswith("events check passed: 3 events, 3 emit sites, 4 handlers")
    assert "app.business.stats.events.count_new_employee" in (copy / "EVENTS.md").read_text()
    linted = run(copy, ruff, "check", "app/business/stats")
    assert linted.returncode == 0, linted.stdout
    formatted = run(copy, ruff, "format", "--check", "app/business/stats")
    assert formatted.returncode == 0, formatted.stdout
    tested = run(copy, python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert re.search(r"^\d+ passed", tested.stdout.splitlines()[-1])
