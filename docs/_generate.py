"""Writes the documentation's generated pages into ``docs/_generated/`` (``conf.py`` calls it).

Nothing on these pages is typed by hand:

* ``api/<namespace>.md``: one page per public namespace (``optreg``,
  ``optreg.prox``, ``optreg.projections``), listing every name in its
  ``__all__`` for autodoc, so the reference follows the API as it changes;
* ``fragments/benchmark_results.md``: every results file in ``benchmarks/results/``
  rendered by the benchmarks' own renderers, each under the device and the
  date it records;
* ``fragments/errors_table.md``: the misuse table of ``tests/test_errors.py``, each row
  raised here and its message quoted as it reads today;
* ``notebooks/``: copies of ``notebooks/*.ipynb`` (rendered with the outputs
  they were committed with; the test suite executes them);
* ``fragments/more_toctree.md``: a table of contents for pages added to
  ``docs/`` that no other page lists yet.

Fragments are included into hand-written pages and are not pages themselves.

Run it alone to inspect the output: ``python docs/_generate.py``.
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OUT = DOCS / "_generated"
FRAGMENTS = OUT / "fragments"
#: Top-level pages that index.md lists by name; any other top-level page goes into the "More" table.
LISTED_PAGES = ("index", "getting-started", "convention", "placement", "notebooks", "errors", "numerics",
                "benchmarks", "demo", "api-rules", "changelog")
NAMESPACES = ("optreg", "optreg.prox", "optreg.projections")
#: Results files that are test artefacts, not measurements.
SKIPPED_RESULTS = ("smoke",)


def write_if_changed(path: Path, text: str) -> None:
    """Writes ``text`` unless the file already holds it (keeps Sphinx's incremental builds incremental)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------- API reference


def public_namespaces() -> list[Any]:
    """The public namespaces that exist in this version of optreg."""
    modules = []
    for name in NAMESPACES:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


def _transform_names() -> set[str]:
    from optreg import _registry

    return {entry.name for entry in _registry.TRANSFORMS}


def _kind(module: Any, name: str, transforms: set[str]) -> str:
    obj = getattr(module, name)
    if inspect.isclass(obj):
        return "Classes and states"
    if not callable(obj):
        return "Constants"
    try:
        returns = str(inspect.signature(obj).return_annotation)
    except (TypeError, ValueError):
        returns = ""
    if name in transforms or "GradientTransformation" in returns:
        return "Transforms"
    return "Functions"


KIND_ORDER = ("Transforms", "Functions", "Classes and states", "Constants")


def api_page(module: Any, transforms: set[str]) -> str:
    """A MyST page documenting every name of ``module.__all__`` with autodoc."""
    names = [name for name in getattr(module, "__all__", []) if not name.startswith("_")]
    groups: dict[str, list[str]] = {kind: [] for kind in KIND_ORDER}
    for name in names:
        groups[_kind(module, name, transforms)].append(name)
    summary = (module.__doc__ or "").strip().split("\n\n")[0]
    lines = [f"# `{module.__name__}`", "", "```{eval-rst}", f".. module:: {module.__name__}", "   :no-index:", "",
             f".. currentmodule:: {module.__name__}", ""]
    if summary:
        lines += [summary, ""]
    for kind in KIND_ORDER:
        if groups[kind]:
            lines += [f".. rubric:: {kind}", "", ".. autosummary::", "   :nosignatures:", ""]
            lines += [f"   {name}" for name in groups[kind]]
            lines.append("")
    for kind in KIND_ORDER:
        for name in groups[kind]:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                lines += [f".. autoclass:: {name}", "   :members:", "   :exclude-members: count, index", ""]
            elif callable(obj):
                lines += [f".. autofunction:: {name}", ""]
            else:
                lines += [f".. autodata:: {name}", "   :annotation:", ""]
    lines += ["```", ""]
    return "\n".join(lines)


def write_api() -> list[str]:
    """One page per public namespace; returns their document names (relative to ``docs/``)."""
    transforms = _transform_names()
    pages = []
    for module in public_namespaces():
        page = f"_generated/api/{module.__name__}"
        write_if_changed(ROOT / "docs" / f"{page}.md", api_page(module, transforms))
        pages.append(page)
    index = ["# API reference", "",
             "Generated from the docstrings of every name in the public namespaces' `__all__`; "
             "everything else in the package is private.", "", "```{toctree}", ":maxdepth: 1", ""]
    index += [page.removeprefix("_generated/api/") for page in pages]
    index += ["```", ""]
    write_if_changed(OUT / "api" / "index.md", "\n".join(index))
    return pages


# ----------------------------------------------------------------------------- benchmarks


def _benchmark_modules() -> tuple[Any, Any]:
    """``benchmarks/run.py`` and ``benchmarks/sharding.py``, the renderers of their own results."""
    path = str(ROOT / "benchmarks")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("run"), importlib.import_module("sharding")


def _recorded_date(report: dict, path: Path) -> str:
    if report.get("created_utc"):
        return datetime.datetime.fromisoformat(report["created_utc"]).strftime("%Y-%m-%d %H:%M UTC")
    try:
        done = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=30, check=True)
        if done.stdout.strip():
            return f"{done.stdout.strip()} (date of the commit that recorded it; the file has no date)"
    except (OSError, subprocess.SubprocessError):
        pass
    return "date not recorded"


