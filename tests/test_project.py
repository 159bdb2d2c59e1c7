"""The project stands alone and installs on the oldest Python it names: what a user's clone has."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV_ONLY = ("pytest", "ruff", "awscli", "playwright")


def pinned(requirements: str) -> dict[str, str]:
    return {
        found.group(1).lower(): found.group(2)
        for found in re.finditer(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)$", requirements, flags=re.MULTILINE)
    }


def test_nothing_reads_the_shared_folder_beside_the_clone() -> None:
    """A user's clone has no shared folder beside it: no tracked file but prose may point there."""
    tracked = subprocess.run(
        ["git", "grep", "-nE", r"\.\./shared|parent ?/ ?\"shared\"|'shared'\)", "--", ":!*.md"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert tracked.returncode == 1, tracked.stdout


def test_runtime_requirements_leave_out_the_test_and_tooling_packages() -> None:
    runtime = pinned((REPO / "requirements.txt").read_text())
    development = (REPO / "requirements-dev.txt").read_text()
    assert not set(DEV_ONLY) & set(runtime)
    assert "-r requirements.txt" in development.splitlines()
    assert set(DEV_ONLY) <= set(pinned(development))


def test_constraints_pin_every_requirement_at_its_version() -> None:
    constraints = pinned((REPO / "constraints.txt").read_text())
    for name in ("requirements.txt", "requirements-dev.txt"):
        for package, version in pinned((REPO / name).read_text()).items():
            assert constraints.get(package) == version, f"{name}: {package}=={version} not frozen in constraints.txt"


def test_readme_names_the_oldest_python_the_constraints_resolve_on() -> None:
    """CI builds its virtualenv with this interpreter; the Makefile refuses anything older."""
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert "3.11.2" in readme and "(3, 11, 2)" in makefile
    assert "PYTHON=/usr/bin/python3.11" in (REPO / ".ci" / "run").read_text()
