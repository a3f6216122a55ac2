"""SliceAutoencoder: shapes, one-hot label channels, and the decoder's use of the slice position."""

import pytest
import torch

from ldmtool.models.autoencoder import SliceAutoencoder


@pytest.fixture
def make_ae(ae_config):
    def make(num_classes=0, **cfg):
        torch.manual_seed(0)
        return SliceAutoencoder(ae_config(**cfg), image_channels=1, num_classes=num_classes).eval()

    return make


@pytest.mark.parametrize("num_classes", [0, 3])
def test_encode_decode_shapes(make_ae, num_classes):
    ae = make_ae(num_classes)
    b, h, w = 3, 16, 24
    image = torch.rand(b, 1, h, w)
    label = torch.randint(0, 3, (b, h, w)) if num_classes else None
    x = ae.make_input(image, label)
    assert x.shape == (b, 1 + max(num_classes - 1, 0), h, w)
    pos = torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():
        z_mu, z_sigma = ae.encode(x, pos)
        assert z_mu.shape == z_sigma.shape == (b, 4, h // 2, w // 2)  # channels (8, 16): one downsampling
        assert torch.all(z_sigma > 0)
        out = ae.decode(z_mu, pos)
        assert out.shape == (b, 1 + num_classes, h, w)
        img, logits = ae.split(out)
        assert img.shape == (b, 1, h, w)
        if num_classes:
            assert logits.shape == (b, num_classes, h, w)
            torch.testing.assert_close(torch.cat([img, logits], 1), out)
        else:
            assert logits is None
        rec, mu, sigma = ae(x, pos)
        assert rec.shape == out.shape and mu.shape == z_mu.shape


def test_make_input_one_hot(make_ae):
    ae = make_ae(num_classes=3)
    image = torch.rand(2, 1, 4, 4)
    label = torch.zeros(2, 4, 4, dtype=torch.uint8)
    label[0, 0, 0] = 1
    label[0, 1, 2] = 2
    label[1, 3, 3] = 2
    x = ae.make_input(image, label)
    assert x.shape == (2, 3, 4, 4)
    torch.testing.assert_close(x[:, 0:1], image)
    # channel 1 = class 1, channel 2 = class 2; background has no channel
    torch.testing.assert_close(x[:, 1], (label == 1).float())
    torch.testing.assert_close(x[:, 2], (label == 2).float())
    assert x.dtype == image.dtype


def test_make_input_needs_label_when_labelled(make_ae):
    ae = make_ae(num_classes=3)
    with pytest.raises(ValueError):
        ae.make_input(torch.rand(1, 1, 4, 4), None)
    # an image-only autoencoder ignores labels
    x = make_ae(num_classes=0).make_input(torch.rand(1, 1, 4, 4), None)
    assert x.shape == (1, 1, 4, 4)


def test_label_input_off_encodes_the_image_alone_and_still_decodes_the_mask(make_ae):
    ae = make_ae(num_classes=3, label_input=False)
    image = torch.rand(2, 1, 8, 8)
    a = ae.make_input(image, torch.zeros(2, 8, 8, dtype=torch.long))
    b = ae.make_input(image, torch.full((2, 8, 8), 2))
    assert a.shape == (2, 1, 8, 8)
    torch.testing.assert_close(a, b)  # the label does not reach the encoder
    torch.testing.assert_close(ae.make_input(image, None), a)
    pos = torch.tensor([0.2, 0.8])
    with torch.no_grad():
        z, _ = ae.encode(a, pos)
        _, logits = ae.split(ae.decode(z, pos))
    assert logits.shape == (2, 3, 8, 8)


def test_decoder_position_bias_starts_at_zero(make_ae):
    ae = make_ae(num_classes=3)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        a = ae.decode(z, torch.tensor([0.0, 0.0]))
        b = ae.decode(z, torch.tensor([0.1, 0.9]))
    torch.testing.assert_close(a, b)  # zero-initialised last layer: no effect yet


def test_decoder_output_depends_on_position(make_ae):
    ae = make_ae(num_classes=3)
    with torch.no_grad():
        torch.nn.init.normal_(ae.pos_to_latent[-1].weight, std=1.0)
        torch.nn.init.normal_(ae.pos_to_latent[-1].bias, std=1.0)
    z = torch.randn(1, 4, 8, 8).repeat(3, 1, 1, 1)
    with torch.no_grad():
        out = ae.decode(z, torch.tensor([0.0, 0.5, 1.0]))
        again = ae.decode(z[:1], torch.tensor([0.5]))
    assert (out[0] - out[1]).abs().max() > 1e-3
    assert (out[1] - out[2]).abs().max() > 1e-3
    assert (out[0] - out[2]).abs().max() > 1e-3
    torch.testing.assert_close(again[0], out[1], atol=1e-5, rtol=1e-5)  # same z, same pos → same output


def test_encoder_sees_position(make_ae):
    ae = make_ae(num_classes=0)
    x = torch.rand(1, 1, 8, 8).repeat(2, 1, 1, 1)
    with torch.no_grad():
        mu, _ = ae.encode(x, torch.tensor([0.0, 1.0]))
    assert (mu[0] - mu[1]).abs().max() > 1e-5


def test_no_position_features(make_ae):
    ae = make_ae(num_classes=0, position_features=0)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        z, _ = ae.encode(x, torch.tensor([0.0, 1.0]))
        out = ae.decode(z, torch.tensor([0.0, 1.0]))
    assert out.shape == (2, 1, 8, 8)


def test_latent_noise_perturbs_the_decoder_input_by_the_stated_scale(make_ae, monkeypatch):
    ae = make_ae(num_classes=3)
    x = ae.make_input(torch.rand(4, 1, 16, 16), torch.randint(0, 3, (4, 16, 16)))
    pos = torch.full((4,), 0.5)
    seen = []
    real_decode = ae.decode
    monkeypatch.setattr(ae, "decode", lambda z, p: seen.append(z) or real_decode(z, p))
    with torch.no_grad():
        z_mu, z_sigma = ae.encode(x, pos)
        torch.manual_seed(1)
        ae(x, pos)  # no extra noise: z = mu + sigma·ε
        torch.manual_seed(1)
        ae(x, pos, latent_noise=0.5)
    plain, noisy = seen
    extra = noisy - plain
    ratio = extra.std(dim=(0, 2, 3)) / z_mu.std(dim=(0, 2, 3))
    # noise of 0.5 latent std per channel (sampling error of 4·8·8 = 256 values per channel)
    assert torch.all((ratio > 0.35) & (ratio < 0.65)), ratio
    with pytest.raises(Exception, match="latent_noise"):
        from ldmtool.config import AELossConfig

        AELossConfig(latent_noise=-1.0)
