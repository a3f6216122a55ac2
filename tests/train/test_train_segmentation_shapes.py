"""train-seg on volumes of different shapes: batches padded to their largest member, only existing
slices drawn, validation in each case's own grid, the largest training size recorded as patch_size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ldmtool.config import SegLossConfig, SegModelConfig, SegTrainConfig
from ldmtool.data.prepared import PreparedData
from ldmtool.train.segmentation import SegmenterTrainer, _ValidSliceSampler, train_segmenter


def _uneven(shapes, seed=0) -> PreparedData:
    """Cases of (D, H, W) `shapes` stored at the start of common zero-padded arrays."""
    rng = np.random.default_rng(seed)
    size = [max(s[k] for s in shapes) for k in range(3)]
    images = torch.zeros(len(shapes), *size)
    labels = torch.zeros(len(shapes), *size, dtype=torch.uint8)
    for i, (d, h, w) in enumerate(shapes):
        img = rng.random((d, h, w)).astype(np.float32)
        images[i, :d, :h, :w] = torch.from_numpy(img)
        labels[i, :d, :h, :w] = torch.from_numpy((img > 0.6).astype(np.uint8) + (img > 0.9))
    return PreparedData(
        images=images,
        labels=labels,
        case_ids=[f"c{i}" for i in range(len(shapes))],
        affines=[np.eye(4)] * len(shapes),
        label_names={"background": 0, "a": 1, "b": 2},
        intensity_ranges=[(0.0, 1.0)] * len(shapes),
        shapes=list(shapes),
    )


SHAPES = [(6, 20, 18), (4, 14, 22), (5, 17, 13), (3, 12, 12)]


def test_sampler_draws_only_existing_slices():
    data = _uneven(SHAPES)
    sampler = _ValidSliceSampler(data, batch_size=4, rare_fraction=0.25, seed=0)
    assert len(sampler) == sum(s[0] for s in SHAPES) // 4
    for cases, slices in sampler:
        assert all(int(s) < SHAPES[int(c)][0] for c, s in zip(cases, slices))


def test_batch_extent_is_the_largest_member():
    data = _uneven(SHAPES)
    kw = dict(loss_cfg=SegLossConfig(), preprocess={}, device=torch.device("cpu"))
    model = SegModelConfig(arch="unet", dims=2, channels=(8, 16), norm_num_groups=4)
    trainer = SegmenterTrainer(data, model_cfg=model, train_cfg=SegTrainConfig(steps=1, val_fraction=0.25), **kw)
    ids = trainer.train.case_ids
    cases = torch.tensor([ids.index("c1"), ids.index("c3")]) if "c1" in ids and "c3" in ids else torch.tensor([0])
    extent = trainer.batch_extent(cases)
    sizes = [trainer.train.case_size(int(c)) for c in cases]
    assert [s.stop for s in extent] == [max(s[1] for s in sizes), max(s[2] for s in sizes)]
    # largest H, W rounded up to the network's size multiple
    assert trainer.config["patch_size"] == [n + (-n) % trainer.mult for n in (20, 22)]


@pytest.mark.parametrize(("arch", "dims"), [("unet", 2), ("ldseg", 2), ("unet", 3)])
def test_trains_on_volumes_of_different_shapes(arch, dims, tmp_path):
    data = _uneven(SHAPES if dims == 2 else [(8, 12, 10), (6, 10, 14), (7, 9, 9)])
    model = SegModelConfig(
        arch=arch,
        dims=dims,
        channels=(8, 16),
        denoiser_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        num_head_channels=8,
    )
    result = train_segmenter(
        data,
        tmp_path,
        model,
        SegLossConfig(),
        SegTrainConfig(steps=3, batch_size=2, val_fraction=0.34),
        {},
        torch.device("cpu"),
    )
    assert (tmp_path / "model.safetensors").is_file() and "dice_mean" in result.best
    config = json.loads((tmp_path / "config.json").read_text())
    assert len(config["patch_size"]) == dims
