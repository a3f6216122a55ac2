"""The 2D slice autoencoder of SBLDM: MONAI AutoencoderKL plus a slice-position embedding.

Input channels: the image channel(s) (all contrasts of a slice, encoded together) followed by
one-hot foreground label channels (when the data set has labels and `label_input` is on), the
observed-voxel mask of each image channel (with `mask_channel`), then the position-feature planes. Missing voxels (incomplete data) enter the encoder as zeros. Output
channels: the image channel(s) followed by logits over all label classes (background included), so
image and mask are encoded and decoded together and one sample is an image+mask pair. With `label_input` off the encoder sees the
image alone and the decoder still outputs the mask: the latent then holds no mask information of
its own, so the mask decoded from a sampled latent is the one its image shows.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import AutoencoderKL

from ldmtool.config import AutoencoderConfig
from ldmtool.models.position import position_features


class SliceAutoencoder(nn.Module):
    """KL autoencoder for slices that knows each slice's position in its volume.

    The normalised slice index reaches the encoder as constant feature planes concatenated to the
    input, and the decoder as a learned per-channel bias added to the latent (a 1×1 conditioning
    of the decoder's input), so a latent need not carry its position itself.
    """

    def __init__(self, cfg: AutoencoderConfig, image_channels: int = 1, num_classes: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_channels = image_channels
        self.num_classes = num_classes  # label classes incl. background; 0 = no labels
        fg = max(num_classes - 1, 0)
        p = cfg.position_features
        n = len(cfg.channels)
        self.net = AutoencoderKL(
            spatial_dims=2,
            in_channels=image_channels * (1 + int(cfg.mask_channel)) + (fg if cfg.label_input else 0) + p,
            out_channels=image_channels + num_classes,
            channels=cfg.channels,
            num_res_blocks=cfg.num_res_blocks,
            attention_levels=tuple([False] * (n - 1) + [cfg.attention]),
            latent_channels=cfg.latent_channels,
            norm_num_groups=cfg.norm_num_groups,
            with_encoder_nonlocal_attn=cfg.attention,
            with_decoder_nonlocal_attn=cfg.attention,
        )
        self.pos_to_latent = nn.Sequential(nn.Linear(max(p, 1), 64), nn.SiLU(), nn.Linear(64, cfg.latent_channels))
        nn.init.zeros_(self.pos_to_latent[-1].weight)
        nn.init.zeros_(self.pos_to_latent[-1].bias)
        # channels-last (NHWC) convolutions: faster on CPU (oneDNN) and the layout tensor
        # cores want on GPU; make_input hands the network its input in the same layout
        self.to(memory_format=torch.channels_last)

    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    def _pos(self, pos: torch.Tensor) -> torch.Tensor:
        feats = position_features(pos, self.cfg.position_features)
        return feats if feats.shape[1] else pos[:, None] * 0

    def make_input(
        self, image: torch.Tensor, label: torch.Tensor | None, observed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Stack image (B,Ci,H,W) and an integer label map (B,H,W) into the encoder's data channels
        (the label is not used with `label_input` off).

        `observed` (B,Ci,H,W) or (B,1,H,W), 1 = known voxel: missing image voxels are set to 0 and,
        with `mask_channel`, the mask of each image channel is a channel too (all ones when not
        given: complete data)."""
        if observed is not None:
            observed = observed.to(image.dtype).expand_as(image)
            image = image * observed
        parts = [image]
        if self.num_classes and self.cfg.label_input:
            if label is None:
                raise ValueError("this autoencoder encodes labels; pass the label map")
            onehot = torch.nn.functional.one_hot(label.long(), self.num_classes).permute(0, 3, 1, 2)
            parts.append(onehot[:, 1:].to(image.dtype))
        if self.cfg.mask_channel:
            parts.append(torch.ones_like(image) if observed is None else observed)
        return torch.cat(parts, dim=1).contiguous(memory_format=torch.channels_last)

    def encode(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C_data, H, W) from `make_input`; pos: (B,) in [0,1] → (z_mu, z_sigma), (B, L, h, w)."""
        feats = position_features(pos, self.cfg.position_features).to(x.dtype)
        planes = feats[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self.net.encode(torch.cat([x, planes], dim=1))

    def decode(self, z: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """z: (B, L, h, w); pos: (B,) → (B, C_img + num_classes, H, W): image then label logits."""
        bias = self.pos_to_latent(self._pos(pos).to(z.dtype))
        return self.net.decode((z + bias[:, :, None, None]).contiguous(memory_format=torch.channels_last))

    def squeeze(self, image: torch.Tensor) -> torch.Tensor:
        """Decoded slices (B, Ci, H, W) → (B, H, W) for a one-channel model (its images carry no
        channel axis); unchanged for several channels."""
        return image[:, 0] if self.image_channels == 1 else image

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split decoder output into (image, label logits or None)."""
        ci = self.image_channels
        return out[:, :ci], (out[:, ci:] if self.num_classes else None)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, latent_noise: float = 0.0):
        """Encode, draw z, decode. `latent_noise` > 0 (training) adds Gaussian noise of that many
        per-channel standard deviations of the batch's latents before decoding, so the decoder
        also learns to map slightly-off latents (what a diffusion prior produces) to clean images
        and masks."""
        z_mu, z_sigma = self.encode(x, pos)
        z = z_mu + z_sigma * torch.randn_like(z_sigma)
        if latent_noise > 0:
            scale = z_mu.detach().std(dim=(0, 2, 3), keepdim=True)
            z = z + latent_noise * scale * torch.randn_like(z)
        return self.decode(z, pos), z_mu, z_sigma
