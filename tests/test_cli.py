"""The optreg command: --help and --version through the console script and python -m."""

from __future__ import annotations

import subprocess
import sys

import optreg
from optreg.cli import main


def test_version_and_help_via_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "optreg", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"optreg {optreg.__version__}"
    out = subprocess.run([sys.executable, "-m", "optreg", "--help"], capture_output=True, text=True, check=True)
    assert "usage: optreg" in out.stdout


def test_main_without_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: optreg" in capsys.readouterr().out
