"""`ldmtool sample --ae AE --ldm LDM --n N --out DIR`: generate image+mask volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.config import SampleConfig

SCALE = "Scale-out and speed"
MASK = "Mask-to-image"


def sample(
    ctx: typer.Context,
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder checkpoint (file or folder).")],
    ldm: Annotated[Path, typer.Option("--ldm", help="Latent diffusion checkpoint (file or folder).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (nnU-Net layout + provenance/ + montage.png).")
    ],
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (section `sample`); flags override it.")
    ] = None,
    n: Annotated[Optional[int], common.opt(SampleConfig, "n", "--n")] = None,
    sampler: Annotated[Optional[str], common.opt(SampleConfig, "sampler")] = None,
    steps: Annotated[Optional[int], common.opt(SampleConfig, "steps")] = None,
    eta: Annotated[Optional[float], common.opt(SampleConfig, "eta")] = None,
    spacing: Annotated[Optional[str], common.opt(SampleConfig, "spacing")] = None,
    batch_size: Annotated[Optional[int], common.opt(SampleConfig, "batch_size")] = None,
    decode_batch: Annotated[Optional[int], common.opt(SampleConfig, "decode_batch")] = None,
    format: Annotated[Optional[str], common.opt(SampleConfig, "format", "--format")] = None,
    condition: Annotated[
        Optional[list[str]],
        typer.Option(
            help="An attribute the model was conditioned on: lesion_volume=5 (ml), a covariate "
            "age=40, a two-level one by name sex=F; repeatable."
        ),
    ] = None,
    class_name: Annotated[
        Optional[str],
        typer.Option(
            "--class",
            help="The class to sample, for a model trained with --condition-on class (the same as --condition class=NAME).",
        ),
    ] = None,
    guidance: Annotated[Optional[float], common.opt(SampleConfig, "guidance")] = None,
    guide_ldm: Annotated[
        Optional[Path],
        typer.Option(
            "--guide-ldm",
            help="A weaker denoiser of the same latents (train-ldm on the same data and autoencoder, shorter "
            "or smaller): --guidance G then extrapolates away from it (autoguidance), conditioned or not.",
        ),
    ] = None,
    labels: Annotated[
        Optional[Path],
        typer.Option(
            "--labels",
            help="Mask-to-image: a folder of label maps (or an nnU-Net data set: its labelsTr/); one image per "
            "map in that map's geometry (needs a model trained with --condition-on labels). Replaces --n.",
            rich_help_panel=MASK,
        ),
    ] = None,
    per_label: Annotated[
        int, typer.Option("--per-label", help="Images per label map (different seeds).", rich_help_panel=MASK)
    ] = 1,
    deform: Annotated[
        int,
        typer.Option(
            "--deform",
            help="New anatomy: this many seeded random elastic/affine deformations of every map, each "
            "sampled --per-label times (0 = the maps themselves).",
            rich_help_panel=MASK,
        ),
    ] = 0,
    undeformed: Annotated[
        int,
        typer.Option(
            "--undeformed",
            help="With --deform: also this many images of every map itself, undeformed, in the same folder "
            "(deformed maps add variety; the real maps keep the synthetic set close to the real one).",
            rich_help_panel=MASK,
        ),
    ] = 0,
    precision: Annotated[Optional[str], common.opt(SampleConfig, "precision", panel=SCALE)] = None,
    compile: Annotated[
        Optional[bool], common.opt(SampleConfig, "compile", "--compile/--no-compile", panel=SCALE)
    ] = None,
    shard: Annotated[
        Optional[str],
        typer.Option(
            help="Run shard i of N (i/N): sample k belongs to shard k mod N. Read from SLURM_ARRAY_TASK_ID/COUNT or torchrun RANK/WORLD_SIZE when not given.",
            rich_help_panel=SCALE,
        ),
    ] = None,
    reject_memorized: Annotated[Optional[float], common.opt(SampleConfig, "reject_memorized")] = None,
    train: Annotated[Optional[Path], typer.Option("--train", help="Training data set, for --reject-memorized.")] = None,
    max_memory_gb: Annotated[
        Optional[float], common.opt(SampleConfig, "max_memory_gb", "--max-memory", panel=SCALE)
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Write into a non-empty --out that is not an earlier sample output: files of the same names are replaced, nothing else is changed or deleted (another data set's dataset.json is never replaced).",
        ),
    ] = False,
) -> None:
    """Sample new volumes (image + mask) in the training geometry, with provenance per sample.

    Re-running the same command resumes: finished samples are skipped. Shards of one job (--shard,
    SLURM arrays, torchrun) write exactly the samples a single run would. A non-empty --out that
    is not an earlier sample output (e.g. a real data set) is refused unless --overwrite.
    """
    from ldmtool.config import load_yaml
    from ldmtool.data.lesions import parse_conditions
    from ldmtool.pipelines.generate import generate
    from ldmtool.pipelines.outdir import check_output_dir

    state: common.State = ctx.obj
    yaml = load_yaml(config)
    cfg = common.section(yaml, "sample", SampleConfig, locals())
    fmt_given = format is not None or "format" in (yaml.get("sample") or {})
    flags = {"sampler": sampler, "steps": steps, "eta": eta, "spacing": spacing}
    given = {k for k, v in flags.items() if v is not None or k in (yaml.get("sample") or {})}
    cfg = distilled_defaults(cfg, ldm, given, state.console)
    if guide_ldm is not None:
        common.require_exists(guide_ldm, "--guide-ldm")
        if cfg.guidance == 1.0:
            state.console.print(
                "[yellow]warning:[/] --guide-ldm has no effect at --guidance 1; autoguidance needs G > 1 (e.g. 2)",
                highlight=False,
            )
    if labels is not None:
        return _sample_from_labels(state, cfg, ae, ldm, out, labels, per_label, deform, undeformed, overwrite, locals())
    if per_label != 1 or deform or undeformed:
        from ldmtool.errors import LdmError

        raise LdmError(
            "--per-label, --deform and --undeformed go with --labels DIR (the label maps to generate images for)"
        )
    check_output_dir(out, "sample", overwrite)  # before the training set of --reject-memorized is read
    memfilter = _memorization_filter(cfg.reject_memorized, train, state)
    result = generate(
        ae,
        ldm,
        out,
        n=cfg.n,
        sampler=cfg.sampler,
        steps=cfg.steps,
        eta=cfg.eta,
        spacing=cfg.spacing,
        batch_size=cfg.batch_size,
        decode_batch=cfg.decode_batch,
        seed=state.seed,
        fmt=cfg.format if fmt_given else None,  # None: the model's own (2D models: their images' format)
        conditions=class_conditions(parse_conditions(condition), class_name),
        guidance=cfg.guidance,
        device=state.torch_device(),
        precision=cfg.precision,
        compile=cfg.compile,
        shard=shard,
        max_memory_gb=cfg.max_memory_gb,
        memorization_filter=memfilter,
        console=state.console,
        overwrite=overwrite,
        guide_ldm=guide_ldm,
    )
    rows = {
        "written": len(result.written),
        "already there (skipped)": len(result.skipped),
    }
    if cfg.reject_memorized is not None:
        rows["rejected as near-copies"] = f"{result.rejected} (SSIM to a training volume > {cfg.reject_memorized})"
    if result.others:
        rows["shard"] = f"{result.shard} ({result.others} samples belong to other shards)"
    rows.update(
        {
            "seconds": result.seconds,
            "seconds per sample": result.seconds_per_sample,
            "samples per second": (len(result.written) / result.seconds) if result.seconds > 0 else 0.0,
            "device": f"{result.device}, {result.precision}",
            "memory plan": result.memory,
            "output": str(out),
        }
    )
    if (Path(out) / "montage.png").is_file():
        rows["montage"] = str(Path(out) / "montage.png")
    common.console.print(common.results_table("sample", rows))


def distilled_defaults(cfg: SampleConfig, ldm: Path, given: set[str], console=None) -> SampleConfig:
    """A distilled denoiser (`ldmtool distill`) samples on the DDIM grid it learnt: its sampler,
    steps, spacing and eta replace the defaults of those not `given`; a warning where a given one
    differs (other grids give blurrier samples)."""
    import dataclasses

    from ldmtool.models.checkpoint import read_config

    record = read_config(ldm).get("distillation")
    if not isinstance(record, dict):
        return cfg
    own = {k: record[k] for k in ("sampler", "steps", "spacing", "eta") if k in record}
    changed = {k: getattr(cfg, k) for k in own if k in given and getattr(cfg, k) != own[k]}
    if changed and console is not None:
        asked = ", ".join(f"{k} {v}" for k, v in changed.items())
        console.print(
            f"[yellow]warning:[/] {ldm} was distilled for {own.get('steps')} {own.get('sampler', 'ddim').upper()} steps "
            f"({own.get('spacing')} spacing, eta {own.get('eta')}); sampling with {asked} instead",
            highlight=False,
        )
    return dataclasses.replace(cfg, **{k: v for k, v in own.items() if k not in given})


def class_conditions(conditions: dict[str, float | str], class_name: str | None) -> dict[str, float | str]:
    """`--condition` items plus `--class NAME` (as class=NAME); an error when both name a class."""
    if class_name is None:
        return conditions
    if "class" in conditions:
        from ldmtool.errors import LdmError

        raise LdmError("give the class once: --class NAME or --condition class=NAME")
    return {**conditions, "class": class_name}


def _memorization_filter(threshold: float | None, train: Path | None, state: common.State):
    """The filter of --reject-memorized (None without it), scoring on the device this shard samples on."""
    if threshold is None:
        return None
    from ldmtool.diffusion.resources import shard_device
    from ldmtool.errors import LdmError
    from ldmtool.evaluate.privacy import MemorizationFilter

    if train is None:
        raise LdmError("--reject-memorized needs --train DIR: the training volumes to compare against")
    return MemorizationFilter(Path(train), threshold=threshold, device=shard_device(state.torch_device()))


def _sample_from_labels(state, cfg, ae, ldm, out, labels, per_label, deform, undeformed, overwrite, given) -> None:
    """`sample --labels DIR`: mask-to-image, then the results table."""
    from ldmtool.errors import LdmError
    from ldmtool.pipelines.mask_to_image import generate_from_labels

    clash = [f for f, k in (("--n", "n"), ("--shard", "shard"), ("--reject-memorized", "reject_memorized")) if given[k]]
    if clash or given["condition"] or given["class_name"]:
        raise LdmError(
            f"{(clash or ['--condition'])[0]} does not go with --labels (one sample per map and --per-label)"
        )
    if cfg.format != "nifti":
        raise LdmError("--labels writes NIfTI only (each image in its label map's geometry); drop --format dicom")
    common.require_exists(labels, "--labels folder")
    result = generate_from_labels(
        ae,
        ldm,
        labels,
        out,
        per_label=per_label,
        deform=deform,
        undeformed=undeformed,
        sampler=cfg.sampler,
        steps=cfg.steps,
        eta=cfg.eta,
        spacing=cfg.spacing,
        guidance=cfg.guidance,
        batch_size=cfg.batch_size,
        decode_batch=cfg.decode_batch,
        seed=state.seed,
        device=state.torch_device(),
        precision=cfg.precision,
        console=state.console,
        overwrite=overwrite,
        guide_ldm=given["guide_ldm"],
    )
    rows = {
        "written": len(result.written),
        "already there (skipped)": len(result.skipped),
        "seconds": result.seconds,
        "seconds per sample": result.seconds_per_sample,
        "device": f"{result.device}, {result.precision}",
        "output": str(out),
    }
    common.console.print(common.results_table("sample --labels", rows))
