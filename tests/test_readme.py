"""The README fits on a screen, names the commands, links only to files that exist, and its Python runs."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
MAX_LINES = 250


def test_readme_fits_on_a_screen():
    assert len(TEXT.splitlines()) <= MAX_LINES, "move details into docs/, history into CHANGELOG.md"


@pytest.mark.parametrize("command", ["make demo", "make test", "make docs"])
def test_readme_names_the_commands(command):
    assert f"`{command}`" in TEXT or f"\n{command} " in TEXT


def test_readme_links_point_to_files_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", TEXT)
    local = [link for link in links if "://" not in link]
    assert local, "the README links into the documentation"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})
