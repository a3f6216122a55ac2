"""Typed configuration: dataclasses built from YAML, overridden by flags, saved in checkpoints."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from ldmtool.errors import LdmError


def setting(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A dataclass field whose `help` (what `--help` shows and the docs say) lives in its metadata.

    The one place a setting is described: the CLI reads the text and the default from here
    (`ldmtool.cli.common.opt`), and library functions take their defaults from the class attribute.
    """
    return field(default=default, metadata={"help": help}, **kw)


def help_of(cls: type, name: str) -> str:
    """The help text of setting `name` of dataclass `cls` (KeyError when there is no such field)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise LdmError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


@dataclass
class AutoencoderConfig:
    """The 2D slice autoencoder (MONAI AutoencoderKL) with a slice-position embedding."""

    channels: tuple[int, ...] = setting((16, 32, 64), "Autoencoder channels per level, e.g. 16,32,64.")
    num_res_blocks: int = setting(1, "Residual blocks per level.")
    latent_channels: int = setting(4, "Latent channels.")
    norm_num_groups: int = setting(8, "Group-norm groups (every channel count must be a multiple).")
    attention: bool = setting(False, "Attention in the lowest level (slower; helps large slices).")
    position_features: int = setting(8, "Sinusoidal features of the normalised slice index (0 = off).")
    mask_channel: bool = setting(
        False,
        "Give the encoder the observed-voxel mask as an extra channel "
        "(train-ae turns it on when the data have missing voxels).",
    )
    label_input: bool = setting(
        True,
        "Give the encoder the label channels (true) or the image alone (false); the decoder outputs the "
        "mask either way, and without label input a sampled mask is the one its image shows.",
    )

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if any(c % self.norm_num_groups for c in self.channels):
            raise LdmError(
                f"autoencoder channels {self.channels} must be multiples of norm_num_groups={self.norm_num_groups}"
            )
        if self.position_features % 2:
            raise LdmError("position_features must be even (sin/cos pairs)")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)


@dataclass
class DenoiserConfig:
    """The 3D denoising UNet (MONAI DiffusionModelUNet) on latent volumes C×D×h×w."""

    channels: tuple[int, ...] = setting((32, 64, 64), "UNet channels per level, e.g. 32,64,64.")
    attention_levels: tuple[bool, ...] | None = setting(
        None, "Attention per level (default: in the lowest level only)."
    )
    num_res_blocks: int = setting(1, "Residual blocks per level.")
    norm_num_groups: int = setting(8, "Group-norm groups (every channel count must be a multiple).")
    num_head_channels: int = setting(16, "Channels per attention head.")
    objective: str = setting(
        "eps", "eps | v | flow (rectified flow: velocity x_0 − noise, sampled with --sampler euler)."
    )
    num_train_timesteps: int = setting(1000, "Diffusion timesteps of training.")
    schedule: str = setting("scaled_linear_beta", "Noise schedule: linear_beta | scaled_linear_beta | cosine.")
    beta_start: float = setting(0.0015, "First beta of the (scaled) linear schedule.")
    beta_end: float = setting(0.0195, "Last beta of the (scaled) linear schedule.")
    zero_terminal_snr: bool = setting(
        False,
        "Rescale the schedule so that its last step is pure noise (Lin et al. 2024; needs objective v): "
        "the (scaled) linear schedules keep a trace of the data at t = T, which a large latent volume's "
        "many voxels add up to a visible layout that sampling from pure noise never has.",
    )
    condition_on: str | tuple[str, ...] = setting(
        "none",
        "none, or a comma list of what to condition on: labels (the label map itself: mask-to-image, "
        "`sample --labels DIR`), lesion (volume/centroid/extent, from the labels) and/or columns of the "
        "train-ldm --covariates table, e.g. lesion,age,sex.",
    )
    coordinates: bool = setting(True, "Feed voxel coordinates (z, y, x in [-1, 1]) as extra input channels.")
    label_branch: str = setting(
        "concat",
        "How --condition-on labels enters the denoiser: concat (the map on the latent grid as extra input "
        "channels) | controlnet (a MONAI ControlNet branch on the map adding residuals to the UNet's blocks).",
    )
    label_detail: int = setting(
        1,
        "With --condition-on labels: how much of the map inside each latent voxel the denoiser sees: 1 = the "
        "fraction of each class under the voxel; k (a divisor of the autoencoder's downsampling factor; that "
        "factor = every voxel) = those fractions in each of its k×k in-plane sub-squares, k² channels per "
        "class, so that boundaries finer than the latent grid reach the denoiser.",
    )

    def __post_init__(self) -> None:
        self.condition_on = _condition_list(self.condition_on)
        self.channels = tuple(int(c) for c in self.channels)
        if self.attention_levels is None:
            self.attention_levels = tuple([False] * (len(self.channels) - 1) + [True])
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if len(self.attention_levels) != len(self.channels):
            raise LdmError("denoiser attention_levels must have one entry per channels entry")
        if any(c % self.norm_num_groups for c in self.channels):
            raise LdmError(
                f"denoiser channels {self.channels} must be multiples of norm_num_groups={self.norm_num_groups}"
            )
        _check_choice("objective", self.objective, ("eps", "v", "flow"))
        _check_choice("schedule", self.schedule, ("linear_beta", "scaled_linear_beta", "cosine"))
        _check_choice("label_branch", self.label_branch, ("concat", "controlnet"))
        _check_range("label_detail", self.label_detail, 1)
        if self.zero_terminal_snr and self.objective != "v":
            raise LdmError(
                f"denoiser zero_terminal_snr needs objective v (an {self.objective} denoiser cannot be "
                "trained at pure noise); set objective: v"
            )

    def to_dict(self) -> dict[str, Any]:
        """The stored form; `label_branch`, `label_detail` and `zero_terminal_snr` only when not the default, so the configs of models
        without it (and the checkpoints written before it existed) read and compare as they were."""
        out = {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if out["label_branch"] == "concat":
            del out["label_branch"]
        if out["label_detail"] == 1:
            del out["label_detail"]
        if not out["zero_terminal_snr"]:
            del out["zero_terminal_snr"]
        return out

    @property
    def condition_names(self) -> tuple[str, ...]:
        """What the model is conditioned on: "labels", "lesion" and/or covariate columns (empty: nothing)."""
        return () if self.condition_on == "none" else tuple(self.condition_on.split(","))

    @property
    def prediction_type(self) -> str:
        return {"eps": "epsilon", "v": "v_prediction", "flow": "flow"}[self.objective]

    def schedule_args(self) -> dict:
        if self.schedule == "cosine":
            return {}
        return {"beta_start": self.beta_start, "beta_end": self.beta_end}


def _condition_list(value: str | tuple[str, ...]) -> str:
    """`condition_on` as stored: "none" or the names joined by commas (a YAML list or a comma string)."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names]
    if names == ["none"] or not value:
        return "none"
    if any(not n or n == "none" for n in names) or len(set(names)) != len(names):
        raise LdmError(
            f"condition_on must be none or a list of distinct names (lesion and/or covariate columns); got {value!r}"
        )
    return ",".join(names)


