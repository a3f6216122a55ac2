"""The 3D latent denoiser (MONAI DiffusionModelUNet) with optional attribute and label-map conditioning."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import DiffusionModelUNet

from ldmtool.config import DenoiserConfig
from ldmtool.errors import LdmError


class LatentDenoiser(nn.Module):
    """Predicts ε (or v) for a noisy latent volume (B, C, D, h, w) at timesteps t (B,).

    With `n_attributes > 0` the UNet is conditioned by cross-attention on one context token
    `[a · m, m]`, where `a` are standardised lesion attributes and `m` a 0/1 mask saying which
    attributes are given. An all-zero mask is the unconditional model, so one network serves
    conditional, partially conditional and unconditional sampling (classifier-free guidance).

    With `label_channels > 0` (mask-to-image) a label map brought to the latent grid (`label_grid`:
    the fraction of each class under every latent voxel, background included, or with
    `cfg.label_detail` k under each of its k×k in-plane sub-squares) is concatenated to
    the input (`cfg.label_branch` "concat") or fed to a MONAI ControlNet whose residuals are added
    to the UNet's blocks ("controlnet"); all zeros (what no real map gives) is the unconditional model.
    """

    def __init__(
        self,
        cfg: DenoiserConfig,
        latent_channels: int,
        n_attributes: int = 0,
        label_channels: int = 0,
        spatial_dims: int = 3,
    ) -> None:
        """`spatial_dims` 2: a 2D UNet for 2D images, whose latent "volumes" have one slice
        (B, C, 1, h, w): the slice axis is dropped around the UNet, so training, samplers and
        decoding are those of the 3D path."""
        super().__init__()
        self.cfg = cfg
        self.n_attributes = n_attributes
        self.label_channels = label_channels
        self.condition_channels = label_channels * cfg.label_detail**2  # the map's channels on the latent grid
        self.spatial_dims = spatial_dims
        self._memory_format = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        concat = self.condition_channels if cfg.label_branch == "concat" else 0
        shared = dict(
            spatial_dims=spatial_dims,
            channels=cfg.channels,
            attention_levels=cfg.attention_levels,
            num_res_blocks=cfg.num_res_blocks,
            norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels,
            with_conditioning=n_attributes > 0,
            cross_attention_dim=2 * n_attributes if n_attributes else None,
        )
        in_channels = latent_channels + (3 if cfg.coordinates else 0)
        self.unet = DiffusionModelUNet(in_channels=in_channels + concat, out_channels=latent_channels, **shared)
        self.controlnet = None
        if label_channels and not concat:  # the map at the latent grid's own size: one embedding level
            from monai.networks.nets import ControlNet

            self.controlnet = ControlNet(
                in_channels=in_channels,
                conditioning_embedding_in_channels=self.condition_channels,
                conditioning_embedding_num_channels=(cfg.channels[0],),
                **shared,
            )
        self.to(memory_format=self._memory_format)  # channels-last convolutions: faster on CPU and GPU

    def context(
        self, attributes: torch.Tensor | None, mask: torch.Tensor | None, batch: int, device
    ) -> torch.Tensor | None:
        """(B, 1, 2A) context token, or None for an unconditioned network."""
        if not self.n_attributes:
            return None
        if attributes is None:
            attributes = torch.zeros(batch, self.n_attributes, device=device)
            mask = torch.zeros_like(attributes)
        if mask is None:
            mask = torch.ones_like(attributes)
        return torch.cat([attributes * mask, mask], dim=1)[:, None]

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        attributes: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`labels`: (B, condition_channels, D, h, w) from `label_grid` (None: unconditioned on a map)."""
        if self.cfg.coordinates:
            x = torch.cat([x, coordinate_grid(x)], dim=1)
        context = self.context(attributes, mask, x.shape[0], x.device)
        if self.label_channels and labels is None:
            labels = x.new_zeros((x.shape[0], self.condition_channels, *x.shape[2:]))
        if self.label_channels and self.controlnet is None:
            x = torch.cat([x, labels.to(x.dtype)], dim=1)
        if self.spatial_dims == 2:  # (B, C, 1, h, w) → (B, C, h, w) and back
            return self._forward(x[:, :, 0], t, context, None if labels is None else labels[:, :, 0])[:, :, None]
        return self._forward(x, t, context, labels)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, context, labels: torch.Tensor | None) -> torch.Tensor:
        """The UNet (and ControlNet) on inputs of the network's own dimensionality."""
        x = x.contiguous(memory_format=self._memory_format)
        if self.controlnet is None:
            return self.unet(x, t, context=context)
        cond = labels.to(x.dtype).contiguous(memory_format=self._memory_format)
        down, mid = self.controlnet(x, t, controlnet_cond=cond, context=context)
        return self.unet(x, t, context=context, down_block_additional_residuals=down, mid_block_additional_residual=mid)


