"""The one training loop with a tiny fake trainer: resume to identical weights, time budget,
pre-emption (state saved, exit code 75), "best" by the stated score and direction, EMA, files."""

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from ldmtool.config import AETrainConfig
from ldmtool.errors import Preempted
from ldmtool.models.checkpoint import load_checkpoint
from ldmtool.train.common import make_ema
from ldmtool.train.distributed import DistInfo
from ldmtool.train.loop import Trainer, is_better, run_training
from ldmtool.train.state import load_state, step_generator

CPU = torch.device("cpu")


class FakeStop:
    """A StopFlag stand-in raised by the trainer itself after a given step."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = "SIGTERM"


class LinearTrainer(Trainer):
    """Least squares on 24 fixed points, batches of 4 (6 steps an epoch), noise from the step."""

    kind, label, unit = "fake", "fake", "points"

    def __init__(
        self,
        cfg,
        *,
        seed=0,
        scores=None,
        best_key="val",
        best_mode="min",
        keep_last=False,
        ema=False,
        stop_after=None,
        stop=None,
        sleep=0.0,
    ):
        self.cfg, self.info, self.seed = cfg, DistInfo(device=CPU), seed
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(3, 1)
        self.ema = make_ema(self.model, 0.9) if ema else None
        g = torch.Generator().manual_seed(99)
        self.x = torch.randn(24, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]])
        self.steps_per_epoch = 24 // cfg.batch_size
        self.scores = list(scores or [])
        self.best_key, self.best_mode, self.keep_last = best_key, best_mode, keep_last
        self.stop_after, self.stop, self.sleep = stop_after, stop, sleep
        self.config = {"kind": self.kind, "what": "a fake"}
        self.settings = {"model": "linear", "seed": seed}
        self.evaluations = 0

    def epoch_batches(self, epoch):
        order = torch.randperm(24, generator=step_generator(self.seed, epoch))
        bs = self.cfg.batch_size
        return [order[s : s + bs] for s in range(0, self.steps_per_epoch * bs, bs)]

    def train_step(self, net, batch, step):
        if self.stop_after is not None and step + 1 >= self.stop_after:
            self.stop.requested = True  # as if SIGTERM arrived during this step
        time.sleep(self.sleep)
        noise = 0.01 * torch.randn(len(batch), 1, generator=step_generator(self.seed, 0, step))
        loss = torch.nn.functional.mse_loss(net(self.x[batch]), self.y[batch] + noise)
        return loss, {"mse": float(loss.detach())}, len(batch)

    def validation_step(self):
        self.evaluations += 1
        if self.scores:
            return {"val": self.scores[(self.evaluations - 1) % len(self.scores)]}
        with torch.no_grad():
            return {"val": float(torch.nn.functional.mse_loss(self.model(self.x), self.y))}


def _cfg(**kw):
    return AETrainConfig(**{"epochs": 3, "batch_size": 4, "lr": 0.05, "warmup_steps": 2, **kw})


def _weights(out):
    return load_file(str(out / "train_state.safetensors"))


def test_uninterrupted_run_writes_the_loop_files(tmp_path):
    out = tmp_path / "run"
    result = run_training(LinearTrainer(_cfg(), keep_last=True), out)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "history.json",
        "last.safetensors",
        "model.safetensors",
        "state.json",
        "train_state.safetensors",
    ]
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and [h["step"] for h in history] == [6, 12, 18]
    assert history == result.history
    state = json.loads((out / "state.json").read_text())
    assert state["step"] == 18 and state["total_steps"] == 18 and state["complete"] is True
    assert result.items_per_second > 0 and result.resumed_from is None and not result.already_complete
    again = run_training(LinearTrainer(_cfg()), out, resume="auto")
    assert again.already_complete and again.resumed_from == 18 and again.best == result.best


def test_steps_win_over_epochs(tmp_path):
    result = run_training(LinearTrainer(_cfg(steps=8)), tmp_path / "run")
    assert [h["step"] for h in result.history] == [6, 8]  # an epoch end and the last step
    assert load_state(tmp_path / "run").step == 8


def test_stop_flag_saves_the_state_and_raises_preempted_with_exit_code_75(tmp_path):
    out, stop = tmp_path / "run", FakeStop()
    with pytest.raises(Preempted, match="stopped by SIGTERM at step 8/18") as err:
        run_training(LinearTrainer(_cfg(), stop_after=8, stop=stop), out, stop=stop, resume="auto")
    assert err.value.exit_code == 75 and "run the same command again to resume" in str(err.value)
    state = load_state(out)
    assert state.step == 8 and state.meta["complete"] is False
    # a stop between epoch ends does not evaluate: the resumed run evaluates at the next epoch end
    assert [h["step"] for h in state.meta["history"]] == [6]


def test_resume_after_a_stop_goes_on_to_identical_weights(tmp_path):
    whole, cut, stop = tmp_path / "whole", tmp_path / "cut", FakeStop()
    run_training(LinearTrainer(_cfg(), ema=True), whole)
    with pytest.raises(Preempted):
        run_training(LinearTrainer(_cfg(), ema=True, stop_after=9, stop=stop), cut, stop=stop)
    resumed = run_training(LinearTrainer(_cfg(), ema=True), cut, resume="must")
    assert resumed.resumed_from == 9
    a, b = _weights(whole), _weights(cut)
    assert set(a) == set(b) and any(k.startswith("ema/") for k in a)
    for k in a:
        if not k.startswith("rng/"):
            assert torch.equal(a[k], b[k]), k
    h_whole = json.loads((whole / "history.json").read_text())
    h_cut = json.loads((cut / "history.json").read_text())
    assert [(h["step"], h["train_loss"], h["val"]) for h in h_cut] == [
        (h["step"], h["train_loss"], h["val"]) for h in h_whole
    ]


def test_time_budget_stops_the_run_and_counts_as_complete(tmp_path):
    out = tmp_path / "run"
    result = run_training(LinearTrainer(_cfg(epochs=10_000, max_minutes=0.3 / 60), sleep=0.02), out)
    state = load_state(out)
    assert 1 <= state.step < state.meta["total_steps"] and state.meta["complete"] is True
    assert result.history[-1]["step"] == state.step  # evaluated where it stopped
    assert result.seconds < 5
    assert run_training(LinearTrainer(_cfg(epochs=10_000, max_minutes=0.3 / 60)), out, resume="auto").already_complete


@pytest.mark.parametrize(
    "mode,scores,best_epoch",
    [
        ("min", [3.0, 1.0, 2.0], 2),
        ("max", [3.0, 1.0, 2.0], 1),
        ("min", [2.0, 1.0, 1.0], 3),  # ties go to the later evaluation
        ("max", [1.0, 5.0, 5.0], 3),
    ],
)
def test_best_checkpoint_by_the_stated_score_and_direction(tmp_path, mode, scores, best_epoch):
    out = tmp_path / "run"
    trainer = LinearTrainer(_cfg(), scores=scores, best_mode=mode)
    result = run_training(trainer, out)
    assert result.best["epoch"] == best_epoch and result.best_score == scores[best_epoch - 1]
    _, meta = load_checkpoint(out / "model.safetensors", kind="fake")
    assert meta["metrics"]["epoch"] == best_epoch and meta["step"] == 6 * best_epoch and meta["what"] == "a fake"
    assert json.loads((out / "config.json").read_text()) == meta


def test_best_key_none_keeps_the_latest(tmp_path):
    out = tmp_path / "run"
    result = run_training(LinearTrainer(_cfg(), scores=[1.0, 5.0, 9.0], best_key=None), out)
    assert result.best["epoch"] == 3 and result.best_score is None


def test_best_survives_a_resume(tmp_path):
    out, stop = tmp_path / "run", FakeStop()
    with pytest.raises(Preempted):
        run_training(LinearTrainer(_cfg(), scores=[1.0], stop_after=7, stop=stop), out, stop=stop)
    result = run_training(LinearTrainer(_cfg(), scores=[5.0, 3.0]), out, resume="must")  # epochs 2 and 3
    assert [h["val"] for h in result.history] == [1.0, 5.0, 3.0]
    assert result.best["epoch"] == 1 and result.best_score == 1.0
    _, meta = load_checkpoint(out / "model.safetensors", kind="fake")
    assert meta["metrics"]["epoch"] == 1


def test_is_better():
    assert is_better(1.0, 2.0, "min") and is_better(2.0, 2.0, "min") and not is_better(3.0, 2.0, "min")
    assert is_better(3.0, 2.0, "max") and is_better(2.0, 2.0, "max") and not is_better(1.0, 2.0, "max")
    assert is_better(None, 1.0, "min") and is_better(1.0, None, "max")
