"""Missing masks, geometry of imputation, and latent self-guided imputation with tiny models."""

import numpy as np
import pytest
import torch

from ldmtool.config import to_dict
from ldmtool.data.missing import mcar_mask, parse_slices
from ldmtool.errors import LdmError
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.checkpoint_config import AutoencoderCheckpoint, LatentDiffusionCheckpoint
from ldmtool.models.denoiser import LatentDenoiser
from ldmtool.pipelines.impute import missing_mask, to_input_grid
from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline
from tests.conftest import tiny_ae_config, tiny_denoiser_config


def test_parse_slices():
    assert parse_slices("3,7,12-15", 20) == [3, 7, 12, 13, 14, 15]
    assert parse_slices(" 1 , 1,0", 4) == [0, 1]
    for bad in ("3,x", "5-2", "", "1-", "20", "-1"):
        with pytest.raises(LdmError):
            parse_slices(bad, 20)


def test_missing_mask_sources_and_errors():
    image = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    image[0, 0, 0] = np.nan
    gone = missing_mask(image, slices="1,3")
    assert gone[0, 0, 0] and gone[..., 1].all() and gone[..., 3].all() and gone.sum() == 1 + 2 * 30
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[2, 2, 2] = 1
    assert missing_mask(image, mask=mask)[2, 2, 2]
    rate = missing_mask(np.ones((40, 40, 40)), simulate_mcar=0.3, seed=1).mean()
    assert abs(rate - 0.3) < 0.01
    with pytest.raises(LdmError, match="shape"):
        missing_mask(image, mask=np.zeros((6, 5, 3)))
    with pytest.raises(LdmError, match="0 .observed. and 1"):
        missing_mask(image, mask=mask * 2)
    with pytest.raises(LdmError, match="nothing is missing"):
        missing_mask(np.ones((4, 4, 4)))
    with pytest.raises(LdmError, match="every voxel is missing"):
        missing_mask(np.ones((4, 4, 4)), mask=np.ones((4, 4, 4)))
    with pytest.raises(LdmError, match="simulate-mcar"):
        missing_mask(np.ones((4, 4, 4)), simulate_mcar=1.5)
    assert np.array_equal(mcar_mask((5, 5), 0.5, 3), mcar_mask((5, 5), 0.5, 3))


def test_to_input_grid_follows_the_affines():
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    where = np.zeros(vol.shape, dtype=bool)
    where[1, 2, 3] = where[3, 4, 5] = True
    values, outside = to_input_grid(vol, np.eye(4), where, np.eye(4))
    assert np.allclose(values, vol[where]) and outside == 0
    # the model grid is the input grid flipped along its first axis: same world points
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = 3
    values, outside = to_input_grid(vol[::-1].copy(), flip, where, np.eye(4))
    assert np.allclose(values, vol[where]) and outside == 0
    shifted = np.eye(4)
    shifted[0, 3] = 10  # input voxels 10 mm away: outside the model grid
    assert to_input_grid(vol, np.eye(4), where, shifted)[1] == 2


def _tiny_pipeline(depth=8, size=16, objective=None, **denoiser):
    torch.manual_seed(0)
    ae = SliceAutoencoder(tiny_ae_config(), image_channels=1, num_classes=0).eval()
    dcfg = tiny_denoiser_config()
    ldm = LatentDenoiser(dcfg, 4).eval()
    h = size // tiny_ae_config().downsample
    geometry = {"volume_shape": [size, size, depth], "reference_affine": np.eye(4).tolist()}
    ae_cfg = AutoencoderCheckpoint.from_dict(
        {"kind": "autoencoder", "model": to_dict(tiny_ae_config()), "num_classes": 0, **geometry}
    )
    model = to_dict(dcfg) | ({"objective": objective} if objective else {}) | denoiser
    ldm_cfg = LatentDiffusionCheckpoint.from_dict(
        {
            "kind": "latent-diffusion",
            "model": model,
            "latent_shape": [4, depth, h, h],
            "latent_mean": [0.0] * 4,
            "latent_std": [1.0] * 4,
            **geometry,
        }
    )
    return LatentDiffusionPipeline(ae, ae_cfg, ldm, ldm_cfg, device=torch.device("cpu"))


