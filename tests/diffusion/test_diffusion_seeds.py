"""Per-sample seeds and initial noise: independent of batching."""

import torch

from ldmtool.diffusion.samplers import initial_noise, sample_generators, sample_seed
from ldmtool.pipelines.generate import sample_name


def test_sample_seed_deterministic_and_distinct():
    seeds = [sample_seed(0, k) for k in range(200)]
    assert seeds == [sample_seed(0, k) for k in range(200)]
    assert len(set(seeds)) == 200
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)  # valid torch.Generator seeds
    # another base seed gives other sample seeds
    assert not set(seeds) & {sample_seed(1, k) for k in range(200)}
    # (base, index) is not confused with (index, base)
    assert sample_seed(3, 5) != sample_seed(5, 3)


def test_initial_noise_rows_depend_only_on_their_seed():
    shape = (2, 3, 4, 4)
    a, b, c = sample_seed(0, 0), sample_seed(0, 1), sample_seed(0, 2)
    both = initial_noise(shape, sample_generators([a, b]))
    alone = initial_noise(shape, sample_generators([b]))
    assert both.shape == (2, *shape) and alone.shape == (1, *shape)
    torch.testing.assert_close(both[1], alone[0], atol=0, rtol=0)
    three = initial_noise(shape, sample_generators([c, a, b]))
    torch.testing.assert_close(three[1], both[0], atol=0, rtol=0)
    torch.testing.assert_close(three[2], both[1], atol=0, rtol=0)
    assert (both[0] - both[1]).abs().max() > 0.1  # different seeds, different noise
    # standard normal
    big = initial_noise((4000,), sample_generators([a]))
    assert abs(float(big.mean())) < 0.1 and abs(float(big.std()) - 1) < 0.1


def test_sample_name():
    assert sample_name(0) == "synth_00000"
    assert sample_name(123) == "synth_00123"
