"""The denoiser's label-map condition (mask-to-image): the latent grid, the unconditional zero map, guidance."""

from __future__ import annotations

import pytest
import torch

from ldmtool.config import DenoiserConfig
from ldmtool.errors import LdmError
from ldmtool.models.denoiser import LatentDenoiser, guided, label_grid


def _model(label_channels: int, branch: str = "concat") -> LatentDenoiser:
    torch.manual_seed(0)
    cfg = DenoiserConfig(channels=(8, 16), norm_num_groups=4, num_head_channels=8, label_branch=branch)
    model = LatentDenoiser(cfg, 4, label_channels=label_channels).eval()
    with torch.no_grad():  # MONAI zero-initialises output and ControlNet convolutions: give them weights
        zero = [model.unet.out] if model.controlnet is None else [model.unet.out, model.controlnet]
        for module in zero:
            for p in module.parameters():
                if not p.abs().sum():
                    p.normal_(0, 0.1)
    return model


def test_label_grid_fractions():
    labels = torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
    labels[0, :, :2, :2] = 2
    labels[0, :, 0, 2] = 1
    grid = label_grid(labels, 3, 2)
    assert grid.shape == (1, 3, 2, 2, 2)
    assert torch.allclose(grid.sum(1), torch.ones(1, 2, 2, 2))
    assert grid[0, 2, 0, 0, 0] == 1 and grid[0, 1, 0, 0, 1] == 0.25


def test_label_grid_detail_keeps_the_sub_squares():
    """detail k: the fractions of each k×k sub-square of a latent voxel, whose mean is the voxel's
    fraction; at k = factor the map itself (each voxel's class), rebuilt by depth-to-space."""
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 3, 8, 12), dtype=torch.uint8)
    coarse = label_grid(labels, 3, 4)
    half = label_grid(labels, 3, 4, 2)
    assert half.shape == (2, 12, 3, 2, 3)
    assert torch.allclose(half.reshape(2, 3, 4, 3, 2, 3).mean(2), coarse)
    full = label_grid(labels, 3, 4, 4)  # (B, 3 · 16, D, 2, 3): one channel per class and in-plane offset
    assert set(full.unique().tolist()) == {0.0, 1.0}
    onehot = full.reshape(2, 3, 4, 4, 3, 2, 3).permute(0, 1, 4, 5, 2, 6, 3).reshape(2, 3, 3, 8, 12)
    assert torch.equal(onehot.argmax(1), labels.long())
    with pytest.raises(LdmError, match="label_detail 3 must divide"):
        label_grid(labels, 3, 4, 3)


def test_label_detail_widens_the_condition_input():
    cfg = DenoiserConfig(channels=(8, 16), norm_num_groups=4, num_head_channels=8, label_detail=2)
    model = LatentDenoiser(cfg, 4, label_channels=3).eval()
    assert model.unet.conv_in.conv.in_channels == 4 + 3 + 3 * 4
    x, t = torch.randn(1, 4, 4, 4, 4), torch.tensor([5])
    with torch.no_grad():
        out = model(x, t, labels=label_grid(torch.randint(0, 3, (1, 4, 16, 16)), 3, 4, 2))
        assert out.shape == x.shape and torch.equal(model(x, t), model(x, t, labels=torch.zeros(1, 12, 4, 4, 4)))
    assert "label_detail" not in DenoiserConfig().to_dict() and cfg.to_dict()["label_detail"] == 2


@pytest.mark.parametrize("branch", ["concat", "controlnet"])
def test_zero_map_is_unconditional_and_guidance_mixes(branch):
    model = _model(3, branch)
    x, t = torch.randn(2, 4, 4, 4, 4), torch.tensor([10, 500])
    labels = label_grid(torch.randint(0, 3, (2, 4, 8, 8)), 3, 2)
    with torch.no_grad():
        u = model(x, t)
        assert torch.equal(u, model(x, t, labels=torch.zeros_like(labels)))
        c = model(x, t, labels=labels)
        assert not torch.allclose(u, c)
        assert torch.allclose(guided(model, None, None, 1.0, labels)(x, t), c)
        assert torch.allclose(guided(model, None, None, 3.0, labels)(x, t), u + 3.0 * (c - u), atol=1e-5)


