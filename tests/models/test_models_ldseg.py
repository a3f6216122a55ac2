"""LDSeg networks: shapes in 2D and 3D, the standardised label latent, the UNet baseline's size,
padding, and inference through the clipped DDIM sampler."""

import pytest
import torch

from ldmtool.config import SegModelConfig
from ldmtool.models.ldseg import LDSeg, build_unet, seg_schedule, size_multiple
from ldmtool.pipelines.segmenter import crop_to, pad_to_multiple, predict_volume


def tiny(dims=2, **kw):
    return SegModelConfig(
        dims=dims, channels=(8, 16), denoiser_channels=(8, 16), norm_num_groups=4, num_head_channels=8, **kw
    )


@pytest.mark.parametrize("dims,size", [(2, (16, 24)), (3, (8, 16, 16))])
def test_shapes(dims, size):
    torch.manual_seed(0)
    cfg = tiny(dims)
    m = LDSeg(cfg, num_classes=3).eval()
    label = torch.randint(0, 3, (2, *size))
    image = torch.rand(2, 1, *size)
    with torch.no_grad():
        zl, zi = m.encode_label(label), m.encode_image(image)
        latent = (2, 4, *(s // 2 for s in size))  # two levels: one downsampling
        assert zl.shape == zi.shape == latent
        eps = m.predict_noise(zl, torch.tensor([0, 999]), zi)
        assert eps.shape == latent
        assert m.decode(zl).shape == (2, 3, *size)


@pytest.mark.parametrize("train", [True, False])
def test_label_latent_is_standardised(train):
    torch.manual_seed(1)
    m = LDSeg(tiny(), num_classes=4).train(train)
    label = torch.randint(0, 4, (3, 32, 32))
    label[0] = 0  # an empty mask too
    z = m.encode_label(label).detach()
    per_sample = z.flatten(1)
    torch.testing.assert_close(per_sample.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_sample.std(1, unbiased=False), torch.ones(3), atol=1e-2, rtol=0)


def test_unet_baseline_has_about_as_many_parameters():
    cfg = tiny()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    ld, un = n(LDSeg(cfg, 3)), n(build_unet(cfg, 3))
    assert 0.6 < un / ld < 1.6, (un, ld)


def test_pad_and_crop_round_trip():
    x = torch.rand(2, 1, 13, 18)
    p, sizes = pad_to_multiple(x, 8, 2)
    assert p.shape == (2, 1, 16, 24) and sizes == (13, 18)
    assert torch.equal(crop_to(p, sizes), x)
    assert p[..., 13:, :].abs().sum() == 0


def test_clipped_ddim_keeps_x0_bounded():
    from ldmtool.diffusion.samplers import DDIMSampler

    seen = []
    sampler = DDIMSampler(seg_schedule(tiny()), 2, clip=5.0)
    # a model that predicts a wildly wrong ε: unclipped, x̂0 at t=999 would be ~1e5
    out = sampler(
        lambda x, t: torch.full_like(x, -50.0), torch.zeros(1, 4, 4, 4), callback=lambda i, t, x, x0: seen.append(x0)
    )
    assert all(x0.abs().max() <= 5.0 for x0 in seen)
    assert out.abs().max() <= 5.0 + 1e-4


def test_sampling_starts_where_the_signal_is_measurable():
    from ldmtool.diffusion.samplers import training_scheduler
    from ldmtool.pipelines.segmenter import START_SIGNAL, sampling_start

    cfg = tiny()
    t = sampling_start(cfg)
    ac = training_scheduler(seg_schedule(cfg)).alphas_cumprod.double()
    assert ac[t].sqrt() >= START_SIGNAL > ac[t + 1].sqrt()
    assert 900 < t < 999 and ac[999].sqrt() < 1e-4  # at t = T − 1 ẑ0 = (z − √(1−ᾱ)ε̂)/√ᾱ is noise × 2·10⁴
    # predict_volume steps from there: the first model call sees t = sampling_start
    seen = []
    m = LDSeg(cfg, 3).eval()
    forward = m.predict_noise
    m.predict_noise = lambda z, tt, zi: (seen.append(int(tt[0])), forward(z, tt, zi))[1]
    predict_volume(m, cfg, torch.rand(2, 8, 8), steps=2, generator=torch.Generator().manual_seed(0))
    assert seen == [t, t // 2]
    seen.clear()
    predict_volume(m, cfg, torch.rand(2, 8, 8), steps=2, generator=torch.Generator().manual_seed(0), start=999)
    assert seen == [999, 499]


@pytest.mark.parametrize("dims", [2, 3])
def test_predict_volume_probabilities_and_spread(dims):
    torch.manual_seed(0)
    cfg = tiny(dims)
    m = LDSeg(cfg, 3).eval()
    vol = torch.rand(6, 10, 12)  # (D, H, W), not a multiple of the size step
    probs, std = predict_volume(m, cfg, vol, steps=2, samples=3, batch=4, generator=torch.Generator().manual_seed(0))
    assert probs.shape == std.shape == (3, 6, 10, 12)
    torch.testing.assert_close(probs.sum(0), torch.ones(6, 10, 12))
    assert std.max() > 0  # different noise draws give different answers
    single, none = predict_volume(m, cfg, vol, steps=2, samples=1, generator=torch.Generator().manual_seed(0))
    assert none is None and single.shape == probs.shape
    assert size_multiple(cfg) == 4


@pytest.mark.parametrize("arch", ["ldseg", "unet"])
@pytest.mark.parametrize("dims", [2, 3])
def test_predict_volume_keeps_its_tensors_on_the_device(arch, dims):
    """On the meta device (see tests/diffusion/test_diffusion_device.py: CI has no GPU) a tensor
    made on the CPU that meets the model's would raise a device error; the run fails only at the
    first read-out of a value."""
    meta = torch.device("meta")
    cfg = tiny(dims, arch=arch)
    m = (LDSeg(cfg, 3) if arch == "ldseg" else build_unet(cfg, 3)).eval().to(meta)
    with pytest.raises((RuntimeError, NotImplementedError)) as err:
        predict_volume(m, cfg, torch.rand(6, 10, 12), steps=2, samples=2, device=meta, precision="fp32",
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert "device" not in str(err.value), str(err.value)
