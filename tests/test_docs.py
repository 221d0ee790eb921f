"""The documentation's code runs, every public function shows an example, and no internal label reaches a user.

Code blocks in ``docs/**/*.md`` (the generated pages aside):

* a ```` ```pycon ```` block is a doctest: its outputs are compared with ELLIPSIS
  and NORMALIZE_WHITESPACE, and a number matches when it agrees to the digits
  written (as pytest's NUMBER option does for the docstrings' doctests);
* a ```` ```python ```` block must run without an error;
* a block shown only for reading uses another fence (```` ```py ````, ```` ```bash ````).

A block preceded by the line ``<!-- awaits: REASON -->`` documents API that is
not in this version yet: it must fail (an expected failure) and the test fails
as soon as it runs, so that the marker is removed.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NAMESPACES = ("optreg", "optreg.prox", "optreg.projections")
FENCE = re.compile(r"(?:<!-- awaits: (?P<awaits>.*?) -->\n)?```(?P<lang>python|pycon)\n(?P<code>.*?)```", re.S)
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
FLOAT = re.compile(r"-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")

#: Public functions whose docstring has no ``>>>`` example yet. Their modules' owners add them; the
#: test fails for a name missing from here (a new function must come with its example) and for a name
#: listed here that has one now (remove it), so the list only shrinks.
NAMES_WITHOUT_EXAMPLES: frozenset[str] = frozenset()

#: Words that only an insider can look up: internal source notes and work items (cite the literature).
INTERNAL_LABEL = re.compile(r"\bseeds? 0\d\d\b|\bissues? \d+\b|\bsessions?\b", re.I)
#: Files that still carry such labels and are being rewritten by their owners (the list only shrinks).
FILES_WITH_LABELS: frozenset[str] = frozenset()
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".json", ".toml", ".txt", ".cfg", ".yml", ".yaml", ".rst"}
SKIPPED_DIRS = {"_build", "_generated", "build", "dist", "node_modules", "__pycache__"}


class Block(NamedTuple):
    page: str
    line: int
    lang: str
    code: str
    awaits: str | None


def doc_blocks() -> list[Block]:
    blocks = []
    for path in sorted(DOCS.rglob("*.md")):
        if SKIPPED_DIRS & set(path.relative_to(DOCS).parts):
            continue
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            blocks.append(Block(str(path.relative_to(ROOT)), line, match["lang"], match["code"], match["awaits"]))
    return blocks


BLOCKS = doc_blocks()


def _skeleton(text: str) -> str:
    """The text with every number replaced by 0 and all whitespace removed (numpy pads numbers)."""
    return re.sub(r"\s+", "", FLOAT.sub("0", text))


class NumberChecker(doctest.OutputChecker):
    """Also accepts output whose numbers agree with the expected ones to the digits written there."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        if super().check_output(want, got, optionflags):
            return True
        wanted, gotten = FLOAT.findall(want), FLOAT.findall(got)
        if len(wanted) != len(gotten) or _skeleton(want) != _skeleton(got):
            return False
        for expected, actual in zip(wanted, gotten):
            decimals = len(expected.split(".")[1]) if "." in expected and "e" not in expected.lower() else 0
            tolerance = 0.5 * 10.0 ** -decimals if "." in expected else 0.0
            if abs(float(actual) - float(expected)) > tolerance * (1 + 1e-9):
                return False
        return True


def run_block(block: Block) -> None:
    name = f"{block.page}:{block.line}"
    if block.lang == "python":
        exec(compile(block.code, name, "exec"), {"__name__": "__docs__"})
        return
    test = doctest.DocTestParser().get_doctest(block.code, {"__name__": "__docs__"}, name, block.page, block.line)
    runner = doctest.DocTestRunner(checker=NumberChecker(), optionflags=DOCTEST_FLAGS)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert not runner.failures, "".join(report)


def test_the_documentation_has_examples():
    assert len(BLOCKS) >= 10
    assert {block.lang for block in BLOCKS} == {"python", "pycon"}


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.page}:{b.line}" for b in BLOCKS])
def test_documentation_block_runs(block: Block, capsys) -> None:
    if block.awaits is None:
        run_block(block)
        return
    try:
        run_block(block)
    except Exception as error:  # noqa: BLE001 - an awaited API fails in any way
        pytest.xfail(f"awaits {block.awaits}: {type(error).__name__}: {error}")
    pytest.fail(f"{block.page}:{block.line} runs now: remove its '<!-- awaits: {block.awaits} -->' marker")


def public_functions() -> dict[str, object]:
    functions: dict[str, object] = {}
    for namespace in NAMESPACES:
        try:
            module = importlib.import_module(namespace)
        except ImportError:
            continue
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if callable(obj) and not inspect.isclass(obj):
                functions[name] = obj
    return functions


def test_every_public_function_has_a_docstring_example():
    functions = public_functions()
    assert "add_decayed_weights_q" in functions
    without = {name for name, obj in functions.items() if ">>>" not in (inspect.getdoc(obj) or "")}
    assert not without - NAMES_WITHOUT_EXAMPLES, f"add a '>>>' example to: {sorted(without - NAMES_WITHOUT_EXAMPLES)}"
    assert not NAMES_WITHOUT_EXAMPLES - without, (
        f"these have examples now; remove them from NAMES_WITHOUT_EXAMPLES: {sorted(NAMES_WITHOUT_EXAMPLES - without)}")


def user_facing_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(part.startswith(".") or part in SKIPPED_DIRS or part.endswith(".egg-info") for part in parts):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            files.append(path)
    return files


def test_no_internal_labels_in_what_users_read():
    labelled = {str(path.relative_to(ROOT)) for path in user_facing_files()
                if INTERNAL_LABEL.search(path.read_text(encoding="utf-8", errors="replace"))}
    assert "README.md" not in FILES_WITH_LABELS
    assert not labelled - FILES_WITH_LABELS, f"cite the literature instead: {sorted(labelled - FILES_WITH_LABELS)}"
    assert not FILES_WITH_LABELS - labelled, (
        f"these are clean now; remove them from FILES_WITH_LABELS: {sorted(FILES_WITH_LABELS - labelled)}")


@pytest.fixture(scope="module")
def generate():
    sys.path.insert(0, str(DOCS))
    try:
        yield importlib.import_module("_generate")
    finally:
        sys.path.remove(str(DOCS))


def test_benchmark_page_shows_every_results_file_with_its_device_and_date(generate):
    import json

    text = generate.benchmark_results()
    results = [p for p in (ROOT / "benchmarks" / "results").glob("*.json") if p.stem not in generate.SKIPPED_RESULTS]
    assert results
    for path in results:
        report = json.loads(path.read_text(encoding="utf-8"))
        assert f"`benchmarks/results/{path.name}`" in text
        assert report["machine"]["device_kind"] in text
        if "created_utc" in report:
            assert report["created_utc"][:10] in text
    assert not INTERNAL_LABEL.search(text)


def test_api_pages_list_every_public_name(generate):
    for module in generate.public_namespaces():
        page = generate.api_page(module, generate._transform_names())
        for name in getattr(module, "__all__", []):
            if not name.startswith("_"):
                assert re.search(rf"^\.\. auto\w+:: {re.escape(name)}$", page, re.M), (module.__name__, name)


def test_errors_table_quotes_every_misuse(generate):
    from test_errors import MISUSES

    table = generate.errors_table()
    assert len(table.strip().splitlines()) == len(MISUSES) + 2