def _check_range(
    name: str,
    value: float | None,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """One-line error naming `name` when `value` lies outside [low, high] (open ends as asked;
    no upper end when `high` is None; None values pass: the setting is off)."""
    if value is None:
        return
    ok = (value > low if low_open else value >= low) and (
        high is None or (value < high if high_open else value <= high)
    )
    if not ok:
        what = (
            f"{'>' if low_open else '≥'} {low:g}"
            if high is None
            else f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        )
        raise LdmError(f"{name} must be {what}; got {value!r}")


@dataclass
class LoopConfig:
    """Settings of the one training loop (`ldmtool.train.loop`), shared by every trainer's config."""

    epochs: int = setting(10, "Passes over the training data.")
    steps: int | None = setting(None, "Optimisation steps (wins over --epochs).")
    batch_size: int = setting(32, "Training items per batch (per process).")
    lr: float = setting(2e-4, "Learning rate.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    warmup_steps: int = setting(100, "Steps of linear learning-rate warm-up.")
    max_minutes: float | None = setting(None, "Stop after this many minutes (the best checkpoint so far is kept).")
    val_fraction: float = setting(
        0.1, "Fraction of cases held out for validation (it picks the best checkpoint where the trainer keeps one)."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "auto", "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16."
    )
    checkpoint_every: int | None = setting(
        None,
        "Save the resumable training state every N steps (also every checkpoint_minutes of wall time and at the end).",
    )
    checkpoint_minutes: float = setting(
        10.0, "Save the resumable training state at least this often in wall time, so a kill loses little work."
    )

    def __post_init__(self) -> None:
        _check_choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        for name in ("epochs", "steps", "batch_size", "checkpoint_every"):
            _check_range(name, getattr(self, name), 1)
        _check_range("warmup_steps", self.warmup_steps, 0)
        _check_range("lr", self.lr, 0, low_open=True)
        _check_range("weight_decay", self.weight_decay, 0)
        _check_range("max_minutes", self.max_minutes, 0, low_open=True)
        _check_range("checkpoint_minutes", self.checkpoint_minutes, 0, low_open=True)
        _check_range("val_fraction", self.val_fraction, 0, 1, high_open=True)


@dataclass
class AETrainConfig(LoopConfig):
    """Training of the slice autoencoder (YAML section `ae_train`); best checkpoint: lowest held-out loss."""

    epochs: int = setting(LoopConfig.epochs, "Passes over all training slices.")
    batch_size: int = setting(LoopConfig.batch_size, "Slices per batch (per process).")


@dataclass
class LDMTrainConfig(LoopConfig):
    """Training of the latent denoiser (YAML section `ldm_train`); the checkpoint is the latest EMA
    (`keep: best`: the EMA with the lowest held-out loss)."""

    epochs: int = setting(100, "Passes over the training volumes.")
    batch_size: int = setting(4, "Latent volumes per batch (per process).")
    ema_decay: float = setting(0.999, "EMA decay of the weights used for sampling (the checkpoint is an EMA).")
    keep: str = setting(
        "latest",
        "Which EMA weights model.safetensors holds: latest, or best (the lowest held-out loss of the "
        "evaluations; last.safetensors then holds the latest). best needs held-out volumes (val_fraction > 0).",
    )
    cfg_dropout: float = setting(0.1, "Classifier-free guidance: drop all conditioning this often.")
    min_snr_gamma: float | None = setting(5.0, "Min-SNR loss weighting (Hang et al. 2023); null = off.")
    lesion_weight: float = setting(
        0.0, "Extra loss weight of latent voxels over lesions (±1 latent voxel): they weigh 1 + this."
    )
    mirror: bool = setting(
        False,
        "Also train on a left–right mirrored copy of every training volume (twice the data for roughly "
        "symmetric anatomy; 3D volumes whose classes do not name a side).",
    )
    flow_timesteps: str = setting(
        "uniform",
        "Training times of a flow-objective denoiser: uniform, or logit-normal (t/T = sigmoid of a normal "
        "draw, Esser et al. 2024 / MONAI RFlowScheduler: more training where the path is hardest to learn).",
    )
    flow_logit_normal: tuple[float, float] = setting(
        (0.0, 1.0), "Location and scale of the normal draw of --flow-timesteps logit-normal."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("flow_timesteps", self.flow_timesteps, ("uniform", "logit-normal"))
        _check_choice("keep", self.keep, ("latest", "best"))
        if self.keep == "best" and not self.val_fraction > 0:
            raise LdmError("ldm_train.keep: best picks by held-out loss; set val_fraction above 0")
        if len(self.flow_logit_normal) != 2 or not self.flow_logit_normal[1] > 0:
            raise LdmError(f"flow_logit_normal: give a location and a positive scale; got {self.flow_logit_normal}")
        _check_range("ema_decay", self.ema_decay, 0, 1, high_open=True)
        _check_range("cfg_dropout", self.cfg_dropout, 0, 1)
        _check_range("min_snr_gamma", self.min_snr_gamma, 0, low_open=True)
        _check_range("lesion_weight", self.lesion_weight, 0)


@dataclass
class DistillConfig(LDMTrainConfig):
    """`ldmtool distill` (YAML section `distill`): progressive distillation of a latent denoiser,
    one round per halving of the DDIM steps; `steps` and `max_minutes` are per round and in all."""

    sampling_steps: int = setting(4, "DDIM steps the distilled model samples in (a power of two).")
    teacher_steps: int = setting(64, "DDIM steps of the first round's teacher (sampling_steps × a power of two).")
    steps: int | None = setting(500, "Optimisation steps of each round.")
    lr: float = setting(1e-4, "Learning rate.")
    warmup_steps: int = setting(20, "Steps of linear learning-rate warm-up (each round).")
    ema_decay: float = setting(0.995, "EMA decay of the weights of each round's student.")
    max_minutes: float | None = setting(None, "Stop after this many minutes in all (shared equally by the rounds).")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("sampling_steps", self.sampling_steps, 1)
        _check_range("teacher_steps", self.teacher_steps, 2)


@dataclass
class SegTrainConfig(LoopConfig):
    """Training of a segmenter (YAML section `seg_train`); best checkpoint: highest mean held-out Dice."""

    epochs: int = setting(LoopConfig.epochs, "Passes over the training slices (2D) or volumes (3D).")
    batch_size: int = setting(LoopConfig.batch_size, "Slices (2D) or volumes (3D) per batch.")


@dataclass
class AELossConfig:
    """Loss of the slice autoencoder: L1 image + label CE/Dice + KL (+ optional SSIM)."""

    kl_weight: float = setting(1e-6, "KL weight (~1e-6).")
    label_weight: float = setting(1.0, "Weight of CE + Dice on the label channels.")
    ssim_weight: float = setting(0.0, "Weight of an optional (1 - SSIM) term on the image channel.")
    lesion_oversample: float = setting(0.5, "Fraction of each batch drawn from slices holding a rare label.")
    latent_noise: float = setting(
        0.0,
        "Train the decoder on latents + this many latent std of Gaussian noise (robust decoding of diffusion samples).",
    )
    adversarial_weight: float = setting(
        0.0,
        "Weight of a patch-adversarial term (MONAI PatchDiscriminator, least squares) on the image channels; 0 = off.",
    )
    adversarial_start: int = setting(
        0, "Optimisation steps on the other terms alone before the discriminator and its term start."
    )

    def __post_init__(self) -> None:
        if self.latent_noise < 0 or not 0 <= self.lesion_oversample <= 1:
            raise LdmError("ae_loss: latent_noise must be ≥ 0 and lesion_oversample in [0, 1]")
        _check_range("adversarial_weight", self.adversarial_weight, 0)
        _check_range("adversarial_start", self.adversarial_start, 0)


@dataclass
class SampleConfig:
    """Settings of `ldmtool sample` (YAML section `sample`)."""

    n: int = setting(8, "Number of samples (of the whole job, all shards).")
    sampler: str = setting(
        "ddim", "ddim | ddpm | dpmpp2m | dpmpp3m (DPM-Solver++) | unipc2 | unipc3 (UniPC) | euler (flow models)."
    )
    steps: int = setting(50, "Sampling steps.")
    eta: float = setting(0.0, "DDIM eta, 0 = deterministic.")
    batch_size: int = setting(4, "Latent volumes sampled at once.")
    decode_batch: int = setting(64, "Slices decoded at once.")
    format: str = setting("nifti", "nifti | dicom | png (2D models; their default is the training images' format).")
    guidance: float = setting(1.0, "Classifier-free guidance scale (with --condition).")
    spacing: str = setting(
        "auto", "Timestep spacing: auto (the sampler's own) | trailing | leading | linspace | logsnr | karras."
    )
    precision: str = setting("auto", "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16.")
    compile: bool = setting(False, "torch.compile the denoiser (pays off for large jobs on GPU).")
    max_memory_gb: float | None = setting(
        None, "Memory limit in GiB for one batch (default: free memory); checked before any work."
    )
    reject_memorized: float | None = setting(
        None,
        "Discard (and count in provenance) samples whose highest SSIM to a training volume exceeds this, "
        "e.g. 0.95; needs --train.",
    )

    def __post_init__(self) -> None:
        _check_choice("--sampler", self.sampler, ("ddim", "ddpm", "dpmpp2m", "dpmpp3m", "unipc2", "unipc3", "euler"))
        _check_choice("--spacing", self.spacing, ("auto", "trailing", "leading", "linspace", "logsnr", "karras"))
        _check_choice("--precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _check_choice("--format", self.format, ("nifti", "dicom", "png"))
        _check_range("--guidance", self.guidance, 0)
        _check_range("--eta", self.eta, 0)
        _check_range("--reject-memorized", self.reject_memorized, 0, 1, low_open=True)
        for flag, value in (("--n", self.n), ("--batch-size", self.batch_size), ("--decode-batch", self.decode_batch)):
            if value < 1:
                raise LdmError(f"{flag} must be at least 1; got {value}")


@dataclass
class InpaintConfig:
    """Settings of `ldmtool inpaint` (YAML section `inpaint`)."""

    method: str = setting(
        "repaint",
        "repaint (the latent outside the region replaced by the input's, noised to each step's level) | "
        "guidance (impute's latent self-guidance on the voxels outside the region).",
    )
    steps: int = setting(50, "Denoising steps.")
    sampler: str = setting("ddim", "ddim | ddpm | dpmpp2m.")
    eta: float = setting(0.0, "DDIM eta (0 = deterministic given the seed).")
    resample: int = setting(
        1,
        "--method repaint, --sampler ddim or ddpm: every step taken this many times, noised back to its level "
        "in between (RePaint's resampling), so that the region's new content follows its surroundings; "
        "that many times the denoiser calls.",
    )
    guidance: float = setting(1.0, "Classifier-free guidance scale of the conditions (label map, --condition).")
    self_guidance: float = setting(0.5, "Self-guidance strength of --method guidance (as impute --guidance).")
    margin: int = setting(
        2,
        "--method repaint: latent voxels regenerated around the region (each one autoencoder downsampling "
        "factor of voxels in-plane, one slice across), so that the new content is drawn with room to blend "
        "into its surroundings; only the region itself is written.",
    )
    grow: int = setting(
        1,
        "With --label: the model is asked to draw the class over the region grown by this many voxels (the "
        "input's grid), so that the new content, whose edge the decoder softens, fills the region up to its "
        "border; only the region itself is written and labelled (0: drawn over the region alone, the lesion "
        "then reads smaller than the region).",
    )
    label_from: str = setting(
        "region",
        "With --label: region (the whole region becomes that class) | painted (only the region's voxels "
        "the autoencoder's decoder reads as that class in the new image; the rest keep their class).",
    )
    strength: float = setting(
        1.0,
        "--method repaint: how far the region's start is noised (SDEdit): 1 = from pure noise; below 1 the "
        "region starts from the input's own content, or from --init's, noised to that fraction of the "
        "schedule, and round(steps × strength) steps are run, so the result keeps that content's layout.",
    )
    lesion_margin: float = setting(
        6.0,
        "--lesion-from: the least distance (mm) between a moved lesion and the edge of the head it is moved into.",
    )
    keep_detail: bool = setting(
        False,
        "Write into the region the start image (the input's own content, or --init's) plus what the model "
        "changed (its decoded result minus the autoencoder's reconstruction of that start) instead of the "
        "decoded result itself: the autoencoder's reconstruction error cancels, and the start's fine detail "
        "and noise stay where the model changed nothing. One channel only.",
    )

    def __post_init__(self) -> None:
        _check_choice("--method", self.method, ("repaint", "guidance"))
        _check_range("--strength", self.strength, 0, 1, low_open=True)
        if not self.lesion_margin >= 0:
            raise LdmError(f"--lesion-margin must be ≥ 0 mm; got {self.lesion_margin:g}")
        if self.strength < 1 and self.method != "repaint":
            raise LdmError(f"--strength {self.strength:g} needs --method repaint (it starts the replacement part-way)")
        _check_choice("--label-from", self.label_from, ("region", "painted"))
        _check_choice("--sampler", self.sampler, ("ddim", "ddpm", "dpmpp2m"))
        _check_range("--steps", self.steps, 1)
        _check_range("--resample", self.resample, 1)
        if self.resample > 1 and (self.method != "repaint" or self.sampler not in ("ddim", "ddpm")):
            raise LdmError(
                f"--resample {self.resample} is RePaint's resampling: it needs --method repaint and --sampler ddim "
                f"or ddpm (got {self.method}, {self.sampler})"
            )
        _check_range("--guidance", self.guidance, 0)
        _check_range("--self-guidance", self.self_guidance, 0)
        _check_range("--margin", self.margin, 0)
        _check_range("--grow", self.grow, 0)


@dataclass
class ImputeConfig:
    """Settings of `ldmtool impute` (YAML section `impute`) and of the imputation functions."""

    samples: int = setting(
        1, "Independent imputations; above 1 the output is their mean and a per-voxel std map is written."
    )
    guidance: float = setting(
        0.5,
        "Self-guidance strength: the observed-voxel gradient at this multiple of the score's norm "
        "(0.25-0.5 did best on the demo phantoms; larger values overshoot).",
    )
    steps: int = setting(50, "Denoising steps.")
    sampler: str = setting("ddim", "ddim | ddpm | dpmpp2m | dpmpp3m | unipc2 | unipc3.")
    eta: float = setting(0.0, "DDIM eta (0 = deterministic given the seed).")
    batch_size: int = setting(4, "Imputations run at once.")
    init: str = setting(
        "noise",
        "noise | interpolation: start from pure noise, or from the volume with its missing voxels linearly "
        "interpolated along the slice axis, encoded and noised to --strength of the schedule (SDEdit), "
        "then self-guided as from noise.",
    )
    strength: float = setting(
        0.5,
        "With --init interpolation: how far into the noise schedule to start (1 = pure noise, small = "
        "close to the interpolation); round(--steps × strength) steps run.",
    )

    def __post_init__(self) -> None:
        _check_choice("--sampler", self.sampler, ("ddim", "ddpm", "dpmpp2m", "dpmpp3m", "unipc2", "unipc3"))
        _check_choice("--init", self.init, ("noise", "interpolation"))
        _check_range("--strength", self.strength, 0, 1, low_open=True)
        for flag, value in (("--samples", self.samples), ("--steps", self.steps), ("--batch-size", self.batch_size)):
            if value < 1:
                raise LdmError(f"{flag} must be at least 1; got {value}")
        _check_range("--guidance", self.guidance, 0)
        _check_range("--eta", self.eta, 0)


@dataclass
class SegmentConfig:
    """Settings of `ldmtool segment` (YAML section `segment`) and of `Segmenter.predict`."""

    steps: int = setting(1, "DDIM steps of LDSeg (the UNet baseline takes one pass).")
    samples: int = setting(1, "Draws per input (LDSeg); > 1 adds mean probabilities and an uncertainty map.")
    batch_size: int = setting(
        16, "Slices per network call (2D models); consecutive inputs with the same slice size share one."
    )
    precision: str = setting("auto", "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16.")
    dicom_seg: bool = setting(
        True, "For DICOM inputs also write CASE_seg.dcm, a DICOM SEG referencing the source series."
    )

    def __post_init__(self) -> None:
        _check_choice("--precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        for flag, value in (("--steps", self.steps), ("--samples", self.samples), ("--batch-size", self.batch_size)):
            if value < 1:
                raise LdmError(f"{flag} must be at least 1; got {value}")


@dataclass
class SegModelConfig:
    """The latent diffusion segmenter (LDSeg) or its deterministic UNet baseline.

    LDSeg: a label encoder (one-hot mask → latent, ending in a parameter-free normalisation so the
    label latent is standardised), an image encoder (image → latent of the same size, attention in
    its lowest level), a time-conditioned UNet denoiser on [noisy label latent, image latent], and
    a label decoder (latent → class logits). `dims` 2 works slice by slice on any volume; 3 on
    whole volumes (small ones: e.g. 128×128×256 → 8×8×16 with five levels).
    """

    arch: str = setting(
        "ldseg",
        "ldseg (latent diffusion) | unet (deterministic MONAI UNet baseline of similar size, same loss and schedule).",
    )
    dims: int = setting(2, "2: slice by slice (any volume); 3: whole volumes (small ones).")
    channels: tuple[int, ...] = setting(
        (16, 32, 64), "Encoder/decoder channels per level, e.g. 16,32,64 (downsampling 2^(levels-1))."
    )
    latent_channels: int = setting(4, "Label/image latent channels.")
    num_res_blocks: int = setting(1, "Residual blocks per level.")
    norm_num_groups: int = setting(8, "Group-norm groups (every channel count must be a multiple).")
    attention: bool = setting(True, "Attention in the image encoder's lowest level.")
    denoiser_channels: tuple[int, ...] = setting((32, 64), "LDSeg denoiser UNet channels per level, e.g. 32,64.")
    num_head_channels: int = setting(16, "Channels per attention head.")
    num_train_timesteps: int = setting(1000, "Diffusion timesteps of training.")
    schedule: str = setting("cosine", "Noise schedule: linear_beta | scaled_linear_beta | cosine.")
    decoder_input: str = setting(
        "x0",
        "x0: ẑ0 = (z_t − √(1−ᾱ)ε̂)/√ᾱ, clamped, what DDIM hands the decoder | paper: ẑ0 = z_t − ε̂.",
    )

    def __post_init__(self) -> None:
        _check_choice("arch", self.arch, ("ldseg", "unet"))
        _check_choice("dims", self.dims, (2, 3))
        _check_choice("schedule", self.schedule, ("linear_beta", "scaled_linear_beta", "cosine"))
        _check_choice("decoder_input", self.decoder_input, ("paper", "x0"))
        self.channels = tuple(int(c) for c in self.channels)
        self.denoiser_channels = tuple(int(c) for c in self.denoiser_channels)
        for name, chans in (("channels", self.channels), ("denoiser_channels", self.denoiser_channels)):
            if not chans or any(c % self.norm_num_groups for c in chans):
                raise LdmError(f"segmenter {name} {chans} must be multiples of norm_num_groups={self.norm_num_groups}")
        if self.latent_channels < 1:
            raise LdmError("latent_channels must be at least 1")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)


@dataclass
class SegLossConfig:
    """L = CE + dice_weight · Dice (on the decoded labels) + mse_weight · MSE(ε̂, ε)."""

    dice_weight: float = setting(2.0, "γ: weight of the Dice term (loss = CE + γ·Dice + λ·MSE).")
    mse_weight: float = setting(1.0, "λ: weight of the noise MSE term (LDSeg only).")
    oversample: float = setting(0.5, "Share of each 2D batch drawn from slices holding the rarest class.")

    def __post_init__(self) -> None:
        if min(self.dice_weight, self.mse_weight) < 0 or not 0 <= self.oversample <= 1:
            raise LdmError("seg_loss: weights must be ≥ 0 and oversample in [0, 1]")


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value cut to `limit` characters (a YAML alias can expand to megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " …" + text[-3:]


def _number(value: Any) -> float | None:
    """A YAML number, or a string PyYAML left unparsed that is one (`1e-3` is a string in YAML 1.1)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _convert(tp: Any, value: Any, name: str = "value") -> Any:
    """Convert a YAML/JSON value to the annotated dataclass field type, strictly.

    Nothing is coerced silently: 2.7 or `true` for an integer field, a word for a number, a number
    for a flag are errors naming the field. Strings that spell a number (`1e-3`) are numbers.
    """
    if isinstance(tp, str):
        tp = eval(tp, vars(typing) | globals())  # annotations are strings under `from __future__`
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for alt in args[:-1]:  # the first type the value fits (`str | tuple[str, ...]`)
            try:
                return _convert(alt, value, name)
            except LdmError:
                pass
        return _convert(args[-1], value, name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise LdmError(f"{name} must be a list; got {_short(value)}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, name) for v in value)
        if len(args) != len(value):
            raise LdmError(f"{name} must have {len(args)} entries; got {_short(value)}")
        return tuple(_convert(a, v, name) for a, v in zip(args, value))
    if tp is bool:
        if not isinstance(value, bool):
            raise LdmError(f"{name} must be true or false; got {_short(value)}")
        return value
    if tp is int:
        num = _number(value)
        if num is None or not float(num).is_integer():
            raise LdmError(f"{name} must be a whole number; got {_short(value)}")
        return int(num)
    if tp is float:
        num = _number(value)
        if num is None:
            raise LdmError(f"{name} must be a number; got {_short(value)}")
        return float(num)
    if tp is str and not isinstance(value, str):
        raise LdmError(f"{name} must be text; got {_short(value)}")
    return value


def from_dict(cls: type, data: dict, section: str | None = None) -> Any:
    """Build dataclass `cls` from a (possibly nested) dict; unknown keys are an error.

    `section` (a YAML section name) prefixes field names in errors: `ae_train.epochs must be …`.
    """
    if not isinstance(data, dict):
        raise LdmError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - set(names)))
    if unknown:
        hint = _did_you_mean(unknown[0], names)
        raise LdmError(
            f"unknown {cls.__name__} setting(s): {', '.join(_short(u, 40) for u in unknown)}{hint}; "
            f"allowed: {', '.join(names)}"
        )
    kwargs = {k: _convert(names[k].type, v, f"{section}.{k}" if section else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise LdmError(f"bad {cls.__name__} settings: {exc}") from None


def to_dict(obj: Any) -> Any:
    """JSON-safe dict of a dataclass (tuples become lists); a dataclass with its own `to_dict` (e.g.
    PreprocessConfig, which leaves out unset optional keys so older readers accept it) uses that."""
    if dataclasses.is_dataclass(obj) and callable(getattr(type(obj), "to_dict", None)):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# Every section a config file may hold (one file can serve all commands).
SECTIONS = (
    "preprocess",
    "autoencoder",
    "ae_loss",
    "ae_train",
    "denoiser",
    "ldm_train",
    "seg_model",
    "seg_loss",
    "seg_train",
    "sample",
    "impute",
    "inpaint",
    "segment",
    "evaluate",
)


def _did_you_mean(name: str, allowed) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), list(allowed), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def load_yaml(path: Path | None) -> dict:
    """Read a YAML config file into a dict (empty when no path); unknown sections are an error."""
    if path is None:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LdmError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LdmError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LdmError(f"config file {p} must hold a mapping of sections")
    unknown = sorted(map(str, set(data) - set(SECTIONS)))
    if unknown:
        raise LdmError(
            f"config file {p}: unknown section {_short(unknown[0], 40)}{_did_you_mean(unknown[0], SECTIONS)}; "
            f"sections are {', '.join(SECTIONS)}"
        )
    for name, body in data.items():
        if body is not None and not isinstance(body, dict):
            raise LdmError(f"config file {p}: section {name} must be a mapping of settings; got {_short(body)}")
    return data


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge `overrides` into `base`; `None` values in overrides are ignored (flag not given)."""
    out = dict(base)
    for k, v in overrides.items():
        if v is None:
            continue
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        elif isinstance(v, dict):
            out[k] = merge({}, v)
        else:
            out[k] = v
    return out


def dumps(obj: Any) -> str:
    return json.dumps(to_dict(obj), indent=2, sort_keys=True)


__all__ = [
    "AutoencoderConfig",
    "DenoiserConfig",
    "LoopConfig",
    "AETrainConfig",
    "LDMTrainConfig",
    "SegTrainConfig",
    "AELossConfig",
    "SampleConfig",
    "ImputeConfig",
    "InpaintConfig",
    "SegmentConfig",
    "SegModelConfig",
    "SegLossConfig",
    "EvaluateConfig",
    "setting",
    "help_of",
    "from_dict",
    "to_dict",
    "load_yaml",
    "merge",
    "dumps",
    "field",
    "Literal",
]


CRITERIA = ("fidelity", "diversity", "speed", "utility", "robustness", "privacy", "condition")
DEFAULT_CRITERIA = CRITERIA[:6]  # `condition` needs a segmenter: computed when asked for or --segmenter is given


@dataclass
class EvaluateConfig:
    """Settings of `ldmtool evaluate` (YAML section `evaluate`)."""

    only: tuple[str, ...] = setting(
        DEFAULT_CRITERIA, "Criteria to compute, e.g. fidelity,privacy (and condition, added by --segmenter)."
    )
    channel: str = setting("", "The contrast to evaluate in sets of several channels per case (by name, e.g. flair).")
    views: tuple[str, ...] = setting(("axial", "coronal", "sagittal"), "2D views to embed: axial,coronal,sagittal.")
    slices_per_view: int = setting(3, "2D images per view and volume (spread over the central 60%).")
    image_size: int = setting(128, "Views are resized to this many pixels before the feature network.")
    k: int = setting(3, "Nearest neighbours of (improved) precision/recall.")
    q: int = setting(100, "Synthetic samples per privacy repeat.")
    repeats: int = setting(10, "Privacy repeats.")
    flag_ssim: float = setting(0.95, "Flag synthetic volumes whose max SSIM to a training volume is above this.")
    pairs: int = setting(4, "Most suspicious synthetic/train pairs shown as PNGs.")
    nn_candidates: int = setting(
        16, "Training volumes re-ranked by exact SSIM per privacy query after the coarse stage (0 = exhaustive)."
    )
    nn_margin: float = setting(0.05, "Re-rank only candidates within this coarse SSIM of the best one.")
    nn_recall_check: int = setting(
        3, "Privacy queries searched exhaustively too, to report the recall of the nearest neighbour."
    )
    audit_steps: int = setting(
        200, "Training steps of the contrastive encoder of the memorisation audit (0 = no audit)."
    )
    radiomics: bool = setting(True, "With fidelity: radiomic attributes of real and synthetic volumes (FRD, SaD/PaD).")
    cache_dir: str = setting(
        "", "Per-volume feature cache ('' = $LDMTOOL_CACHE_DIR or ~/.cache/ldmtool/evaluate; 'none' = off)."
    )
    seg_channels: tuple[int, ...] = setting((16, 32, 64), "Downstream UNet / classifier channels per level.")
    seg_steps: int = setting(300, "Downstream training steps.")
    seg_batch_size: int = setting(16, "Downstream batch size (slices or volumes).")
    seg_lr: float = setting(3e-3, "Downstream learning rate.")
    real_share: float = setting(
        0.75,
        "Share of each downstream batch taken from the real cases when real and synthetic ones are mixed "
        "(0 = every case equally likely, so many synthetic cases crowd the real ones out).",
    )
    epsilon: float = setting(0.03, "FGSM/PGD L∞ budget on [0, 1] intensities.")
    pgd_steps: int = setting(5, "PGD steps.")
    noise_sigma: float = setting(0.05, "Gaussian noise std on [0, 1] intensities.")
    deepfool_iters: int = setting(5, "DeepFool iterations.")
    max_cases: int | None = setting(None, "Read at most this many volumes per set.")
    utility_curve: tuple[int, ...] = setting(
        (), "Real training sizes N of the augmentation curve, e.g. 10,20,50 (empty = no curve)."
    )
    curve_ratios: tuple[float, ...] = setting(
        (1.0, 2.0, 5.0), "Synthetic cases added per real case on the augmentation curve, e.g. 1,2,5."
    )
    curve_seeds: int = setting(3, "Repeats (random real/synthetic subsets and model seeds) per curve point.")

    def __post_init__(self) -> None:
        self.only = tuple(self.only)
        self.views = tuple(self.views)
        self.seg_channels = tuple(int(c) for c in self.seg_channels)
        self.utility_curve = tuple(int(n) for n in self.utility_curve)
        self.curve_ratios = tuple(float(r) for r in self.curve_ratios)
        bad = [c for c in self.only if c not in CRITERIA]
        if bad or not self.only:
            raise LdmError(
                f"--only takes a comma-separated subset of {', '.join(CRITERIA)}; got {', '.join(self.only) or 'nothing'}"
            )
        bad = [v for v in self.views if v not in ("axial", "coronal", "sagittal")]
        if bad or not self.views:
            raise LdmError(
                f"--views takes a comma-separated subset of axial, coronal, sagittal; got {', '.join(self.views) or 'nothing'}"
            )
        for name in (
            "slices_per_view",
            "image_size",
            "k",
            "q",
            "repeats",
            "seg_steps",
            "seg_batch_size",
            "pgd_steps",
            "deepfool_iters",
        ):
            if getattr(self, name) < 1:
                raise LdmError(f"{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if not 0 < self.flag_ssim <= 1:
            raise LdmError(f"flag-ssim must be in (0, 1]; got {self.flag_ssim}")
        if min(self.nn_candidates, self.nn_recall_check, self.nn_margin, self.audit_steps) < 0:
            raise LdmError("nn-candidates, nn-recall-check, nn-margin and audit-steps must be at least 0")
        if not 0 <= self.real_share <= 1:
            raise LdmError(f"real-share must be in [0, 1]; got {self.real_share:g}")
        if self.epsilon < 0 or self.noise_sigma < 0:
            raise LdmError("epsilon and noise-sigma must be non-negative")
        if len(self.seg_channels) < 2:
            raise LdmError("seg-channels needs at least two levels, e.g. 8,16,32")
        self._check_curve()

    def _check_curve(self) -> None:
        """One-line errors for the augmentation-curve settings."""
        sizes = ",".join(map(str, self.utility_curve))
        if any(n < 1 for n in self.utility_curve) or len(set(self.utility_curve)) != len(self.utility_curve):
            raise LdmError(f"utility-curve sizes must be distinct whole numbers ≥ 1, e.g. 10,20,50; got {sizes}")
        if not self.curve_ratios or any(not r > 0 for r in self.curve_ratios):
            ratios = ",".join(f"{r:g}" for r in self.curve_ratios) or "nothing"
            raise LdmError(f"curve-ratios must be one or more numbers > 0, e.g. 1,2,5; got {ratios}")
        if self.curve_seeds < 1:
            raise LdmError(f"curve-seeds must be at least 1; got {self.curve_seeds}")
