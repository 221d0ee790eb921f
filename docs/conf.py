"""Sphinx configuration: ``make docs`` builds ``docs/_build/html`` offline, warnings are errors.

Pages are MyST Markdown; notebooks are rendered with the outputs they were
committed with (never executed here: ``tests/test_notebooks.py`` runs them);
the API reference and the benchmark and error tables are generated from the
code, the docstrings and ``benchmarks/results/*.json`` by ``_generate.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
sys.path.insert(0, str(DOCS))

import _generate  # noqa: E402

import optreg  # noqa: E402

project = "optreg"
author = "the optreg authors"
copyright = "the optreg authors"  # noqa: A001 - Sphinx's name
release = optreg.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "_generated/fragments"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# Notebooks: rendered as committed (with outputs), never executed at build time.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference from Google-style docstrings.
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
add_module_names = False

html_theme = "furo"
html_title = f"optreg {release}"
html_static_path: list[str] = []
html_show_sourcelink = False

# Inline literals and literal/doctest blocks are left alone; elsewhere a bare "|w|" is math, not an RST
# substitution reference.
_INLINE_LITERAL = re.compile(r"(``.+?``)")


def _escape_bars(text: str) -> str:
    parts = _INLINE_LITERAL.split(text)
    return "".join(part if index % 2 else part.replace("|", "\\|") for index, part in enumerate(parts))


def escape_math_bars(app, what, name, obj, options, lines: list[str]) -> None:  # noqa: ANN001 - Sphinx's hook
    """Makes the docstrings' |w| read as text: escapes '|' outside literals, doctest and directive blocks."""
    block_indent = None
    in_doctest = False
    for index, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if stripped and indent <= block_indent:
                block_indent = None
            else:
                continue
        if stripped.startswith(">>>"):
            in_doctest = True
        elif not stripped:
            in_doctest = False
        if in_doctest:
            continue
        lines[index] = _escape_bars(line)
        if stripped.endswith("::") or stripped.startswith(".. "):
            block_indent = indent


def generate(app, config) -> None:  # noqa: ANN001 - Sphinx's hook
    _generate.write_all()


def setup(app):  # noqa: ANN001, ANN201 - Sphinx's hook
    app.connect("config-inited", generate)
    app.connect("autodoc-process-docstring", escape_math_bars, priority=600)
    return {"parallel_read_safe": True}
