"""Sampling and imputation keep every tensor on the pipeline's device (see
tests/evaluate/test_evaluate_device.py for the meta-device check: CI has no GPU, and an operation
between a meta tensor and one made on the CPU raises a device error as cuda and cpu tensors do).
On meta the runs get as far as the first read-out of a value, which meta tensors cannot give."""

import pytest
import torch

from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline
from tests.diffusion.test_diffusion_impute import _tiny_pipeline

META = torch.device("meta")


def _on_meta(**denoiser) -> LatentDiffusionPipeline:
    p = _tiny_pipeline(**denoiser)
    return LatentDiffusionPipeline(p.ae.to(META), p.ae_config, p.ldm.to(META), p.ldm_config, device=META)


def _fails_without_a_device_error(run) -> None:
    with pytest.raises((RuntimeError, NotImplementedError)) as err:
        run()
    assert "device" not in str(err.value), str(err.value)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m", "dpmpp3m", "unipc2", "unipc3"])
def test_sampling_keeps_its_tensors_on_the_device(sampler):
    _fails_without_a_device_error(lambda: _on_meta(objective="v").sample([0, 1], sampler=sampler, steps=3))


def test_flow_sampling_and_guidance_keep_their_tensors_on_the_device():
    _fails_without_a_device_error(lambda: _on_meta(objective="flow").sample([0], sampler="euler", steps=2))
    _fails_without_a_device_error(lambda: _on_meta().sample([0], steps=2, guidance=2.0))


@pytest.mark.parametrize("init", ["noise", "interpolation"])
def test_imputation_keeps_its_tensors_on_the_device(init):
    image = torch.rand(8, 16, 16)
    missing = torch.zeros(8, 16, 16, dtype=torch.bool)
    missing[1::2] = True
    _fails_without_a_device_error(
        lambda: _on_meta().impute(image, missing, samples=1, steps=2, batch_size=1, init=init, strength=0.5)
    )
