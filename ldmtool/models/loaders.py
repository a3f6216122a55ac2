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


def transfer_weights(
    model: LatentDenoiser, tensors: dict[str, torch.Tensor], source: str, source_map: tuple[int, int] = (0, 1)
) -> int:
    """Start `model` from another denoiser's weights (fine-tuning); returns how many tensors came over.

    Tensors of the same name and shape are copied. The first convolution of a model with label-map
    input channels takes the source's weights for its other channels and zeros for the map's, and
    a ControlNet branch starts as a copy of the source UNet's encoder (its outputs are zero-
    initialised), so the new model at step 0 computes what the source did. `source_map` is the
    source's (classes, label detail), (0, 1) for a source without a map: the weights of a map of the
    same classes at a detail this model's divides are spread over its finer sub-squares
    (`map_columns`), so that too computes what the source did; those of another map start afresh."""
    own = model.state_dict()
    new = {}
    dst_map = (model.label_channels, model.cfg.label_detail)
    for key, value in own.items():
        src = tensors.get(key)
        if src is None and key.startswith("controlnet."):
            src = tensors.get("unet." + key[len("controlnet.") :])
        if src is None:
            continue
        if key in _MAP_INPUTS:  # the map's columns come last
            src = map_columns(src, value.shape, value.shape[1] - _MAP_INPUTS[key](model), source_map, dst_map)
            if src is not None:
                new[key] = src
        elif src.shape == value.shape:
            new[key] = src
    unet = [k for k in own if k.startswith("unet.") and "attn2" not in k]  # cross-attention may be new
    missing = [k for k in unet if k not in new]
    if missing:
        raise LdmError(
            f"--init {source}: its weights do not fit this denoiser (e.g. {missing[0]}); "
            "fine-tune with the same denoiser channels, levels and objective as that model"
        )
    model.load_state_dict(new, strict=False)
    return len(new)


# the first convolutions, each with the number of label-map columns it reads: the UNet's (concat
# branch), the ControlNet's own input (none) and its map embedding (ControlNet branch)
_MAP_INPUTS = {
    "unet.conv_in.conv.weight": lambda m: m.condition_channels if m.controlnet is None else 0,
    "controlnet.conv_in.conv.weight": lambda m: 0,
    "controlnet.controlnet_cond_embedding.conv_in.conv.weight": lambda m: m.condition_channels,
}


def map_columns(
    src: torch.Tensor, shape: torch.Size, offset: int, src_map: tuple[int, int], dst_map: tuple[int, int]
) -> torch.Tensor | None:
    """A convolution weight of `shape` whose input columns from `offset` on read a label map
    (`label_grid`: class-major, then the sub-square's row and column) from `src`, whose columns
    from `offset` read the source's map (none: zeros). Same classes, destination detail r times
    the source's: each of the r×r finer sub-squares gets the coarse one's weight / r², the same
    function, since a coarse fraction is the mean of its finer ones. None: the columns before the
    map do not fit, or (another map) no weights carry over exactly, the caller's cue to start afresh."""
    if src.shape[0] != shape[0] or src.shape[2:] != shape[2:] or src.shape[1] < offset:
        return None
    (c_s, k_s), (c_d, k_d) = src_map, dst_map
    out = torch.zeros(shape, dtype=src.dtype)
    out[:, :offset] = src[:, :offset]
    cols = src.shape[1] - offset
    # no map here (its columns dropped), none in the source, or another map: zeros for the map's columns
    if shape[1] == offset or cols != c_s * k_s * k_s or not cols or not maps_carry_over(src_map, dst_map):
        return out if offset else None
    r = k_d // k_s
    coarse = src[:, offset:].reshape(shape[0], c_s, k_s, 1, k_s, 1, *shape[2:])
    fine = coarse.expand(-1, -1, -1, r, -1, r, *shape[2:]) / (r * r)
    out[:, offset:] = fine.reshape(shape[0], c_d * k_d * k_d, *shape[2:])
    return out


def maps_carry_over(src_map: tuple[int, int], dst_map: tuple[int, int]) -> bool:
    """Whether a map model's weights carry over exactly to another's map, both (classes, label detail):
    the same classes at a detail that is a multiple of the source's."""
    return src_map[0] == dst_map[0] and dst_map[1] % src_map[1] == 0


def source_map(config: LatentDiffusionCheckpoint) -> tuple[int, int]:
    """A denoiser checkpoint's label map as `transfer_weights` takes it: (classes, label detail)."""
    return config.label_channels, config.model.label_detail


def map_transfer_note(
    source_map: tuple[int, int], dst_map: tuple[int, int], source_branch: str = "concat", dst_branch: str = "concat"
) -> str | None:
    """Why the label-map weights of an `--init` model cannot carry over (None: they do, or it has none)."""
    (c_s, k_s), (c_d, k_d) = source_map, dst_map
    if not c_s or not c_d:
        return None
    if source_branch != dst_branch:
        return f"the model read its map through the {source_branch} branch and this one through the {dst_branch} branch: its map weights start afresh"
    if maps_carry_over(source_map, dst_map):
        return None
    return (
        f"the model was conditioned on a map of {c_s} classes at label detail {k_s} and this one on {c_d} "
        f"at {k_d}: its map weights do not carry over and start afresh"
    )


def load_segmenter(path: Path, device: torch.device) -> tuple[torch.nn.Module, SegmenterCheckpoint]:
    """A segmenter checkpoint (weights + checked config) on `device`, in eval mode."""
    path = resolve_checkpoint(path)
    tensors, raw = load_checkpoint(path, kind="segmenter")
    config = SegmenterCheckpoint.from_dict(raw, source=str(path))
    model = build_segmenter(config.model, config.num_classes, len(config.channel_names))
    load_weights(model, tensors, path)
    return model.to(device).eval(), config
