"""Progressive distillation of a latent denoiser (Salimans & Ho 2022, "Progressive distillation for
fast sampling of diffusion models"): a student learns to take in one deterministic DDIM step what
its teacher takes in two, round after round (64 → 32 → … → 4 steps), each student the next
round's teacher. The result is an ordinary latent-diffusion checkpoint whose config records the
DDIM grid it was distilled for (`distillation`), which `ldmtool sample` then uses by default.

Written here rather than taken from a library: diffusers and MONAI ship schedulers and samplers,
not a distillation trainer for 3D latent volumes, and the training loop, data, conditioning and
checkpoints are ldmtool's own (`train.latent`, `train.loop`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ldmtool.config import DistillConfig
from ldmtool.data.prepared import PreparedData
from ldmtool.diffusion.samplers import output_to_eps_x0, timestep_grid
from ldmtool.errors import LdmError
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.checkpoint import file_sha256, resolve_checkpoint, save_checkpoint, write_config_json
from ldmtool.models.loaders import build_denoiser, load_weights, read_denoiser
from ldmtool.runtime import autocast
from ldmtool.train.distributed import DistInfo, StopFlag, barrier
from ldmtool.train.latent import DenoiserTrainer, conditioning_inputs, encode_dataset
from ldmtool.train.loop import TrainResult, run_training

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def distillation_rounds(teacher_steps: int, steps: int) -> list[int]:
    """The student step counts of the rounds, e.g. (64, 4) → [32, 16, 8, 4]; an error unless
    `teacher_steps` is `steps` times a power of two (each round halves the steps)."""
    if steps < 1:
        raise LdmError(f"--steps must be at least 1; got {steps}")
    rounds, n = [], teacher_steps
    while n > steps and n % 2 == 0:
        n //= 2
        rounds.append(n)
    if n != steps or not rounds:
        raise LdmError(
            f"--teacher-steps must be --steps times a power of two (each round halves the steps); "
            f"got {teacher_steps} and {steps}, e.g. {steps * 16} and {steps}"
        )
    return rounds


def student_grid(num_train: int, steps: int) -> list[int]:
    """The teacher's 2N trailing DDIM timesteps followed by −1 (the clean end): student step i goes
    from grid[2i] to grid[2i + 2]; an error where the N-step trailing grid is not every other point
    of the 2N-step one (the distilled model must sample on the grid it learnt)."""
    fine = timestep_grid(num_train, 2 * steps, "trailing")
    if fine[::2] != timestep_grid(num_train, steps, "trailing"):
        raise LdmError(
            f"the {steps}-step DDIM grid is not every other step of the {2 * steps}-step one for "
            f"{num_train} training timesteps; choose --steps a power of two"
        )
    return fine + [-1]


def distill_target(
    teacher: ModelFn,
    z_t: torch.Tensor,
    t: torch.Tensor,
    t_mid: torch.Tensor,
    t_end: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction: str,
) -> torch.Tensor:
    """The student's regression target, in the model's output space (ε or v), for one DDIM step
    t → t_end that lands where the teacher's two DDIM steps t → t_mid → t_end land (eta 0).

    With x̃ the clean sample the student should predict (Salimans & Ho 2022, Algorithm 2):
    x̃ = (z'' − (σ''/σ) z_t) / (α'' − (σ''/σ) α), z'' the teacher's result; ε̃ = (z_t − α x̃)/σ and
    v = α ε̃ − σ x̃. `alphas_cumprod` has ᾱ_t at t and 1 at index −1 (the clean end, t_end = −1)."""

    def ac(s: torch.Tensor) -> torch.Tensor:
        return alphas_cumprod[s].to(z_t.dtype).view(-1, *([1] * (z_t.dim() - 1)))

    def step(z: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        a_s = ac(s)
        eps, x0 = output_to_eps_x0(teacher(z, s).to(z.dtype), z, a_s, prediction)
        a_n = ac(s_next)
        return a_n.sqrt() * x0 + (1 - a_n).sqrt() * eps

    z_end = step(step(z_t, t, t_mid), t_mid, t_end)
    a_t, a_e = ac(t), ac(t_end)
    alpha, sigma, alpha_e, sigma_e = a_t.sqrt(), (1 - a_t).sqrt(), a_e.sqrt(), (1 - a_e).sqrt()
    ratio = sigma_e / sigma
    x_tilde = (z_end - ratio * z_t) / (alpha_e - ratio * alpha)
    eps_tilde = (z_t - alpha * x_tilde) / sigma
    return eps_tilde if prediction == "epsilon" else alpha * eps_tilde - sigma * x_tilde


class DistillTrainer(DenoiserTrainer):
    """One round of progressive distillation: the student (started from the teacher's weights)
    learns `distill_target` on noised training latents; the rest (batches, EMA, conditioning and its
    dropouts, validation, checkpoints) is `DenoiserTrainer`'s."""

    label = "distill"

    def __init__(self, data, latents, ae_config, ae_hash, *, steps: int, teacher_sha256: str, **kwargs) -> None:
        super().__init__(data, latents, ae_config, ae_hash, **kwargs)
        tensors, teacher_cfg = kwargs["init"][0], kwargs["init"][1]
        self.teacher = build_denoiser(teacher_cfg)
        load_weights(self.teacher, tensors, kwargs["init"][3])
        self.teacher = self.teacher.to(self.info.device).eval().requires_grad_(False)
        self.steps = steps
        T = self.model_cfg.num_train_timesteps
        self.grid = torch.tensor(student_grid(T, steps), dtype=torch.long)
        ac = self.noise_sched.alphas_cumprod.double()
        self.ac_ext = torch.cat([ac, torch.ones(1, dtype=ac.dtype)]).float().to(self.info.device)  # [-1] = 1
        self.settings["distill_steps"] = steps
        earlier = dict(teacher_cfg.extra.get("distillation") or {})
        self.config["distillation"] = {
            "steps": steps,
            "sampler": "ddim",
            "spacing": "trailing",
            "eta": 0.0,
            "teacher_sha256": teacher_sha256,
            "original_sha256": earlier.get("original_sha256", teacher_sha256),
            "rounds": [*earlier.get("rounds", []), steps],
        }

    def loss_on(self, idx: torch.Tensor, net, g: torch.Generator | None) -> torch.Tensor:
        device, cfg = self.info.device, self.cfg
        z0 = self.z_all[idx].to(device)
        b = z0.shape[0]
        noise = torch.randn(z0.shape, generator=g).to(device)
        i = torch.randint(0, self.steps, (b,), generator=g)
        t, t_mid, t_end = (self.grid[2 * i + k].to(device) for k in range(3))
        a, m, lab = self.condition_batch(idx, g)
        a_t = self.ac_ext[t].view(-1, 1, 1, 1, 1)
        z_t = a_t.sqrt() * z0 + (1 - a_t).sqrt() * noise

        def teacher(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            with autocast(device, cfg.precision):
                return self.teacher(x, s, a, m) if lab is None else self.teacher(x, s, a, m, lab)

        with torch.no_grad():
            target = distill_target(teacher, z_t, t, t_mid, t_end, self.ac_ext, self.model_cfg.prediction_type)
        with autocast(device, cfg.precision):
            pred = net(z_t, t, a, m) if lab is None else net(z_t, t, a, m, lab)
        return self.weighted_loss(idx, pred, target, torch.ones(b, device=device))


def distill_latent_diffusion(
    data: PreparedData,
    ae: SliceAutoencoder,
    ae_config: dict[str, Any],
    ae_path: Path,
    teacher_path: Path,
    out_dir: Path,
    *,
    cfg: DistillConfig,
    device: torch.device,
    seed: int = 0,
    console=None,
    dist: DistInfo | None = None,
    resume: str = "never",
    stop: StopFlag | None = None,
    covariates: Path | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Distil the denoiser at `teacher_path` from `cfg.teacher_steps` to `cfg.sampling_steps` DDIM steps,
    one round per halving in `out_dir/rounds/<N>-steps/`; the last round's EMA weights become
    `out_dir/model.safetensors` (+ config.json). `cfg.max_minutes` is shared equally by the rounds,
    `cfg.steps` is each round's optimisation steps. Returns (the last round's result,
    the final checkpoint config)."""
    info = dist or DistInfo(device=device)
    out_dir = Path(out_dir)
    teacher_path = resolve_checkpoint(teacher_path)
    tensors, teacher_cfg = read_denoiser(teacher_path)
    model_cfg = teacher_cfg.model
    if model_cfg.objective == "flow":
        raise LdmError(
            "distill works on eps- and v-objective denoisers; a flow model samples in few steps with "
            "--sampler euler --steps 10"
        )
    if teacher_cfg.extra.get("distillation"):
        done = teacher_cfg.extra["distillation"].get("steps")
        if done is not None and cfg.teacher_steps != int(done):
            raise LdmError(
                f"{teacher_path} is already distilled for {done} DDIM steps: use --teacher-steps {done} to go on from it"
            )
    rounds = distillation_rounds(cfg.teacher_steps, cfg.sampling_steps)
    for n in rounds:
        student_grid(model_cfg.num_train_timesteps, n)  # every round's grid is checked before any work
    ae_hash = file_sha256(ae_path)
    if teacher_cfg.autoencoder_sha256 != ae_hash:
        raise LdmError(f"{teacher_path} was trained on another autoencoder than {ae_path}")
    if "labels" in model_cfg.condition_names and data.labels is None:
        raise LdmError("the teacher is conditioned on label maps: DATA needs labels (imagesTr/ + labelsTr/)")
    conditioning = conditioning_inputs(data, model_cfg.condition_names, covariates, console if info.is_main else None)
    if list(conditioning[2].get("attributes", [])) != teacher_cfg.attributes:
        raise LdmError(
            f"the teacher is conditioned on {teacher_cfg.attributes or 'nothing'} but these data give "
            f"{conditioning[2].get('attributes') or 'nothing'}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / "latents.safetensors"
    if info.is_main:
        latents = encode_dataset(ae, data, cache, ae_hash, console)
    barrier(info)
    if not info.is_main:
        latents = encode_dataset(ae, data, cache, ae_hash, None)
    if list(teacher_cfg.latent_shape) != list(latents.shape[1:]):
        raise LdmError(
            f"{teacher_path} has latent volumes {tuple(teacher_cfg.latent_shape)} but these are {tuple(latents.shape[1:])}"
        )
    if resume == "must":  # --resume: some round must have left a state; rounds not begun start afresh
        from ldmtool.train.state import STATE_NAME

        if not any((out_dir / "rounds").glob(f"*/{STATE_NAME}")):
            raise LdmError(f"--resume: {out_dir} holds no distillation state to resume")
        resume = "auto"
    minutes = None if cfg.max_minutes is None else cfg.max_minutes / len(rounds)
    round_cfg = dataclasses.replace(cfg, max_minutes=minutes, mirror=False)
    source, sha, result, config = teacher_path, file_sha256(teacher_path), None, {}
    t_tensors, t_cfg = tensors, teacher_cfg  # each round's teacher: the previous round's student
    for n in rounds:
        if console is not None and info.is_main:
            console.print(f"distillation round: {2 * n} → {n} DDIM steps", highlight=False)
        trainer = DistillTrainer(
            data,
            latents,
            ae_config,
            ae_hash,
            steps=n,
            teacher_sha256=sha,
            model_cfg=model_cfg,
            train_cfg=round_cfg,
            info=info,
            seed=seed,
            conditioning=conditioning,
            init=(t_tensors, t_cfg, sha, str(source)),
        )
        round_dir = out_dir / "rounds" / f"{n}-steps"
        result = run_training(trainer, round_dir, resume=resume, stop=stop, console=console)
        source = round_dir / "model.safetensors"
        sha = file_sha256(source)
        config = trainer.config
        t_tensors, t_cfg = read_denoiser(source)
    if info.is_main:
        final = {**config, "step": result.history[-1]["step"] if result.history else None}
        save_checkpoint(out_dir / "model.safetensors", t_tensors, final)
        write_config_json(out_dir, final)
    barrier(info)
    return result, config
