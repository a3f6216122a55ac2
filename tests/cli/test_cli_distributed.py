"""Scale-out and resilience on the command line: 2 processes under torchrun (gloo on CPU), resume
after SIGKILL to exactly the weights of an uninterrupted run, SIGTERM → state saved + exit 75."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldmtool.models.loaders import load_autoencoder, load_denoiser
from ldmtool.train.state import STATE_NAME, load_state

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "examples" / "tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
LDMTOOL = [sys.executable, "-m", "ldmtool", "--device", "cpu"]
TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    "-m",
    "ldmtool",
    "--device",
    "cpu",
]


def _run(cmd, timeout=240):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout)


def _ldm_cmd(trained, out, *extra):
    return [*LDMTOOL, "train-ldm", trained.data, "--ae", trained.ae, "--out", out, "--config", TINY_YAML, *extra]


def _state_step(out: Path) -> int:
    try:
        return json.loads((out / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def _start_and_wait(cmd, out: Path, min_step: int) -> subprocess.Popen:
    """Start `cmd` and return once it has saved a training state at `min_step` or later."""
    proc = subprocess.Popen(
        [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO
    )
    deadline = time.monotonic() + 180
    while _state_step(out) < min_step:
        if proc.poll() is not None:
            raise AssertionError(
                f"training ended (rc {proc.returncode}) before a state was saved: {proc.stderr.read()[-2000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no training state was saved in time")
        time.sleep(0.05)
    return proc


@pytest.mark.slow  # over 10 s: runs in CI (.ci/run) and with --runslow
def test_two_processes_with_gloo(trained, tmp_path):
    ae_out, ldm_out = tmp_path / "ae", tmp_path / "ldm"
    r = _run([*TORCHRUN, "train-ae", trained.data, "--out", ae_out, "--config", TINY_YAML, "--epochs", 1])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]  # torchrun returns 0 only if both ranks did
    assert "distributed: 2 processes (gloo), 16 slices per process → effective batch 32" in " ".join(r.stdout.split())
    assert "weights identical on all ranks │ yes" in r.stdout
    assert r.stdout.count("train-ae: best checkpoint") == 1  # the table comes from rank 0 only
    ae, cfg = load_autoencoder(ae_out, torch.device("cpu"))
    assert cfg["kind"] == "autoencoder" and json.loads((ae_out / "state.json").read_text())["world_size"] == 2

    r = _run(
        [*TORCHRUN, "train-ldm", trained.data, "--ae", ae_out, "--out", ldm_out, "--config", TINY_YAML, "--steps", 4]
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "effective batch 4" in " ".join(r.stdout.split()) and "weights identical on all ranks │ yes" in r.stdout
    model, cfg = load_denoiser(ldm_out, torch.device("cpu"))
    assert cfg["step"] == 4
    state = load_state(ldm_out)
    assert state.meta["world_size"] == 2 and state.meta["effective_batch_size"] == 4 and state.step == 4
    # the sampler accepts the model trained by two processes
    r = _run(
        [
            *LDMTOOL,
            "--quiet",
            "sample",
            "--ae",
            ae_out,
            "--ldm",
            ldm_out,
            "--out",
            tmp_path / "s",
            "--n",
            1,
            "--steps",
            2,
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow  # over 10 s: runs in CI (.ci/run) and with --runslow
def test_two_processes_train_the_discriminator_alike(trained, tmp_path):
    """The adversarial term's discriminator lives outside the autoencoder's DDP wrapper and
    averages its own gradients: the replica check covers it, so unaveraged (diverged)
    discriminators would end the run with an error."""
    out = tmp_path / "ae"
    r = _run([*TORCHRUN, "train-ae", trained.data, "--out", out, "--config", TINY_YAML, "--epochs", 1,
              "--adversarial-weight", 0.1, "--adversarial-start", 0])  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "weights identical on all ranks │ yes" in r.stdout
    assert "discriminator" in load_state(out).tensors


@pytest.mark.slow  # over 10 s: runs in CI (.ci/run) and with --runslow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(trained, tmp_path):
    steps = ["--steps", 36, "--checkpoint-every", 3]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = _run(_ldm_cmd(trained, whole, *steps))
    assert r.returncode == 0, r.stderr[-2000:]

    proc = _start_and_wait(_ldm_cmd(trained, cut, *steps), cut, min_step=9)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = _state_step(cut)
    assert 9 <= killed_at < 36, "the run must be killed part way"
    state = load_state(cut)  # not corrupt: written under a temp name and renamed
    assert state.step == killed_at and state.meta["complete"] is False
    load_denoiser(cut, torch.device("cpu"))  # the sampling checkpoint is readable too

    r = _run(_ldm_cmd(trained, cut, *steps))  # the same command again: resumes by itself
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from step │ {killed_at}" in " ".join(r.stdout.split())
    assert not list(cut.glob(".*.tmp-*"))
    final = load_state(cut)
    assert final.step == 36 and final.meta["complete"] is True and final.meta["total_steps"] == 36

    # the loss goes on where it was: the history after the kill is the uninterrupted history
    h_whole = json.loads((whole / "history.json").read_text())
    h_cut = json.loads((cut / "history.json").read_text())
    assert [h["step"] for h in h_cut] == [h["step"] for h in h_whole]
    for a, b in zip(h_whole, h_cut):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-6)
    first, last = h_whole[0]["train_loss"], h_whole[-1]["train_loss"]
    assert last < first  # (and training did make progress, so "continues" is not "restarts")
    wa, wb = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)

    r = _run(_ldm_cmd(trained, cut, *steps))  # once more: nothing to do
    assert r.returncode == 0 and "already holds a finished run" in " ".join(r.stdout.split())
    r = _run(_ldm_cmd(trained, cut, *steps, "--lr", "0.5"))  # other settings are not mixed in
    assert r.returncode == 1 and "different settings" in r.stderr and "--restart" in r.stderr


@pytest.mark.slow  # over 10 s: runs in CI (.ci/run) and with --runslow
def test_sigterm_saves_state_and_exits_75(trained, tmp_path):
    out = tmp_path / "ae"
    cmd = [
        *LDMTOOL,
        "train-ae",
        trained.data,
        "--out",
        out,
        "--config",
        TINY_YAML,
        "--epochs",
        400,
        "--checkpoint-every",
        2,
    ]
    proc = _start_and_wait(cmd, out, min_step=2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    assert "stopped by SIGTERM" in err and "run the same command again to resume" in " ".join(err.split())
    state = load_state(out)
    assert state.meta["complete"] is False and 2 <= state.step < state.meta["total_steps"]
    stopped_at = state.step
    # resume the same run for a few more epochs: ask for fewer epochs than before (the schedule
    # follows the new total; the model, data and optimiser settings are the same)
    per_epoch = state.meta["total_steps"] // 400
    epochs = stopped_at // per_epoch + 2
    r = _run([*LDMTOOL, "train-ae", trained.data, "--out", out, "--config", TINY_YAML, "--epochs", epochs, "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_state(out).step == epochs * per_epoch
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))


@pytest.mark.slow  # over 10 s: runs in CI (.ci/run) and with --runslow
def test_resume_without_state_is_a_clear_error(trained, tmp_path):
    r = _run(_ldm_cmd(trained, tmp_path / "none", "--resume", "--steps", 2))
    assert r.returncode == 1 and "no training state to resume" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / STATE_NAME).write_bytes(b"not a safetensors file")
    r = _run(_ldm_cmd(trained, tmp_path / "bad", "--steps", 2))
    assert r.returncode == 1 and "not a readable training state" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # over 10 s: runs in CI (.ci/run) and with --runslow
def test_sigterm_to_torchrun_stops_both_ranks_at_one_step(trained, tmp_path):
    """torchrun passes SIGTERM on to its workers; they agree on the step to stop at, rank 0 saves."""
    out = tmp_path / "ldm"
    cmd = [
        *TORCHRUN,
        "train-ldm",
        trained.data,
        "--ae",
        trained.ae,
        "--out",
        out,
        "--config",
        TINY_YAML,
        "--steps",
        5000,
        "--checkpoint-every",
        2,
    ]
    proc = _start_and_wait(cmd, out, min_step=2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert "stopped by SIGTERM" in err, err[-3000:]
    state = load_state(out)
    assert state.meta["complete"] is False and state.meta["world_size"] == 2 and state.step >= 2
    stopped_at = state.step
    r = _run(
        [
            *TORCHRUN,
            "train-ldm",
            trained.data,
            "--ae",
            trained.ae,
            "--out",
            out,
            "--config",
            TINY_YAML,
            "--steps",
            stopped_at + 2,
        ]
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert load_state(out).step == stopped_at + 2 and f"resumed from step │ {stopped_at}" in " ".join(r.stdout.split())