def coordinate_grid(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, D, h, w) voxel coordinates in [-1, 1] for a latent volume x of shape (B, C, D, h, w).

    Convolutions are translation-equivariant; these channels tell the denoiser where in the
    volume (which slice, where in the slice) a latent voxel sits, as the slice-position
    embedding does for the autoencoder (CoordConv, Liu et al. 2018)."""
    axes = [torch.linspace(-1.0, 1.0, n, device=x.device, dtype=x.dtype) for n in x.shape[2:]]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid[None].expand(x.shape[0], -1, -1, -1, -1)


def check_label_detail(detail: int, factor: int) -> None:
    """A one-line error unless `label_detail` divides the autoencoder's downsampling factor."""
    if factor % detail:
        raise LdmError(
            f"label_detail {detail} must divide the autoencoder's downsampling factor {factor} (e.g. 1, 2 or {factor})"
        )


def label_grid(labels: torch.Tensor, num_classes: int, factor: int, detail: int = 1) -> torch.Tensor:
    """(B, D, H, W) integer label maps (slice axis first) → (B, num_classes · detail², D, H/factor,
    W/factor): the fraction of each class under every latent voxel (the slice autoencoder's latent
    grid), or with `detail` k under each of its k×k in-plane sub-squares (class-major, then the
    sub-square's row and column: a space-to-depth rearrangement, lossless when k = factor).
    One class at a time: memory holds one float volume, never a one-hot copy of the batch."""
    check_label_detail(detail, factor)
    pool, step = torch.nn.functional.avg_pool3d, factor // detail

    def one(c: int) -> torch.Tensor:
        frac = pool((labels == c).float()[:, None], (1, step, step))[:, 0]  # (B, D, H/step, W/step)
        if detail == 1:
            return frac[:, None]
        b, d, h, w = frac.shape
        frac = frac.reshape(b, d, h // detail, detail, w // detail, detail)
        return frac.permute(0, 3, 5, 1, 2, 4).reshape(b, detail * detail, d, h // detail, w // detail)

    return torch.cat([one(c) for c in range(num_classes)], 1)


def guided(
    model: LatentDenoiser,
    attributes: torch.Tensor | None,
    mask: torch.Tensor | None,
    scale: float = 1.0,
    labels: torch.Tensor | None = None,
    guide: LatentDenoiser | None = None,
):
    """A `model(x, t)` function for the samplers, with classifier-free guidance when conditioned.

    out = u + scale · (c − u), u = unconditional output (no attributes, no label map), c = conditional
    output. `labels`: a (B, C, D, h, w) label-map condition from `label_grid` (label-conditioned models).
    With a `guide` (a weaker denoiser of the same latents: trained shorter or smaller) u is the
    guide's output under the same conditions instead (autoguidance, Karras et al. 2024: moving away
    from a worse model's prediction sharpens what both already agree on, conditioned or not).
    """
    if guide is not None and scale != 1.0:
        return _autoguided(model, guide, attributes, mask, scale, labels)
    if attributes is not None and not model.n_attributes:
        attributes = None
    if labels is not None and not getattr(model, "label_channels", 0):
        labels = None
    if attributes is None and labels is None:
        return lambda x, t: model(x, t)
    if attributes is not None and mask is None:
        mask = torch.ones_like(attributes)
    if scale == 1.0:
        return lambda x, t: model(x, t, attributes, mask, labels)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = m = lab = None
        if attributes is not None:
            a, m = torch.cat([attributes, torch.zeros_like(attributes)]), torch.cat([mask, torch.zeros_like(mask)])
        if labels is not None:
            lab = torch.cat([labels, torch.zeros_like(labels)])
        both = model(torch.cat([x, x]), torch.cat([t, t]), a, m, lab)
        c, u = both.chunk(2)
        return u + scale * (c - u)

    return fn


def _autoguided(model, guide, attributes, mask, scale: float, labels):
    """out = g + scale · (m − g), m and g the model's and the guide's outputs, each with the
    conditions it takes (CFG's unconditional branch replaced by the guide)."""
    own = guided(model, attributes, mask, 1.0, labels)
    weak = guided(guide, attributes, mask, 1.0, labels)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = weak(x, t)
        return g + scale * (own(x, t) - g)

    return fn
