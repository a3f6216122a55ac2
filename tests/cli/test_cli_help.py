"""The command line's help, its lazy imports, and one-line errors in a real process."""

import os
import subprocess
import sys

import pytest

from ldmtool import __version__

COMMANDS = ("train-ae", "train-ldm", "sample", "impute", "train-seg", "segment", "evaluate", "demo-data", "stats")
ENV = {**os.environ, "COLUMNS": "120"}


def test_help_lists_commands(cli):
    r = cli("--help")
    assert r.code == 0
    for command in COMMANDS:
        assert command in r.out
    assert "Traceback" not in r.both


@pytest.mark.parametrize(
    "command", ["train-ae", "train-ldm", "sample", "impute", "demo-data", "stats", "train-seg", "segment"]
)
def test_command_help(cli, command):
    r = cli(command, "--help")
    assert r.code == 0 and "Usage" in r.out and "--help" in r.out


def test_version(cli):
    r = cli("--version")
    assert r.code == 0 and __version__ in r.out


def test_help_in_a_real_process():
    proc = subprocess.run(
        [sys.executable, "-m", "ldmtool", "--help"], capture_output=True, text=True, timeout=120, env=ENV
    )
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout


def test_cli_import_does_not_import_torch():
    code = "import sys; from ldmtool.cli.main import app; print('torch' in sys.modules, 'monai' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_missing_input_is_one_line_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ldmtool",
            "impute",
            str(tmp_path / "nope.nii.gz"),
            "--ae",
            "a",
            "--ldm",
            "l",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_unknown_command_is_a_usage_error(cli):
    r = cli("train-vae")
    assert r.code == 2
    assert "Traceback" not in r.both
