"""Prints pip constraints pinning every dependency of ``pyproject.toml`` to its floor.

    python tools/floors.py > floors.txt
    pip install --constraint floors.txt dist/optreg-*.whl

Each ``name>=version`` of ``[project] dependencies`` becomes ``name==version``, so
the installation gets exactly the lowest versions optreg promises to work with
(their own dependencies resolve as pip chooses). A dependency without a ``>=``
floor is an error: every promise must be testable.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?$")


def floors(pyproject: Path = PYPROJECT) -> list[str]:
    """``name==version`` for every dependency's ``>=`` floor."""
    dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = []
    for requirement in dependencies:
        match = FLOOR.match(requirement.split(";")[0])
        if match is None:
            raise SystemExit(f"{pyproject}: dependency {requirement!r} has no '>=' floor to test")
        pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


if __name__ == "__main__":
    sys.stdout.write("\n".join(floors()) + "\n")
