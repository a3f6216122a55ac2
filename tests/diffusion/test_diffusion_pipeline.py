"""Slice-by-slice pipeline: volume <-> latent volume with a tiny autoencoder."""

import pytest
import torch

from ldmtool.diffusion.pipeline import decode_latents, encode_volume
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.position import slice_positions

D, H, W = 5, 16, 16


@pytest.fixture(scope="module")
def ae(ae_config):
    torch.manual_seed(0)
    model = SliceAutoencoder(ae_config(), image_channels=1, num_classes=3).eval()
    with torch.no_grad():  # make the decoder depend on the slice position (zero-initialised)
        torch.nn.init.normal_(model.pos_to_latent[-1].weight, std=1.0)
        torch.nn.init.normal_(model.pos_to_latent[-1].bias, std=1.0)
    return model


@pytest.fixture(scope="module")
def ae_image_only(ae_config):
    torch.manual_seed(1)
    return SliceAutoencoder(ae_config(), image_channels=1, num_classes=0).eval()


def _volume(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(D, H, W, generator=g), torch.randint(0, 3, (D, H, W), generator=g)


def test_encode_volume_shape_and_slice_batching(ae):
    image, label = _volume()
    z = encode_volume(ae, image, label)
    assert z.shape == (4, D, H // 2, W // 2)
    torch.testing.assert_close(encode_volume(ae, image, label, batch=2), z, atol=1e-5, rtol=1e-5)
    # slice d of the latent volume is the posterior mean of slice d at its position
    pos = slice_positions(D)
    with torch.no_grad():
        mu, _ = ae.encode(ae.make_input(image[3:4, None], label[3:4]), pos[3:4])
    torch.testing.assert_close(z[:, 3], mu[0], atol=1e-5, rtol=1e-5)


def test_encode_volume_image_only(ae_image_only):
    image, _ = _volume()
    z = encode_volume(ae_image_only, image, None, batch=3)
    assert z.shape == (4, D, H // 2, W // 2)


def test_decode_latents_shapes(ae, ae_image_only):
    z = torch.randn(2, 4, D, H // 2, W // 2)
    image, probs = decode_latents(ae, z)
    assert image.shape == (2, D, H, W)
    assert probs.shape == (2, 3, D, H, W)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, D, H, W), atol=1e-5, rtol=0)
    assert image.device.type == "cpu"
    image2, probs2 = decode_latents(ae_image_only, z)
    assert image2.shape == (2, D, H, W) and probs2 is None


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_decode_batch_does_not_mix_volumes(ae, batch):
    z = torch.randn(2, 4, D, H // 2, W // 2, generator=torch.Generator().manual_seed(3))
    image, probs = decode_latents(ae, z, batch)
    for b in range(2):
        img_b, probs_b = decode_latents(ae, z[b : b + 1], batch)
        torch.testing.assert_close(image[b], img_b[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(probs[b], probs_b[0], atol=1e-5, rtol=1e-5)


def test_decode_uses_each_slice_position(ae):
    # Every slice holds the same latent: outputs differ only through the slice position, and
    # slice d must be decoded at position d of the volume.
    z_slice = torch.randn(4, H // 2, W // 2)
    z = z_slice[None, :, None].repeat(2, 1, D, 1, 1)
    image, probs = decode_latents(ae, z, batch=3)
    pos = slice_positions(D)
    with torch.no_grad():
        for d in range(D):
            out = ae.decode(z_slice[None], pos[d : d + 1])
            img, logits = ae.split(out)
            for b in range(2):
                torch.testing.assert_close(image[b, d], img[0, 0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(probs[b, :, d], torch.softmax(logits, 1)[0], atol=1e-5, rtol=1e-5)
    assert (image[0, 0] - image[0, -1]).abs().max() > 1e-4


def test_round_trip_shape_matches_volume(ae):
    image, label = _volume(1)
    z = encode_volume(ae, image, label)
    rec, probs = decode_latents(ae, z[None])
    assert rec.shape == (1, *image.shape)
    assert probs.argmax(1).shape == (1, *label.shape)
