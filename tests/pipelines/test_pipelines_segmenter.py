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
