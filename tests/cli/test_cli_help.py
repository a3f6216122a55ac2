"""The command line's help, its lazy imports, and one-line errors in a real process."""

import os
import subprocess
import sys

import pytest

from ldmtool import __version__

COMMANDS = (
    "train-ae",
    "train-ldm",
    "distill",
    "sample",
    "impute",
    "inpaint",
    "train-seg",
    "segment",
    "evaluate",
    "demo-data",
    "stats",
    "train-series",
    "impute-series",
    "sample-series",
)
ENV = {**os.environ, "COLUMNS": "120"}


def test_help_lists_commands(cli):
    r = cli("--help")
    assert r.code == 0
    for command in COMMANDS:
        assert command in r.out
    assert "Traceback" not in r.both


@pytest.mark.parametrize(
    "command", ["train-ae", "train-ldm", "distill", "sample", "impute", "demo-data", "stats", "train-seg", "segment"]
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


# ------------------------------------------------------------------ one source of truth for settings

SETTINGS = {
    "sample": ("SampleConfig",),
    "impute": ("ImputeConfig",),
    "segment": ("SegmentConfig",),
    "train-seg": ("SegModelConfig", "SegLossConfig", "SegTrainConfig"),
    "train-ae": ("AutoencoderConfig", "AELossConfig", "AETrainConfig"),
    "train-ldm": ("DenoiserConfig", "LDMTrainConfig"),
    "evaluate": ("EvaluateConfig",),
}


def _setting_params(command):
    """(click param, settings class) for every option of `command` named like a field of its settings."""
    import dataclasses

    import typer

    from ldmtool import config
    from ldmtool.cli.main import app

    classes = [getattr(config, name) for name in SETTINGS[command]]
    cmd = typer.main.get_command(app).commands[command]
    out = []
    for param in cmd.params:
        owner = next((c for c in classes if param.name in {f.name for f in dataclasses.fields(c)}), None)
        if owner is not None:
            out.append((param, owner))
    return out


@pytest.mark.parametrize("command", sorted(SETTINGS))
def test_setting_options_take_help_and_default_from_the_dataclass(command):
    from ldmtool.cli.common import default
    from ldmtool.config import help_of

    params = _setting_params(command)
    assert len(params) >= 5, [p.name for p, _ in params]
    for param, cls in params:
        assert param.help and param.help == help_of(cls, param.name), (command, param.name)
        assert param.show_default == default(cls, param.name), (command, param.name)
        assert param.default is None, f"{command} --{param.name}: a flag's own default would hide the YAML value"


def test_help_shows_the_dataclass_defaults(cli):
    import re

    from ldmtool.config import ImputeConfig, SegmentConfig

    r = cli("impute", "--help")
    text = re.sub(r"[\s│]+", " ", r.out)
    assert f"[default: ({ImputeConfig.guidance:g})]" in text and "Self-guidance strength" in text
    r = cli("segment", "--help")
    text = re.sub(r"[\s│]+", " ", r.out)
    assert f"[default: ({SegmentConfig.steps})]" in text and "--config" in text


def _defaults(func, aliases=None):
    import inspect

    aliases = aliases or {}
    return {
        aliases.get(name, name): p.default
        for name, p in inspect.signature(func).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_library_defaults_are_the_cli_defaults():
    import dataclasses

    from ldmtool.config import ImputeConfig, SampleConfig, SegmentConfig
    from ldmtool.pipelines.generate import generate
    from ldmtool.pipelines.impute import impute_file
    from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline
    from ldmtool.pipelines.segment import segment_files
    from ldmtool.pipelines.segmenter import DEFAULT_STEPS, Segmenter

    cases = [
        (generate, SampleConfig, {"fmt": "format"}, {"n", "steps", "guidance", "sampler", "batch_size", "format"}),
        (LatentDiffusionPipeline.sample, SampleConfig, {}, {"steps", "guidance", "sampler", "eta", "spacing"}),
        (LatentDiffusionPipeline.impute, ImputeConfig, {}, {"samples", "steps", "guidance", "sampler", "batch_size"}),
        (impute_file, ImputeConfig, {}, {"samples", "steps", "guidance", "sampler", "eta", "batch_size"}),
        (segment_files, SegmentConfig, {}, {"steps", "samples", "batch_size", "precision", "dicom_seg"}),
        (Segmenter.predict, SegmentConfig, {"batch": "batch_size"}, {"steps", "samples", "batch_size"}),
    ]
    for func, cls, aliases, expected in cases:
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        got = {k: v for k, v in _defaults(func, aliases).items() if k in fields}
        assert expected <= set(got), (func.__qualname__, expected - set(got))
        assert got == {k: fields[k] for k in got}, func.__qualname__
    assert DEFAULT_STEPS == SegmentConfig.steps
    assert ImputeConfig.guidance == 0.5  # what the imputation benchmark found best (benchmarks/imputation.py)


@pytest.mark.parametrize(
    "call,contains",
    [
        ("generate", "--n must be at least 1"),
        ("impute_file", "--guidance must be ≥ 0"),
        ("segment_files", "--steps must be at least 1"),
    ],
)
def test_library_functions_check_settings_like_the_cli(tmp_path, call, contains):
    from ldmtool.errors import LdmError
    from ldmtool.pipelines.generate import generate
    from ldmtool.pipelines.impute import impute_file
    from ldmtool.pipelines.segment import segment_files

    nope = tmp_path / "nope"
    calls = {
        "generate": lambda: generate(nope, nope, tmp_path / "o", n=0),
        "impute_file": lambda: impute_file(nope, nope, nope, tmp_path / "o", guidance=-1.0),
        "segment_files": lambda: segment_files([nope], nope, tmp_path / "o", steps=0),
    }
    with pytest.raises(LdmError, match=contains):
        calls[call]()  # before any file is read


def test_yaml_sections_impute_and_segment(tmp_path):
    from ldmtool.cli.common import section
    from ldmtool.config import SECTIONS, ImputeConfig, SegmentConfig, load_yaml
    from ldmtool.errors import LdmError

    assert {"impute", "segment"} <= set(SECTIONS)
    path = tmp_path / "c.yaml"
    path.write_text("impute:\n  steps: 20\n  guidance: 0.25\nsegment:\n  samples: 3\n  dicom_seg: false\n")
    cfg = load_yaml(path)
    imp = section(cfg, "impute", ImputeConfig, {"steps": 7, "samples": None, "source": "ignored"})
    assert (imp.steps, imp.guidance, imp.samples) == (7, 0.25, ImputeConfig.samples)  # a given flag wins
    seg = section(cfg, "segment", SegmentConfig, {})
    assert (seg.samples, seg.dicom_seg, seg.steps) == (3, False, SegmentConfig.steps)
    with pytest.raises(LdmError, match="unknown ImputeConfig setting"):
        section({"impute": {"stepz": 3}}, "impute", ImputeConfig, {})
    with pytest.raises(LdmError, match="impute.steps must be a whole number"):
        section({"impute": {"steps": 2.5}}, "impute", ImputeConfig, {})


def _capture(monkeypatch, module, name):
    """Replace `module.name` by a stand-in that records its keyword arguments and stops the command."""
    import importlib

    from ldmtool.errors import LdmError

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise LdmError("captured")

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    return seen


def test_impute_and_segment_read_their_config_section(cli, tmp_path, monkeypatch):
    source = tmp_path / "case.nii.gz"
    source.write_bytes(b"")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("impute:\n  steps: 20\n  guidance: 0.25\n  samples: 2\nsegment:\n  samples: 3\n  batch_size: 5\n")
    seen = _capture(monkeypatch, "ldmtool.pipelines.impute", "impute_file")
    r = cli("impute", source, "--ae", "a", "--ldm", "l", "--out", tmp_path / "o", "--config", cfg, "--steps", 9)
    assert r.code == 1 and "captured" in r.err
    assert (seen["steps"], seen["guidance"], seen["samples"], seen["batch_size"]) == (9, 0.25, 2, 4)
    seen = _capture(monkeypatch, "ldmtool.pipelines.segment", "segment_files")
    r = cli("segment", source, "--model", "m", "--out", tmp_path / "o", "-c", cfg, "--no-dicom-seg")
    assert r.code == 1 and "captured" in r.err
    assert (seen["samples"], seen["batch_size"], seen["steps"], seen["dicom_seg"]) == (3, 5, 1, False)


@pytest.mark.parametrize(
    "command,yaml,contains",
    [
        ("impute", "impute:\n  steps: 0\n", "--steps must be at least 1"),
        ("impute", "impute:\n  sampler: euler\n", "--sampler must be one of"),
        ("segment", "segment:\n  samples: 0\n", "--samples must be at least 1"),
        ("segment", "segment:\n  precision: fp8\n", "--precision must be one of"),
    ],
)
def test_impute_and_segment_config_errors_are_one_line(cli, tmp_path, command, yaml, contains):
    source = tmp_path / "case.nii.gz"
    source.write_bytes(b"")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml)
    models = ("--ae", "a", "--ldm", "l") if command == "impute" else ("--model", "m")
    r = cli(command, source, *models, "--out", tmp_path / "o", "--config", cfg)
    assert r.code == 1 and contains in r.err and "Traceback" not in r.both


@pytest.mark.parametrize(
    "flag,value,contains",
    [
        ("--guidance", "-1", "--guidance must be ≥ 0; got -1.0"),
        ("--eta", "-0.5", "--eta must be ≥ 0; got -0.5"),
        ("--reject-memorized", "1.5", "--reject-memorized must be"),
    ],
)
def test_sample_refuses_settings_out_of_range(cli, tmp_path, flag, value, contains):
    """Checked with the settings, before any checkpoint is read (the checkpoints do not exist)."""
    r = cli("sample", "--ae", tmp_path / "a", "--ldm", tmp_path / "l", "--out", tmp_path / "o", flag, value)
    assert r.code == 1 and contains in r.err and "Traceback" not in r.both
    assert not (tmp_path / "o").exists()


def test_script_exit_skips_teardown_but_not_exit_handlers():
    """entry(): the command's exit code, all its output through a pipe, exit handlers registered
    by the command run, and no interpreter teardown (an object's finaliser at module teardown)."""
    code = """
import atexit
from ldmtool.cli import main as m

class Teardown:
    def __del__(self):
        print("teardown", flush=True)

def command(argv=None):
    atexit.register(lambda: print("handler ran"))
    print("x" * 200000)
    return 3

m.keep = Teardown()
m.main = command
m.entry()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == ["x" * 200000, "handler ran"], proc.stdout[-200:]


def test_command_help_wraps_whole_paragraphs():
    """A command's longer description is wrapped as whole paragraphs, not cut at the docstring's own
    line breaks (the sentence below spans two lines of sample's docstring)."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "ldmtool", "sample", "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "Shards of one job (--shard, SLURM arrays, torchrun) write exactly" in proc.stdout
