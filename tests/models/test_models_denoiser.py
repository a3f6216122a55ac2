"""LatentDenoiser forward shapes and classifier-free guidance arithmetic."""

import pytest
import torch

from ldmtool.models.denoiser import LatentDenoiser, guided

N_ATTR = 5


def _wake(model):
    """MONAI zero-initialises some layers (the output conv among them): give them random weights
    so outputs are non-zero and depend on every input."""
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.fixture(scope="module")
def cond_model(denoiser_config):
    torch.manual_seed(0)
    return _wake(LatentDenoiser(denoiser_config(), latent_channels=4, n_attributes=N_ATTR)).eval()


def _inputs(b=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, 4, 8, 8, generator=g)
    t = torch.tensor([10, 700][:b])
    attrs = torch.randn(b, N_ATTR, generator=g)
    mask = torch.ones(b, N_ATTR)
    mask[0, 2] = 0
    return x, t, attrs, mask


def test_forward_shape_unconditioned(denoiser_config):
    torch.manual_seed(0)
    model = _wake(LatentDenoiser(denoiser_config(), latent_channels=4)).eval()
    x = torch.randn(2, 4, 4, 8, 8)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 999]))
        out_t = model(x, torch.tensor([500, 999]))
    assert out.shape == x.shape
    assert (out[0] - out_t[0]).abs().max() > 1e-6  # the timestep reaches the output
    torch.testing.assert_close(out[1], out_t[1])  # batch rows are independent
    assert model.context(None, None, 2, "cpu") is None


def test_forward_shape_conditioned(cond_model):
    x, t, attrs, mask = _inputs()
    with torch.no_grad():
        out_c = cond_model(x, t, attrs, mask)
        out_u = cond_model(x, t)
    assert out_c.shape == out_u.shape == x.shape
    assert out_u.abs().max() > 1e-3
    assert (out_c - out_u).abs().max() > 1e-4  # the condition reaches the output


def test_context_token(cond_model):
    _, _, attrs, mask = _inputs()
    ctx = cond_model.context(attrs, mask, 2, "cpu")
    assert ctx.shape == (2, 1, 2 * N_ATTR)
    torch.testing.assert_close(ctx[:, 0, :N_ATTR], attrs * mask)
    torch.testing.assert_close(ctx[:, 0, N_ATTR:], mask)
    # no attributes: the all-zero (unconditional) token
    assert torch.count_nonzero(cond_model.context(None, None, 3, "cpu")) == 0
    # attributes without a mask: all given
    torch.testing.assert_close(cond_model.context(attrs, None, 2, "cpu")[:, 0, N_ATTR:], torch.ones(2, N_ATTR))


def test_guided_scale_one_is_conditional(cond_model):
    x, t, attrs, mask = _inputs()
    with torch.no_grad():
        expected = cond_model(x, t, attrs, mask)
        out = guided(cond_model, attrs, mask, 1.0)(x, t)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_guided_scale_formula(cond_model, scale):
    x, t, attrs, mask = _inputs()
    with torch.no_grad():
        c = cond_model(x, t, attrs, mask)
        u = cond_model(x, t, torch.zeros_like(attrs), torch.zeros_like(mask))
        out = guided(cond_model, attrs, mask, scale)(x, t)
    assert (c - u).abs().max() > 1e-4  # otherwise the check below proves nothing
    torch.testing.assert_close(out, u + scale * (c - u), atol=1e-4, rtol=1e-4)


def test_guided_without_attributes_is_unconditional(cond_model):
    x, t, _, _ = _inputs()
    with torch.no_grad():
        out = guided(cond_model, None, None, 3.0)(x, t)
        u = cond_model(x, t)
    torch.testing.assert_close(out, u)


def test_guided_scale_with_default_mask(cond_model):
    x, t, attrs, _ = _inputs()
    with torch.no_grad():
        c = cond_model(x, t, attrs, None)  # mask None means every attribute is given
        u = cond_model(x, t)
        out = guided(cond_model, attrs, None, 2.0)(x, t)
    torch.testing.assert_close(out, u + 2.0 * (c - u), atol=1e-4, rtol=1e-4)


def test_coordinate_grid_marks_each_voxel_position():
    from ldmtool.models.denoiser import coordinate_grid

    x = torch.zeros(2, 4, 3, 5, 6)
    grid = coordinate_grid(x)
    assert grid.shape == (2, 3, 3, 5, 6)
    assert grid.min() == -1 and grid.max() == 1
    # channel a varies along spatial axis a only
    torch.testing.assert_close(grid[0, 0, :, 0, 0], torch.linspace(-1, 1, 3))
    torch.testing.assert_close(grid[0, 1, 0, :, 0], torch.linspace(-1, 1, 5))
    torch.testing.assert_close(grid[0, 2, 0, 0, :], torch.linspace(-1, 1, 6))
    assert torch.equal(grid[0, 0, 1], torch.zeros(5, 6))


@pytest.mark.parametrize("coordinates", [True, False])
def test_coordinates_option_changes_unet_input(denoiser_config, coordinates):
    model = LatentDenoiser(denoiser_config(coordinates=coordinates), latent_channels=4)
    first_conv = next(m for m in model.unet.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 4 + (3 if coordinates else 0)
    out = model(torch.randn(1, 4, 4, 8, 8), torch.tensor([5]))
    assert out.shape == (1, 4, 4, 8, 8)