def test_impute_keeps_observed_voxels_exactly_and_fills_the_rest():
    pipe = _tiny_pipeline()
    image = torch.rand(8, 16, 16)
    missing = torch.zeros(8, 16, 16, dtype=torch.bool)
    missing[1::2] = True
    out = pipe.impute(image, missing, samples=3, steps=3, batch_size=2, chunk=3)
    assert out.shape == (3, 8, 16, 16)
    assert torch.equal(out[:, ~missing], image[~missing].expand(3, -1))
    assert torch.isfinite(out).all()
    assert not torch.equal(out[0, missing], out[1, missing])  # independent imputations
    again = pipe.impute(image, missing, samples=3, steps=3, batch_size=3, chunk=8)
    torch.testing.assert_close(again, out, rtol=1e-4, atol=1e-4)  # a sample does not depend on batching


def test_impute_checks_the_depth_and_objective():
    pipe = _tiny_pipeline()
    with pytest.raises(LdmError, match="model space"):
        pipe.impute(torch.rand(6, 16, 16), torch.ones(6, 16, 16, dtype=torch.bool), steps=2)
    pipe = _tiny_pipeline(objective="flow")
    with pytest.raises(LdmError, match="flow"):
        pipe.impute(torch.rand(8, 16, 16), torch.ones(8, 16, 16, dtype=torch.bool), steps=2)


def test_impute_from_the_interpolation_starts_part_way():
    from ldmtool.data.missing import interpolate_missing

    pipe = _tiny_pipeline()
    g = torch.linspace(0, 1, 16)
    image = (0.5 + 0.4 * torch.sin(6 * g)[None, :, None] * torch.cos(4 * g)[None, None, :]).expand(8, 16, 16).clone()
    missing = torch.zeros(8, 16, 16, dtype=torch.bool)
    missing[1::2] = True
    done = []
    near = pipe.impute(image, missing, steps=10, init="interpolation", strength=0.02, callback=done.append)
    assert done[-1] == 1  # round(10 × 0.02) → at least one step, from timestep 19
    assert torch.equal(near[0, ~missing], image[~missing])
    # an untrained denoiser barely moves a start this close to the data: the result stays near the
    # autoencoder's rendering of the interpolated volume, far nearer than an imputation from noise
    filled = torch.from_numpy(interpolate_missing(image.numpy(), missing.numpy()))
    with torch.inference_mode():
        z = pipe.encode(filled) * pipe.latent_std[0] + pipe.latent_mean[0]
        from ldmtool.diffusion.pipeline import decode_latents

        rendered = decode_latents(pipe.ae, z[None])[0][0]
    noise = pipe.impute(image, missing, steps=10)
    err_near = (near[0][missing] - rendered[missing]).abs().mean()
    err_noise = (noise[0][missing] - rendered[missing]).abs().mean()
    assert err_near < 0.5 * err_noise, (err_near, err_noise)
    done.clear()
    pipe.impute(image, missing, steps=10, init="interpolation", strength=0.5, callback=done.append)
    assert done[-1] == 5
    with pytest.raises(LdmError, match="--strength"):
        pipe.impute(image, missing, steps=10, init="interpolation", strength=0.0)
    with pytest.raises(LdmError, match="--init"):
        pipe.impute(image, missing, steps=10, init="linear")


def test_self_guidance_leaves_the_pure_noise_step_of_a_zero_terminal_snr_schedule_alone():
    # at ᾱ_T = 1e-9 a guided ε̂ would move x̂_0 by 1/√ᾱ_T ≈ 3e4 times the change: the first step
    # must stay unguided, the later ones guided
    from ldmtool.config import DenoiserConfig
    from ldmtool.diffusion.guidance import SelfGuidance
    from ldmtool.diffusion.samplers import DDIMSampler, training_scheduler

    cfg = DenoiserConfig(objective="v", zero_terminal_snr=True)
    target = torch.full((1, 2, 4, 4, 4), 0.5)

    def error(x0):
        return ((x0 - target) ** 2).flatten(1).sum(1), 2 * (x0 - target)

    def zero_v(x, t):  # a denoiser that always predicts x̂_0 = √ᾱ x_t
        return torch.zeros_like(x)

    hook = SelfGuidance(zero_v, training_scheduler(cfg).alphas_cumprod, cfg.prediction_type, error, 0.5)
    steps = []
    x = DDIMSampler(cfg, 10)(
        hook,
        torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0)),
        callback=lambda i, t, x_t, x0: steps.append(float(x_t.abs().max())),
    )
    assert steps[0] < 10  # a guided first step throws x_t out to the hundreds
    assert torch.isfinite(x).all() and x.abs().max() < 5
    assert (x - target).abs().mean() < 0.5  # guided towards the observation
