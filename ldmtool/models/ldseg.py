"""Latent diffusion segmentation (LDSeg, Zaman et al.) and its deterministic UNet baseline.

LDSeg segments by conditional diffusion in a learned label latent space:

    z_L = E_L(one-hot mask)          label encoder, ends in a parameter-free normalisation
    z_I = E_I(image)                 image encoder, same latent size, attention in its lowest level
    ε̂   = U([z_t, z_I], t)           time-conditioned UNet on the noisy label latent + image latent
    p   = softmax(D_L(ẑ_0))          label decoder

At inference z_T ~ N(0, I) is denoised in a few DDIM steps given z_I and decoded; several draws
give the mean probabilities and a per-voxel standard deviation (uncertainty). All four parts are
MONAI building blocks (AutoencoderKL's Encoder/Decoder, DiffusionModelUNet) and train end to end.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet, UNet
from monai.networks.nets.autoencoderkl import Decoder, Encoder

from ldmtool.config import DenoiserConfig, SegModelConfig


class LDSeg(nn.Module):
    """The four LDSeg networks; `forward_train` gives what the loss needs."""

    def __init__(self, cfg: SegModelConfig, num_classes: int, image_channels: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        sd, n, lat = cfg.dims, len(cfg.channels), cfg.latent_channels
        # use_flash_attention: torch's scaled_dot_product_attention, the same attention without the
        # (tokens × tokens) matrix in memory; the image encoder's lowest level has (H/4)·(W/4) tokens,
        # 16 384 for a 512 × 512 slice (faster already at 256 × 256 on a CPU; same weights)
        common = dict(
            spatial_dims=sd,
            channels=cfg.channels,
            num_res_blocks=[cfg.num_res_blocks] * n,
            norm_num_groups=cfg.norm_num_groups,
            norm_eps=1e-6,
            use_flash_attention=True,
        )
        self.label_encoder = nn.Sequential(
            Encoder(
                in_channels=num_classes,
                out_channels=lat,
                attention_levels=[False] * n,
                with_nonlocal_attn=False,
                **common,
            ),
            # standardised label latent: zero mean, unit variance over each sample's latent
            nn.GroupNorm(1, lat, affine=False),
        )
        attn = [False] * (n - 1) + [cfg.attention]
        self.image_encoder = Encoder(
            in_channels=image_channels,
            out_channels=lat,
            attention_levels=attn,
            with_nonlocal_attn=cfg.attention,
            **common,
        )
        self.label_decoder = Decoder(
            in_channels=lat, out_channels=num_classes, attention_levels=[False] * n, with_nonlocal_attn=False, **common
        )
        dn = len(cfg.denoiser_channels)
        self.denoiser = DiffusionModelUNet(
            spatial_dims=sd,
            in_channels=2 * lat,
            out_channels=lat,
            channels=cfg.denoiser_channels,
            attention_levels=tuple([False] * (dn - 1) + [True]),
            num_res_blocks=cfg.num_res_blocks,
            norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels,
            use_flash_attention=True,
        )

    def encode_label(self, label: torch.Tensor) -> torch.Tensor:
        """(B, *S) integer label map → (B, L, *s) standardised label latent."""
        onehot = F.one_hot(label.long(), self.num_classes).movedim(-1, 1).float()
        return self.label_encoder(onehot)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) image → (B, L, *s) image latent."""
        return self.image_encoder(image)

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, z_image: torch.Tensor) -> torch.Tensor:
        return self.denoiser(torch.cat([z_t, z_image], dim=1), t)

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """(B, L, *s) → (B, K, *S) class logits."""
        return self.label_decoder(z0)


def seg_schedule(cfg: SegModelConfig) -> DenoiserConfig:
    """The noise schedule of an LDSeg model as the samplers know it (ε prediction)."""
    return DenoiserConfig(
        channels=cfg.denoiser_channels,
        norm_num_groups=cfg.norm_num_groups,
        objective="eps",
        num_train_timesteps=cfg.num_train_timesteps,
        schedule=cfg.schedule,
        coordinates=False,
    )


def _unet(cfg: SegModelConfig, num_classes: int, image_channels: int, width: int) -> nn.Module:
    chans = tuple(width * c for c in cfg.channels) + (width * cfg.channels[-1],)
    return UNet(
        spatial_dims=cfg.dims,
        in_channels=image_channels,
        out_channels=num_classes,
        channels=chans,
        strides=(2,) * (len(chans) - 1),
        num_res_units=cfg.num_res_blocks,
    )


def unet_width(cfg: SegModelConfig, num_classes: int, image_channels: int = 1) -> int:
    """The channel multiplier that gives the UNet the parameter count closest to LDSeg's."""

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        target = count(LDSeg(cfg, num_classes, image_channels))
        return min(range(1, 9), key=lambda k: abs(count(_unet(cfg, num_classes, image_channels, k)) - target))


def build_unet(cfg: SegModelConfig, num_classes: int, image_channels: int = 1) -> nn.Module:
    """The deterministic baseline: a MONAI UNet with the same levels plus a bottom one, its
    channels scaled so that it has about as many parameters as the LDSeg model of `cfg`."""
    return _unet(cfg, num_classes, image_channels, unet_width(cfg, num_classes, image_channels))


def build_segmenter(cfg: SegModelConfig, num_classes: int, image_channels: int = 1) -> nn.Module:
    """LDSeg or the UNet baseline, with channels-last convolutions (NHWC / NDHWC: faster on CPU,
    and the layout GPU tensor cores use); `image_channels`: the contrasts it reads together."""
    model = (
        LDSeg(cfg, num_classes, image_channels) if cfg.arch == "ldseg" else build_unet(cfg, num_classes, image_channels)
    )
    return model.to(memory_format=memory_layout(cfg))


def memory_layout(cfg: SegModelConfig) -> torch.memory_format:
    """The segmenters' tensor layout: channels-last for 2D models, channels-last-3D for 3D ones."""
    return torch.channels_last if cfg.dims == 2 else torch.channels_last_3d


def size_multiple(cfg: SegModelConfig) -> int:
    """Inputs are padded to a multiple of this along every spatial axis the network sees."""
    return cfg.downsample * (2 ** (len(cfg.denoiser_channels) - 1) if cfg.arch == "ldseg" else 2)
