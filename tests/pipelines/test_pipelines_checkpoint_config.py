"""Typed checkpoint configs: round trip to the stored dicts, one-line errors for damaged fields."""

import math
from pathlib import Path

import pytest
import torch

from ldmtool.errors import LdmError
from ldmtool.models.checkpoint import load_checkpoint, save_checkpoint
from ldmtool.models.checkpoint_config import AutoencoderCheckpoint, LatentDiffusionCheckpoint, SegmenterCheckpoint
from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline
from ldmtool.pipelines.segmenter import Segmenter

MODELS = Path(__file__).resolve().parents[1] / "regression" / "models"
TYPES = {
    "ae": AutoencoderCheckpoint,
    "ldm": LatentDiffusionCheckpoint,
    "ldmc": LatentDiffusionCheckpoint,
    "seg": SegmenterCheckpoint,
    "unet": SegmenterCheckpoint,
}


@pytest.mark.parametrize("name", sorted(TYPES))
def test_round_trip_is_the_stored_dict(name):
    _, raw = load_checkpoint(MODELS / name)
    typed = TYPES[name].from_dict(raw, "x")
    assert typed.to_dict() == raw
    assert typed.raw == raw and typed["kind"] == raw["kind"] and typed.get("nope", 1) == 1  # dict-style reads


def _tampered(tmp_path, name, change):
    tensors, raw = load_checkpoint(MODELS / name)
    change(raw)
    return save_checkpoint(tmp_path / f"{name}.safetensors", tensors, raw)


def _one_line_error(fn, *words):
    with pytest.raises(LdmError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda c: c.update(intensity_range=[0.0, 1e308]), "intensity_range"),
        (lambda c: c.update(intensity_range=[5.0, 1.0]), "intensity_range"),
        (lambda c: c.update(intensity_range=[0.0, math.nan]), "intensity_range"),
        (lambda c: c.pop("volume_shape"), "volume_shape"),
        (lambda c: c.update(volume_shape=[32, 0, 16]), "volume_shape"),
        (lambda c: c.update(reference_affine=[[1, 0], [0, 1]]), "reference_affine"),
        (lambda c: c.pop("model"), "model"),
        (lambda c: c["model"].update(channels="many"), "model"),
    ],
)
def test_damaged_autoencoder_fields(tmp_path, change, field):
    ae = _tampered(tmp_path, "ae", change)
    _one_line_error(lambda: LatentDiffusionPipeline.from_pretrained(ae, MODELS / "ldm"), f"'{field}'", str(ae))


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda c: c.update(latent_std=[math.nan, 1.0, 1.0, 1.0]), "latent_std"),
        (lambda c: c.update(latent_std=[0.0, 1.0, 1.0, 1.0]), "latent_std"),
        (lambda c: c.update(latent_mean=[0.0]), "latent_mean"),
        (lambda c: c.pop("latent_shape"), "latent_shape"),
        (lambda c: c.update(latent_shape=[4, -16, 16, 16]), "latent_shape"),
    ],
)
def test_damaged_latent_diffusion_fields(tmp_path, change, field):
    ldm = _tampered(tmp_path, "ldm", change)
    _one_line_error(lambda: LatentDiffusionPipeline.from_pretrained(MODELS / "ae", ldm), f"'{field}'", str(ldm))


def test_damaged_conditioning(tmp_path):
    ldm = _tampered(tmp_path, "ldmc", lambda c: c["conditioning"].update(std=[0.0] * len(c["conditioning"]["std"])))
    _one_line_error(lambda: LatentDiffusionPipeline.from_pretrained(MODELS / "ae", ldm), "'conditioning.std'")


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda c: c.pop("label_names"), "label_names"),
        (lambda c: c.update(num_classes=-1), "num_classes"),
        (lambda c: c.update(preprocess={"bogus": 1}), "preprocess"),
    ],
)
def test_damaged_segmenter_fields(tmp_path, change, field):
    seg = _tampered(tmp_path, "seg", change)
    _one_line_error(lambda: Segmenter.from_pretrained(seg, torch.device("cpu")), f"'{field}'")
