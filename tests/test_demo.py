"""``optreg demo``: the quick smoke run, its outputs, ``--help`` and bad flag values."""

from __future__ import annotations

import json
import math

import pytest

from optreg.cli import build_parser, main
from optreg.demo.command import ROW_NAMES

FLAGS = ("--quick", "--epochs", "--share-epochs", "--out", "--seed", "--rows", "--no-figures", "--no-progress")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--quick", "--no-progress", "--out", str(out)])
    return code, printed.getvalue(), out


def test_quick_run_prints_every_row(quick_run):
    code, printed, _ = quick_run
    assert code == 0
    lines = printed.splitlines()
    assert lines[0].split()[:2] == ["regularizer", "test"]
    table_names = [line.split()[0] for line in lines[2 : 2 + len(ROW_NAMES)]]
    assert table_names == list(ROW_NAMES)


def test_quick_run_writes_results_json(quick_run):
    _, _, out = quick_run
    rows = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in rows] == list(ROW_NAMES)
    for row in rows:
        assert {"name", "test_accuracy", "nonzero_fraction", "compression_rate", "train_loss"} <= set(row)
        if row["status"] != "ok":  # a row whose building block is missing says so and has no numbers
            assert row["status"].startswith("unavailable") and row["test_accuracy"] is None
            continue
        if row["name"].startswith("soft_share"):  # a few hundred steps, then quantised: any accuracy is possible
            assert 0.0 <= row["test_accuracy"] <= 1.0, row
        elif row["name"] == "baseline_cnn":  # the CNN learns slower: two epochs are above chance (10%)
            assert 0.2 < row["test_accuracy"] <= 1.0, row
        else:  # ten classes: even two epochs of Adam are far above chance (10%)
            assert 0.5 < row["test_accuracy"] <= 1.0, row
        assert 0.0 <= row["nonzero_fraction"] <= 1.0
        assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
        assert row["compression_rate"] > 0.0  # unquantised float32 weights cost more than 32 bits each: < 1
    by_name = {row["name"]: row for row in rows}
    # Only dead-ReLU biases (initialised at 0, never updated) are exactly zero without a regularizer.
    assert by_name["baseline"]["status"] == "ok" and by_name["baseline"]["nonzero_fraction"] > 0.99
    for name in ("soft_share", "soft_share_cnn"):  # quantised to a few shared values, mostly zeros
        if by_name[name]["status"] == "ok":
            assert by_name[name]["compression_rate"] >= 40.0  # soft_share_compress's storage floor (Han et al.: 40x)


def test_quick_run_writes_figures(quick_run):
    _, _, out = quick_run
    png = (out / "weight_histograms.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())}
    for name in ("soft_share", "soft_share_cnn"):
        if rows[name]["status"] == "ok":
            assert (out / f"{name}_mixture.png").read_bytes().startswith(b"\x89PNG")


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["demo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text
    for name in ROW_NAMES:
        assert name in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs: must be a positive integer, got 0"),
        (["--epochs", "ten"], "--epochs: must be a positive integer, got 'ten'"),
        (["--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
        (["--rows", "baseline,l3"], "unknown row(s) l3"),
        (["--colour"], "unrecognized arguments: --colour"),
    ],
)
def test_bad_flag_values_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_out_must_be_a_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match="is not a directory"):
        main(["demo", "--quick", "--out", str(blocker)])


def test_quick_demo_retrains_soft_sharing_as_long_as_the_pipeline_quick_setting():
    from optreg.demo import command, soft_share

    assert command.QUICK_SHARE_STEPS == soft_share.QUICK_STEPS
