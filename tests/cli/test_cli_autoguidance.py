"""`sample --guide-ldm G --guidance S`: autoguidance by a weaker denoiser of the same latents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ldmtool.io import read_nifti
from ldmtool.models.denoiser import LatentDenoiser, guided
from tests.cli.conftest import TINY_YAML, _must
from tests.conftest import tiny_denoiser_config


def _image(folder: Path, name: str = "synth_00000") -> np.ndarray:
    return np.asarray(read_nifti(folder / "imagesTr" / f"{name}_0000.nii.gz").array)


@pytest.fixture(scope="module")
def guide(trained) -> Path:
    """A narrower denoiser on the same autoencoder and data, trained for two steps."""
    out = trained.root / "LDM-guide"
    if not out.exists():
        _must(
            "train-ldm", trained.data, "--ae", trained.ae, "--out", out, "--config", TINY_YAML,
            "--channels", "4,8", "--steps", 2,
        )  # fmt: skip
    return out


def test_guided_extrapolates_from_the_guide():
    torch.manual_seed(0)
    model, weak = (LatentDenoiser(tiny_denoiser_config(), 4).eval() for _ in range(2))
    with torch.no_grad():  # MONAI zero-initialises the output layer: random weights make the outputs differ
        for p in [*model.parameters(), *weak.parameters()]:
            p.normal_(0.0, 0.2)
    x, t = torch.randn(2, 4, 4, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        m, g = model(x, t), weak(x, t)
        out = guided(model, None, None, 2.5, guide=weak)(x, t)
        torch.testing.assert_close(out, g + 2.5 * (m - g))
        torch.testing.assert_close(guided(model, None, None, 1.0, guide=weak)(x, t), m)  # scale 1: the model alone
    assert not torch.allclose(out, m)


def test_sample_with_a_guide(trained, guide, cli, tmp_path):
    base = ["--seed", 4, "sample", "--ae", trained.ae, "--ldm", trained.ldm, "--n", 1, "--steps", 3]
    r = cli(*base, "--out", tmp_path / "plain")
    assert r.code == 0, r.both
    r = cli(*base, "--out", tmp_path / "guided", "--guide-ldm", guide, "--guidance", 2)
    assert r.code == 0, r.both
    prov = json.loads((tmp_path / "guided" / "provenance" / "synth_00000.json").read_text())
    assert prov["guidance"] == 2 and len(prov["guide_ldm_sha256"]) == 64
    plain, autoguided = _image(tmp_path / "plain"), _image(tmp_path / "guided")
    assert np.isfinite(autoguided).all() and not np.allclose(plain, autoguided)
    # at guidance 1 the guide changes nothing, and the user is told so
    r = cli(*base, "--out", tmp_path / "one", "--guide-ldm", guide)
    assert r.code == 0 and "no effect at --guidance 1" in r.both
    np.testing.assert_array_equal(_image(tmp_path / "one"), plain)


def test_a_guide_of_other_latents_is_refused(trained, guide, conditioned_ldm, cli, tmp_path):
    base = ["sample", "--ae", trained.ae, "--ldm", trained.ldm, "--n", 1, "--steps", 2, "--guidance", 2]
    r = cli(*base, "--out", tmp_path / "c", "--guide-ldm", conditioned_ldm)
    assert r.code == 1 and len(r.error_lines()) == 1 and "not conditioned on what the model is" in r.err
    flow = tmp_path / "LDMF"
    _must(
        "train-ldm", trained.data, "--ae", trained.ae, "--out", flow, "--config", TINY_YAML,
        "--objective", "flow", "--steps", 1,
    )  # fmt: skip
    r = cli(*base, "--out", tmp_path / "f", "--guide-ldm", flow)
    assert r.code == 1 and "diffusion schedule: objective" in r.err
    r = cli(*base, "--out", tmp_path / "m", "--guide-ldm", tmp_path / "nowhere")
    assert r.code != 0 and len(r.error_lines()) == 1 and "--guide-ldm" in r.err
    assert not (tmp_path / "c" / "imagesTr").exists() or not any((tmp_path / "c" / "imagesTr").iterdir())


def test_mask_to_image_with_a_guide(trained, label_ldm, cli, tmp_path):
    weak = tmp_path / "LDML-guide"
    _must(
        "train-ldm", trained.data, "--ae", trained.ae, "--out", weak, "--config", TINY_YAML,
        "--condition-on", "labels", "--channels", "4,8", "--steps", 1,
    )  # fmt: skip
    r = cli(
        "sample", "--ae", trained.ae, "--ldm", label_ldm, "--labels", trained.data / "labelsTr",
        "--out", tmp_path / "M", "--steps", 2, "--guide-ldm", weak, "--guidance", 2,
    )  # fmt: skip
    assert r.code == 0, r.both
    provs = sorted((tmp_path / "M" / "provenance").glob("*.json"))
    assert provs and all("guide_ldm_sha256" in json.loads(p.read_text()) for p in provs)
