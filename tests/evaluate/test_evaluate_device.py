"""The evaluate measures that run on the user's --device keep every tensor there.

CI has no GPU. On PyTorch's meta device (shapes without data) an operation between a meta tensor
and one made on the CPU raises a device error, as cuda and cpu tensors do; an implementation that
keeps every tensor on the volumes' device gets further and fails only where a value is read out
(`.item()`), which meta tensors cannot give."""

import numpy as np
import pytest
import torch

from ldmtool.evaluate import fidelity as fd
from ldmtool.evaluate.privacy import max_ssim_to_set

META = torch.device("meta")


@pytest.fixture(scope="module")
def volumes() -> np.ndarray:
    return np.random.default_rng(0).random((3, 40, 40, 40)).astype(np.float32)


@pytest.mark.parametrize(
    "measure",
    [
        lambda v: fd.pairwise_ssim(v, pairs=2, device=META),
        lambda v: fd.pairwise_ms_ssim(v, pairs=2, device=META),
        lambda v: max_ssim_to_set(v[:1], v[1:], device=META),
        lambda v: max_ssim_to_set(v[:1], v[1:], device=META, candidates=2),
    ],
    ids=["pairwise SSIM", "pairwise MS-SSIM", "privacy max SSIM", "privacy two-stage search"],
)
def test_measure_keeps_its_tensors_on_the_device(volumes, measure):
    with pytest.raises((RuntimeError, NotImplementedError)) as err:
        measure(volumes)
    assert "device" not in str(err.value), str(err.value)
