"""Segmenter with the tiny regression checkpoints: loading, prediction shapes, determinism."""

from pathlib import Path

import pytest
import torch

from ldmtool.errors import LdmError
from ldmtool.models.checkpoint_config import SegmenterCheckpoint
from ldmtool.pipelines.segmenter import Segmenter

MODELS = Path(__file__).resolve().parents[1] / "regression" / "models"


@pytest.mark.parametrize("name,arch", [("seg", "ldseg"), ("unet", "unet")])
def test_from_pretrained_and_predict(name, arch):
    seg = Segmenter.from_pretrained(MODELS / name)
    assert seg.arch == arch and isinstance(seg.config, SegmenterCheckpoint) and not seg.model.training
    assert seg.label_names == {"background": 0, "head": 1, "lesion": 2}
    image = torch.rand(5, 32, 32)
    probs, std = seg.predict(image, batch=2, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (3, 5, 32, 32) and std is None
    torch.testing.assert_close(probs.sum(0), torch.ones(5, 32, 32))
    again, _ = seg.predict(image, batch=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, probs)


def test_ldseg_samples_give_a_spread():
    seg = Segmenter.from_pretrained(MODELS / "seg")
    probs, std = seg.predict(torch.rand(3, 32, 32), steps=2, samples=3, generator=torch.Generator().manual_seed(1))
    assert probs.shape == std.shape == (3, 3, 32, 32) and (std >= 0).all()


def test_from_pretrained_refuses_other_checkpoints():
    with pytest.raises(LdmError, match="expected a segmenter"):
        Segmenter.from_pretrained(MODELS / "ae")


@pytest.mark.parametrize("name", ["seg", "unet"])
def test_inputs_larger_than_the_patch_are_tiled(name):
    """Slices larger than the training patch go through sliding windows; the output keeps the input's size."""
    seg = Segmenter.from_pretrained(MODELS / name)
    assert seg.patch_size is None  # checkpoints without patch_size are never tiled
    image = torch.rand(3, 45, 37)
    whole, _ = seg.predict(image, generator=torch.Generator().manual_seed(0))
    seg.patch_size = (32, 32)
    tiled, std = seg.predict(image, samples=1, generator=torch.Generator().manual_seed(0))
    assert tiled.shape == whole.shape == (3, 3, 45, 37) and std is None
    torch.testing.assert_close(tiled.sum(0), torch.ones(3, 45, 37))
    small = torch.rand(2, 20, 24)  # smaller than the patch: padded, not tiled
    seg.patch_size = None
    ref, _ = seg.predict(small, generator=torch.Generator().manual_seed(0))
    seg.patch_size = (32, 32)
    out, _ = seg.predict(small, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_tiled_ldseg_samples_keep_their_spread():
    seg = Segmenter.from_pretrained(MODELS / "seg")
    seg.patch_size = (32, 32)
    probs, std = seg.predict(torch.rand(2, 40, 48), samples=3, generator=torch.Generator().manual_seed(1))
    assert probs.shape == std.shape == (3, 2, 40, 48) and (std >= 0).all()


def test_bad_patch_size_is_one_line():
    from ldmtool.pipelines.segmenter import checked_patch

    assert checked_patch([32, 48], 2, "x") == (32, 48)
    with pytest.raises(LdmError, match="patch_size"):
        checked_patch([32, 0], 2, "x")