def _device(machine: dict) -> str:
    return (f"{machine.get('device_kind', '?')} ({machine.get('backend', '?')}), {machine.get('cpu_model', '?')}, "
            f"{machine.get('cpus_usable', '?')} cores")


def benchmark_results() -> str:
    """Every results file, newest first, rendered by the benchmark that wrote it."""
    run, sharding = _benchmark_modules()
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    sections = []
    for path in files:
        if path.stem in SKIPPED_RESULTS:
            continue
        report = json.loads(path.read_text(encoding="utf-8"))
        date = _recorded_date(report, path)
        is_sharding = "rows" in report and "cases" in report and "groups" not in report
        title = "Sharded train step" if is_sharding else "Transforms, scaling, compile time and memory"
        body = sharding.markdown(report) if is_sharding else run.render_markdown(report)
        body = body.replace("\n### ", "\n#### ")
        if body.startswith("### "):
            body = "#" + body
        lines = [f"### {title}: {_device(report['machine'])}, {date}", "",
                 f"`benchmarks/results/{path.name}`, {report.get('mode', '?')} mode"
                 + (f", `{report['command']}`" if report.get("command") else "") + ".", "", body, ""]
        plot = report.get("scaling", {}).get("plot")
        if plot and (path.parent / plot).exists():
            shutil.copyfile(path.parent / plot, FRAGMENTS / plot)
            lines += [f"![Step time against the number of parameters, {_device(report['machine'])}]({plot})", ""]
        sections.append((date, "\n".join(lines)))
    sections.sort(key=lambda item: item[0], reverse=True)
    return "\n".join(text for _, text in sections)


# ----------------------------------------------------------------------------- errors


def _message_start(message: str, width: int = 110) -> str:
    first = " ".join(message.split())
    return first if len(first) <= width else first[: width - 1].rstrip() + "…"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def errors_table() -> str:
    """The misuse table of ``tests/test_errors.py``: each row raised now, its message quoted."""
    path = str(ROOT / "tests")
    if path not in sys.path:
        sys.path.insert(0, path)
    misuses = importlib.import_module("test_errors").MISUSES
    lines = ["| misuse | raised at | exception | message starts | fix |", "|---|---|---|---|---|"]
    for misuse in misuses:
        call: Callable[[], Any] = misuse.call
        try:
            call()
        except misuse.error as error:
            message = _message_start(str(error))
        else:
            raise RuntimeError(f"tests/test_errors.py row {misuse.condition!r} no longer raises {misuse.error}")
        lines.append(f"| {_cell(misuse.condition)} | {misuse.when} | `{misuse.error.__name__}` | "
                     f"{_cell(message)} | {_cell(misuse.fix)} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- notebooks


def copy_notebooks() -> None:
    target = OUT / "notebooks"
    target.mkdir(parents=True, exist_ok=True)
    sources = {path.name: path for path in (ROOT / "notebooks").glob("*.ipynb")}
    for stale in target.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, path in sources.items():
        write_if_changed(target / name, path.read_text(encoding="utf-8"))


def more_toctree() -> str:
    """A toctree of the top-level pages that index.md does not list (e.g. added by a later change)."""
    extra = sorted(path.stem for path in DOCS.glob("*.md") if path.stem not in LISTED_PAGES)
    if not extra:
        return ""
    return "\n".join(["```{toctree}", ":caption: More", ":maxdepth: 1", "", *extra, "```", ""])


def write_all() -> None:
    FRAGMENTS.mkdir(parents=True, exist_ok=True)
    write_api()
    write_if_changed(FRAGMENTS / "benchmark_results.md", benchmark_results())
    write_if_changed(FRAGMENTS / "errors_table.md", errors_table())
    write_if_changed(FRAGMENTS / "more_toctree.md", more_toctree())
    copy_notebooks()


if __name__ == "__main__":
    write_all()
    print(f"wrote {OUT}")
