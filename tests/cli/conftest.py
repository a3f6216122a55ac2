"""CLI fixtures: an in-process runner and a tiny data set + models trained once per session."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from ldmtool.cli.main import main

TINY_YAML = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def cli(capsys):
    """cli(*args) runs `ldmtool ARGS` in this process and returns Result(code, out, err)."""

    def run(*args) -> Result:
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def _must(*args) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code = main(["--quiet", *[str(a) for a in args]])
    assert code == 0, f"ldmtool {' '.join(map(str, args))} exited {code}"


@dataclass
class Trained:
    data: Path
    ae: Path
    ldm: Path
    samples: Path
    root: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """demo-data → train-ae → train-ldm → sample (3 samples, batch size 2) with examples/tiny.yaml."""
    root = tmp_path_factory.mktemp("e2e")
    t = Trained(root / "data", root / "AE", root / "LDM", root / "S", root)
    _must("demo-data", t.data, "--n", 6, "--shape", "32,32,16")
    _must("train-ae", t.data, "--out", t.ae, "--config", TINY_YAML)
    _must("train-ldm", t.data, "--ae", t.ae, "--out", t.ldm, "--config", TINY_YAML)
    _must("sample", "--ae", t.ae, "--ldm", t.ldm, "--out", t.samples, "--n", 3, "--steps", 3, "--batch-size", 2)
    return t


@pytest.fixture(scope="session")
def conditioned_ldm(trained) -> Path:
    """A latent diffusion model conditioned on lesion attributes (same autoencoder)."""
    out = trained.root / "LDMC"
    _must(
        "train-ldm",
        trained.data,
        "--ae",
        trained.ae,
        "--out",
        out,
        "--config",
        TINY_YAML,
        "--condition-on",
        "lesion",
        "--steps",
        2,
    )
    return out


@pytest.fixture(scope="session")
def label_ldm(trained) -> Path:
    """A latent diffusion model conditioned on the label map (mask-to-image; same autoencoder)."""
    out = trained.root / "LDML"
    _must(
        "train-ldm", trained.data, "--ae", trained.ae, "--out", out, "--config", TINY_YAML,
        "--condition-on", "labels", "--steps", 2,
    )  # fmt: skip
    return out