def test_unconditioned_model_ignores_a_map():
    model = _model(0)
    assert model.unet.conv_in.conv.in_channels == 4 + 3  # latent + coordinates, as before
    x, t = torch.randn(1, 4, 4, 4, 4), torch.tensor([3])
    with torch.no_grad():
        assert torch.equal(guided(model, None, None, 2.0, torch.ones(1, 3, 4, 4, 4))(x, t), model(x, t))


def test_controlnet_branch_keeps_the_unet_input():
    model = _model(3, "controlnet")
    assert model.unet.conv_in.conv.in_channels == 4 + 3 and model.controlnet is not None


@pytest.mark.parametrize("branch", ["concat", "controlnet"])
def test_fine_tuning_starts_where_the_source_model_is(branch):
    from ldmtool.models.loaders import transfer_weights

    base = _model(0)
    tuned = LatentDenoiser(base.cfg.__class__(**{**vars(base.cfg), "label_branch": branch}), 4, label_channels=3)
    assert transfer_weights(tuned.eval(), base.state_dict(), "base") > 0
    x, t = torch.randn(1, 4, 4, 4, 4), torch.tensor([7])
    labels = label_grid(torch.randint(0, 3, (1, 4, 8, 8)), 3, 2)
    with torch.no_grad():
        expect = base(x, t)
        assert torch.allclose(tuned(x, t), expect, atol=1e-6)  # the unconditional model is the source
        if branch == "controlnet":  # zero-initialised residuals: any map, the source's output
            assert torch.allclose(tuned(x, t, labels=labels), expect, atol=1e-6)


def _detail_model(label_channels: int, branch: str, detail: int) -> LatentDenoiser:
    model = _model(label_channels, branch)
    cfg = DenoiserConfig(**{**vars(model.cfg), "label_detail": detail})
    return LatentDenoiser(cfg, 4, label_channels=label_channels).eval()


@pytest.mark.parametrize("branch", ["concat", "controlnet"])
def test_fine_tuning_at_a_finer_label_detail_starts_where_the_source_is(branch):
    """A detail-1 map model fine-tuned at detail 2: the source's map weights spread over the finer
    sub-squares, so the new model reads any map as the source did (a coarse fraction is the mean
    of its finer ones)."""
    from ldmtool.models.loaders import map_transfer_note, transfer_weights

    base = _model(3, branch)
    tuned = _detail_model(3, branch, 2)
    transfer_weights(tuned, base.state_dict(), "base", source_map=(3, 1))
    torch.manual_seed(1)
    x, t = torch.randn(1, 4, 4, 4, 4), torch.tensor([7])
    labels = torch.randint(0, 3, (1, 4, 8, 8))
    with torch.no_grad():
        expect = base(x, t, labels=label_grid(labels, 3, 2, 1))
        got = tuned(x, t, labels=label_grid(labels, 3, 2, 2))
    assert not torch.allclose(expect, base(x, t), atol=1e-4)  # the map matters to the source
    assert torch.allclose(got, expect, atol=1e-5)
    assert map_transfer_note((3, 1), (3, 2)) is None


def test_fine_tuning_on_another_map_starts_without_its_weights():
    """Another class count: the source's map columns mean other classes, so the new map starts at
    zero (the new model is the source's unconditional one) and train-ldm says so; a model without
    a map fine-tuned from one drops the map's columns."""
    from ldmtool.models.loaders import map_transfer_note, transfer_weights

    base = _model(3)
    other = _detail_model(2, "concat", 2)
    transfer_weights(other, base.state_dict(), "base", source_map=(3, 1))
    plain = _detail_model(0, "concat", 1)
    transfer_weights(plain, base.state_dict(), "base", source_map=(3, 1))
    torch.manual_seed(1)
    x, t = torch.randn(1, 4, 4, 4, 4), torch.tensor([7])
    with torch.no_grad():
        expect = base(x, t)
        assert torch.allclose(
            other(x, t, labels=label_grid(torch.randint(0, 2, (1, 4, 8, 8)), 2, 2, 2)), expect, atol=1e-6
        )
        assert torch.allclose(plain(x, t), expect, atol=1e-6)
    assert "3 classes at label detail 1" in map_transfer_note((3, 1), (2, 2))
    assert map_transfer_note((3, 2), (3, 1)) is not None  # coarser: no exact spread
    assert "through the concat branch and this one through the controlnet" in map_transfer_note(
        (3, 1), (3, 1), "concat", "controlnet"
    )
