"""Progressive distillation: the student's target makes one DDIM step land where the teacher's two
land, the round structure, and the grid checks."""

import pytest
import torch

from ldmtool.config import DenoiserConfig
from ldmtool.diffusion.samplers import DDIMSampler, timestep_grid, training_scheduler
from ldmtool.errors import LdmError
from ldmtool.train.distill import distill_target, distillation_rounds, student_grid
from tests.diffusion.test_diffusion_samplers import gaussian_model


def _teacher(objective: str):
    """A teacher that is not a fixed point of distillation: the exact Gaussian denoiser plus a
    t-dependent, x-dependent distortion (so two of its steps differ from one)."""
    cfg = DenoiserConfig(channels=(8, 16), norm_num_groups=4, objective=objective)
    ac = training_scheduler(cfg).alphas_cumprod.double()
    exact = gaussian_model(ac, 0.3, 0.7, objective)

    def model(x, t):
        w = (t.double() / 1000).view(-1, *[1] * (x.dim() - 1))
        return (exact(x, t).double() + 0.2 * w * torch.tanh(x.double())).to(x.dtype)

    return cfg, ac, model


@pytest.mark.parametrize("objective", ["eps", "v"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_student_with_target_reproduces_two_teacher_steps(objective, steps):
    cfg, ac, teacher = _teacher(objective)
    grid = torch.tensor(student_grid(1000, steps))
    ac_ext = torch.cat([ac.float().double(), torch.ones(1, dtype=ac.dtype)])  # the samplers use float32 ᾱ

    def student(x, t):  # the ideal student: outputs its target at every grid point it is asked about
        i = (grid == int(t[0])).nonzero()[0, 0]
        tt = torch.full_like(t, int(grid[i]))
        return distill_target(
            teacher,
            x,
            tt,
            torch.full_like(t, int(grid[i + 1])),
            torch.full_like(t, int(grid[i + 2])),
            ac_ext,
            cfg.prediction_type,
        )

    x = torch.randn(2, 3, 4, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    two = DDIMSampler(cfg, 2 * steps)(teacher, x.clone())
    one = DDIMSampler(cfg, steps)(student, x.clone())
    # equal to float32 precision (the samplers cast model outputs to float32; the ε → x̂_0 step at
    # t = 999 amplifies that rounding ~150×) ...
    assert torch.allclose(one, two, atol=1e-4), float((one - two).abs().max())
    # ... where the teacher itself in N steps lands elsewhere (the check can fail)
    assert (DDIMSampler(cfg, steps)(teacher, x.clone()) - two).abs().max() > 0.1


def test_target_per_sample_timesteps():
    """Rows at different student steps get each their own target (the training batch mixes steps)."""
    cfg, ac, teacher = _teacher("v")
    grid = student_grid(1000, 4)
    ac_ext = torch.cat([ac.float().double(), torch.ones(1, dtype=ac.dtype)])  # the samplers use float32 ᾱ
    x = torch.randn(3, 2, 2, 3, 3, dtype=torch.float64)
    idx = [0, 2, 3]
    t, m, e = (torch.tensor([grid[2 * i + k] for i in idx]) for k in range(3))
    both = distill_target(teacher, x, t, m, e, ac_ext, cfg.prediction_type)
    for row in range(len(idx)):
        one = distill_target(
            teacher, x[row : row + 1], t[row : row + 1], m[row : row + 1], e[row : row + 1], ac_ext, cfg.prediction_type
        )
        assert torch.allclose(both[row : row + 1], one, atol=1e-10)


def test_rounds_halve_the_steps():
    assert distillation_rounds(64, 4) == [32, 16, 8, 4]
    assert distillation_rounds(2, 1) == [1]
    for bad in ((48, 4), (4, 4), (6, 4), (64, 0)):
        with pytest.raises(LdmError) as e:
            distillation_rounds(*bad)
        assert "\n" not in str(e.value)


def test_student_grid_is_every_other_teacher_point():
    g = student_grid(1000, 4)
    assert g[-1] == -1 and len(g) == 9
    assert g[:-1:2] == timestep_grid(1000, 4, "trailing")
    with pytest.raises(LdmError, match="power of two"):
        student_grid(1000, 48)  # 1000/96 rounds differently from 1000/48 at one point
