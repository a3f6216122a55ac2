"""LatentDiffusionPipeline with the tiny regression checkpoints: loading, sampling, encoding, imputing."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ldmtool.errors import LdmError
from ldmtool.models.checkpoint_config import AutoencoderCheckpoint, LatentDiffusionCheckpoint
from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline, SampledVolume

MODELS = Path(__file__).resolve().parents[1] / "regression" / "models"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pipe():
    return LatentDiffusionPipeline.from_pretrained(MODELS / "ae", MODELS / "ldm", device=CPU)


def test_from_pretrained_owns_models_and_typed_configs(pipe):
    assert isinstance(pipe.ae_config, AutoencoderCheckpoint) and isinstance(pipe.ldm_config, LatentDiffusionCheckpoint)
    assert not pipe.ae.training and not pipe.ldm.training
    assert pipe.precision == "fp32" and pipe.device == CPU
    assert pipe.latent_shape == (4, 16, 16, 16)
    assert pipe.label_names == {"background": 0, "head": 1, "lesion": 2}
    assert pipe.reference_affine.shape == (4, 4) and pipe.intensity_range is not None
    assert pipe.ae_sha256 == pipe.ldm_config.autoencoder_sha256


def test_from_pretrained_rejects_a_denoiser_of_another_autoencoder(tmp_path):
    from ldmtool.models.checkpoint import load_checkpoint, save_checkpoint

    tensors, cfg = load_checkpoint(MODELS / "ldm")
    save_checkpoint(tmp_path / "ldm.safetensors", tensors, {**cfg, "autoencoder_sha256": "0" * 64})
    with pytest.raises(LdmError, match="different autoencoder"):
        LatentDiffusionPipeline.from_pretrained(MODELS / "ae", tmp_path / "ldm.safetensors")


def test_sample_shapes_and_seed_determinism(pipe):
    out = pipe.sample([3, 4], steps=2, decode_batch=7)
    assert [v.seed for v in out] == [3, 4] and all(isinstance(v, SampledVolume) for v in out)
    assert out[0].image.shape == (32, 32, 16) and out[0].image.dtype == np.float32
    assert out[0].label.shape == (32, 32, 16) and out[0].label.dtype == np.uint8
    assert not np.array_equal(out[0].image, out[1].image)
    again = pipe.sample([3, 4], steps=2, decode_batch=7)
    np.testing.assert_array_equal(again[1].image, out[1].image)  # fixed seeds: the same volumes
    np.testing.assert_array_equal(again[1].label, out[1].label)
    alone = pipe.sample([4], steps=2)  # a sample depends on its own seed, not on the batch (up to rounding)
    np.testing.assert_allclose(alone[0].image, out[1].image, atol=0.05)
    assert (alone[0].label == out[1].label).mean() > 0.99


def test_sample_latents_decode_and_encode(pipe):
    z = pipe.sample_latents([0], sampler="dpmpp2m", steps=2)
    assert z.shape == (1, 4, 16, 16, 16)
    ((img, lab),) = pipe.decode(z, decode_batch=16)
    assert img.shape == lab.shape == (32, 32, 16)
    slices, labels = torch.rand(16, 32, 32), torch.randint(0, 3, (16, 32, 32))
    assert pipe.encode(slices, labels).shape == (4, 16, 16, 16)  # the latent shape


def test_conditioning_needs_a_conditioned_model(pipe):
    with pytest.raises(LdmError, match="without conditioning"):
        pipe.sample([0], steps=1, conditions={"lesion_volume": 5.0})
    cond = LatentDiffusionPipeline.from_pretrained(MODELS / "ae", MODELS / "ldmc")
    a, m = cond.conditioning({"lesion_volume": 5.0}, 2)
    assert a.shape == m.shape and a.shape[0] == 2 and m.sum() == 2
    with pytest.raises(LdmError, match="not nonsense"):
        cond.conditioning({"nonsense": 1.0}, 1)


def test_impute_keeps_observed_voxels(pipe):
    image = torch.rand(16, 32, 32)
    missing = torch.zeros(16, 32, 32, dtype=torch.bool)
    missing[::3] = True
    out = pipe.impute(image, missing, steps=2, samples=2, batch_size=2)
    assert out.shape == (2, 16, 32, 32)
    assert torch.equal(out[:, ~missing], image[~missing].expand(2, -1))
