"""Checkpoint → ready model: rebuild each network from the (typed, checked) config stored with its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ldmtool.config import AutoencoderConfig, DenoiserConfig, from_dict
from ldmtool.errors import LdmError
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.checkpoint import load_checkpoint, resolve_checkpoint
from ldmtool.models.checkpoint_config import (
    AutoencoderCheckpoint,
    LatentDiffusionCheckpoint,
    SegmenterCheckpoint,
)
from ldmtool.models.denoiser import LatentDenoiser
from ldmtool.models.ldseg import build_segmenter


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Put a checkpoint's tensors into the network its config describes; weights that do not fit it
    (missing, unexpected or of another shape: an edited or mixed-up file) are a one-line error."""
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), "weights do not fit the model")
        raise LdmError(
            f"{path}: its weights do not fit the model its config describes ({detail[:160]}); "
            "the checkpoint is damaged or was edited by hand"
        ) from None


def build_autoencoder(config: AutoencoderCheckpoint | dict[str, Any]) -> SliceAutoencoder:
    """Rebuild the autoencoder described by a checkpoint config."""
    if isinstance(config, AutoencoderCheckpoint):
        return SliceAutoencoder(config.model, image_channels=config.image_channels, num_classes=config.num_classes)
    cfg = from_dict(AutoencoderConfig, config["model"])
    channels = int(config.get("image_channels", 1) or 1)  # checkpoints from before channels: one
    return SliceAutoencoder(cfg, image_channels=channels, num_classes=int(config["num_classes"]))


def load_autoencoder(path: Path, device: torch.device) -> tuple[SliceAutoencoder, AutoencoderCheckpoint]:
    """Load an autoencoder checkpoint (weights + checked config) onto `device`, in eval mode."""
    path = resolve_checkpoint(path)
    tensors, raw = load_checkpoint(path, kind="autoencoder")
    config = AutoencoderCheckpoint.from_dict(raw, source=str(path))
    ae = build_autoencoder(config)
    load_weights(ae, tensors, path)
    return ae.to(device).eval(), config


def build_denoiser(config: LatentDiffusionCheckpoint | dict[str, Any]) -> LatentDenoiser:
    """Rebuild the latent denoiser described by a checkpoint config (2D for 2D images: `image_dims`)."""
    dims = int(config.get("image_dims", 3) or 3)
    if isinstance(config, LatentDiffusionCheckpoint):
        return LatentDenoiser(
            config.model, config.latent_shape[0], len(config.attributes), config.label_channels, spatial_dims=dims
        )
    cfg = from_dict(DenoiserConfig, config["model"])
    cond = config.get("conditioning", {})
    n_attr = len(cond.get("attributes", []))
    return LatentDenoiser(
        cfg, int(config["latent_shape"][0]), n_attr, int(cond.get("label_channels", 0)), spatial_dims=dims
    )


def load_denoiser(path: Path, device: torch.device) -> tuple[LatentDenoiser, LatentDiffusionCheckpoint]:
    """Load a latent-denoiser checkpoint (EMA weights + checked config) onto `device`, in eval mode."""
    path = resolve_checkpoint(path)
    tensors, raw = load_checkpoint(path, kind="latent-diffusion")
    config = LatentDiffusionCheckpoint.from_dict(raw, source=str(path))
    model = build_denoiser(config)
    load_weights(model, tensors, path)
    return model.to(device).eval(), config


def read_denoiser(path: Path) -> tuple[dict[str, torch.Tensor], LatentDiffusionCheckpoint]:
    """A latent-denoiser checkpoint's tensors and checked config, without building the network."""
    path = resolve_checkpoint(path)
    tensors, raw = load_checkpoint(path, kind="latent-diffusion")
    return tensors, LatentDiffusionCheckpoint.from_dict(raw, source=str(path))


def transfer_weights(model: LatentDenoiser, tensors: dict[str, torch.Tensor], source: str) -> int:
    """Start `model` from another denoiser's weights (fine-tuning); returns how many tensors came over.

    Tensors of the same name and shape are copied. The first convolution of a model with label-map
    input channels takes the source's weights for its other channels and zeros for the map's, and
    a ControlNet branch starts as a copy of the source UNet's encoder (its outputs are zero-
    initialised), so the new model at step 0 computes what the source did."""
    own = model.state_dict()
    new = {}
    for key, value in own.items():
        src = tensors.get(key)
        if src is None and key.startswith("controlnet."):
            src = tensors.get("unet." + key[len("controlnet.") :])
        if src is None:
            continue
        if src.shape == value.shape:
            new[key] = src
        elif key == "unet.conv_in.conv.weight" and src.shape[0] == value.shape[0] and src.shape[1] < value.shape[1]:
            widened = torch.zeros_like(value)
            widened[:, : src.shape[1]] = src
            new[key] = widened
    unet = [k for k in own if k.startswith("unet.") and "attn2" not in k]  # cross-attention may be new
    missing = [k for k in unet if k not in new]
    if missing:
        raise LdmError(
            f"--init {source}: its weights do not fit this denoiser (e.g. {missing[0]}); "
            "fine-tune with the same denoiser channels, levels and objective as that model"
        )
    model.load_state_dict(new, strict=False)
    return len(new)


def load_segmenter(path: Path, device: torch.device) -> tuple[torch.nn.Module, SegmenterCheckpoint]:
    """A segmenter checkpoint (weights + checked config) on `device`, in eval mode."""
    path = resolve_checkpoint(path)
    tensors, raw = load_checkpoint(path, kind="segmenter")
    config = SegmenterCheckpoint.from_dict(raw, source=str(path))
    model = build_segmenter(config.model, config.num_classes, len(config.channel_names))
    load_weights(model, tensors, path)
    return model.to(device).eval(), config
