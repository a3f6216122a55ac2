"""Clinical time series on PhysioNet/CinC 2012 set A: LSSDM vs PyPOTS (SAITS, BRITS, CSDI) and
mean / LOCF / linear interpolation, at an equal wall-clock training budget.

    python benchmarks/series.py                                  # everything, 10 min per trained method
    python benchmarks/series.py --stays 400 --minutes 0.5 --samples 2 --methods mean,locf,linear,lssdm   # smoke run
    python benchmarks/series.py --test-stays 200 --samples 5      # bounds the sampling time of LSSDM and CSDI on a CPU
    python benchmarks/series.py --test-stays 200 --csdi-test-stays 100   # CSDI imputes 100 of them; all scored on those too

Data: `../shared/data/physionet2012/` beside the repository (or --data DIR) with set-a.tar.gz and
Outcomes-a.txt; without them the script says so and exits 0. Stays are read by ldmtool's reader
(hourly grid, 48 steps, 37 variables; the stays without any observation are left out) and split
once by a seeded permutation (--split-seed): 64 % train, 16 % validation, 20 % test, as PyPOTS's
benchmarks do. In the test stays --rates of the observed values are hidden at random (seeded) and
imputed; MAE and RMSE are on values normalised by the training means and standard deviations,
CRPS is CSDI's normalised quantile-loss CRPS (from --samples draws for LSSDM and CSDI; a point
estimate's CRPS is its normalised absolute error). LSSDM draws with --steps of its 50 timesteps
(ancestral; the first count gives the "lssdm" row, further counts rows "lssdm, N steps" from the
same model), CSDI with all 50 (PyPOTS's sampler). LSSDM has a further row, "lssdm expected value":
the same model's one-call estimate of each value's mean (`SeriesModel.expected`), a point estimate
(its CRPS is its normalised absolute error) that costs one network call where the median of the
draws costs --samples × --steps.

Every trained method gets --minutes of training wall time: LSSDM through its time budget; a PyPOTS
model is timed over one epoch, then trained afresh for as many epochs as fit the budget (the timed
epoch is the training when only one fits). The seconds column is training plus imputation of every
rate; "of which imputing" the imputation alone (every rate, all draws).

Downstream: in-hospital mortality AUROC of a logistic regression on per-stay features (mean, min,
max, last value and observed fraction of every variable, plus age, sex, height, ICU type) of each
method's imputation of the test stays at the first rate, pooled over 5-fold cross-validation.
Synthesis: --tstr-n synthetic stays from LSSDM (`sample-series --sparse`: outcome drawn at the
training rate, each stay's observed fraction per variable drawn with its descriptors) train the
same regression, tested on every real test stay, --test-stays or not (TSTR), beside the same
regression trained on the real training stays (TRTR). The synthetic stays take --synth-steps; the
TSTR AUROC is the mean over --tstr-seeds synthetic sets (seeds), each listed, since one set's
AUROC moves by about 0.01 with its seed. It is given for the model's conditional draws (guidance
1) and for the outcome guidance (`sample-series --guidance`) among --synth-guidance whose one
synthetic set scores best on the validation stays (never the test stays; LSSDM trains on the
training and validation stays, the regression only on synthetic ones).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import recorded  # noqa: E402

BASELINES = ("mean", "locf", "linear")
PYPOTS = ("saits", "brits", "csdi")
METHODS = (*BASELINES, "lssdm", *PYPOTS)


def parse(argv=None) -> argparse.Namespace:
    shared = Path(os.environ.get("LDMTOOL_SHARED_DATA", REPO.parent / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=shared / "physionet2012")
    p.add_argument("--stays", type=int, default=0, help="Use the first N stays only (0: all).")
    p.add_argument("--rates", default="0.1,0.5,0.9", help="Fractions of the observed test values hidden.")
    p.add_argument("--minutes", type=float, default=10.0, help="Training wall time of every trained method.")
    p.add_argument("--samples", type=int, default=10, help="Draws per stay of LSSDM and CSDI (CRPS, median).")
    p.add_argument(
        "--steps",
        default="2,10",
        help="LSSDM sampling steps of each draw (ancestral, on a grid of its 50 timesteps); the first gives the "
        "'lssdm' row, each further count a row 'lssdm, N steps' of the same model and draws.",
    )
    p.add_argument("--synth-steps", type=int, default=10, help="LSSDM sampling steps of the synthetic stays (TSTR).")
    p.add_argument("--tstr-seeds", type=int, default=3, help="Synthetic sets (seeds) of the TSTR AUROC.")
    p.add_argument(
        "--synth-guidance",
        default="0.25,0.5,0.75,1",
        help="Outcome guidance of the synthetic stays; several: the best on the validation stays (one set each) "
        "is reported beside guidance 1.",
    )
    p.add_argument("--test-stays", type=int, default=0, help="Impute only the first N test stays (0: all).")
    p.add_argument(
        "--csdi-test-stays",
        type=int,
        default=0,
        help="CSDI imputes only the first N of the test stays (0: all; its 50-step sampler is the slowest "
        "part on a CPU); every method is then also scored on those N.",
    )
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument(
        "--tstr-n",
        type=int,
        default=None,
        help="Synthetic stays for TSTR (0: skip; default: as many as training stays).",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ldmtool-series-cache")
    args = p.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",")]
    args.steps = [int(k) for k in str(args.steps).split(",")]
    args.synth_guidance = [float(w) for w in str(args.synth_guidance).split(",")]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    return args


# ---------------------------------------------------------------- data


def load(args):
    """Set A on the hourly grid (cached as .npz keyed by the archive's size and time)."""
    from ldmtool.series.reader import Grid, SeriesData, read_table

    archive = args.data / "set-a.tar.gz"
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    cache = args.cache / f"physionet2012-a-{key}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        src = {"format": "physionet", "time_style": "hhmm", "path": str(archive)}
        data = SeriesData(
            list(z["ids"]),
            list(z["variables"]),
            z["values"],
            list(z["static_names"]),
            z["static"],
            Grid(48, 1.0),
            src,
            z["outcome"],
        )
    else:
        t0 = time.perf_counter()
        data = read_table(archive, skip_empty=True)
        print(f"read {len(data.ids)} stays in {time.perf_counter() - t0:.0f} s", flush=True)
        args.cache.mkdir(parents=True, exist_ok=True)
        np.savez(cache, ids=np.array(data.ids), variables=np.array(data.variables), values=data.values,
                 static_names=np.array(data.static_names), static=data.static, outcome=data.outcome)  # fmt: skip
    if args.stays:
        data = data.subset(np.arange(min(args.stays, len(data.ids))))
    return data


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) indices: 64 / 16 / 20 % of a seeded permutation."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(0.2 * n)), int(round(0.16 * n))
    return np.sort(order[n_test + n_val :]), np.sort(order[n_test : n_test + n_val]), np.sort(order[:n_test])


def hide(values: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(values with `rate` of the observed cells set to NaN, mask of those cells)."""
    rng = np.random.default_rng(seed)
    hidden = ~np.isnan(values) & (rng.random(values.shape) < rate)
    return np.where(hidden, np.nan, values), hidden


# ---------------------------------------------------------------- methods


class Normaliser:
    def __init__(self, norm: dict) -> None:
        self.mean, self.std = np.asarray(norm["mean"]), np.asarray(norm["std"])

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return (v - self.mean) / self.std


def run_baseline(name: str, inputs: dict[float, np.ndarray], fill: np.ndarray) -> dict:
    from ldmtool.series.metrics import linear, locf

    t0 = time.perf_counter()
    fn = {
        "mean": lambda v: np.where(np.isnan(v), fill, v),
        "locf": lambda v: locf(v, fill),
        "linear": lambda v: linear(v, fill),
    }[name]
    out = {r: fn(v)[:, None] for r, v in inputs.items()}
    return {"draws": out, "train_seconds": 0.0, "seconds": time.perf_counter() - t0}


def run_lssdm(args, data, train, val, test_data, inputs, work: Path) -> dict:
    """Train on train + validation stays for --minutes, impute each rate's inputs (raw units)."""
    import torch

    from ldmtool.series.config import SeriesModelConfig, SeriesTrainConfig
    from ldmtool.series.pipeline import SeriesModel
    from ldmtool.series.train import train_series

    fit = data.subset(np.concatenate([train, val]))
    t0 = time.perf_counter()
    cfg = SeriesTrainConfig(epochs=10_000, max_minutes=args.minutes, val_fraction=0.2, checkpoint_minutes=60)
    res = train_series(
        fit,
        work / "lssdm",
        model_cfg=SeriesModelConfig(),
        train_cfg=cfg,
        device=torch.device(args.device),
        seed=args.seed,
    )
    train_s = time.perf_counter() - t0
    print(
        f"lssdm: {res.best.get('step', '?')} steps in {train_s:.0f} s, held-out loss {res.best.get('val_loss', float('nan')):.4f}",
        flush=True,
    )
    model = SeriesModel.load(work / "lssdm", args.device)
    # The test stays are imputed without their outcome, as the other methods impute them (and as
    # `impute-series` does): given the outcome, the imputed values would carry it into the
    # mortality AUROC below.
    test_data.outcome = None
    # One untimed pass first: the freshly loaded model sets up its kernels for these batch shapes
    # (the PyPOTS models impute warm, straight after their training).
    test_data.values = next(iter(inputs.values()))
    model.impute(test_data, samples=args.samples, steps=args.steps[0], seed=args.seed, batch_size=128)
    runs = {}
    for steps in args.steps:
        t1 = time.perf_counter()
        draws = {}
        for r, v in inputs.items():
            test_data.values = v
            draws[r] = model.impute(test_data, samples=args.samples, steps=steps, seed=args.seed, batch_size=128)
        runs[steps] = {"draws": draws, "train_seconds": train_s, "seconds": train_s + time.perf_counter() - t1}
    t1 = time.perf_counter()
    point = {}
    for r, v in inputs.items():
        test_data.values = v
        point[r] = model.expected(test_data, seed=args.seed, batch_size=128)[:, None]
    expected = {"draws": point, "train_seconds": train_s, "seconds": train_s + time.perf_counter() - t1}
    first, *more = args.steps
    also = {f"lssdm, {k} steps": runs[k] for k in more}
    return {**runs[first], "model": model, "also": {**also, "lssdm expected value": expected}}


def _pypots_model(name: str, t: int, v: int, epochs: int, device: str):
    from pypots.imputation import BRITS, CSDI, SAITS

    common = dict(epochs=epochs, batch_size=32, patience=None, device=device, verbose=False)
    if name == "saits":
        return SAITS(
            n_steps=t, n_features=v, n_layers=2, d_model=64, n_heads=4, d_k=16, d_v=16, d_ffn=128, dropout=0.1, **common
        )
    if name == "brits":
        return BRITS(n_steps=t, n_features=v, rnn_hidden_size=64, **common)
    return CSDI(n_steps=t, n_features=v, n_layers=2, n_heads=4, n_channels=32, d_time_embedding=64,
                d_feature_embedding=8, d_diffusion_embedding=64, n_diffusion_steps=50, **common)  # fmt: skip


def run_pypots(name: str, args, x_train, x_val, inputs) -> dict:
    """PyPOTS model `name` on normalised arrays (NaN missing): one timed epoch sets the epochs of
    the budget, then a fresh model trains for them and imputes."""
    t, v = x_train.shape[1:]
    val_in, _ = hide(x_val, 0.1, args.seed + 99)
    val_set = {"X": val_in, "X_ori": x_val}
    probe = _pypots_model(name, t, v, 1, args.device)
    t0 = time.perf_counter()
    probe.fit({"X": x_train}, val_set)
    epoch_s = time.perf_counter() - t0
    epochs = max(1, int(args.minutes * 60 / max(epoch_s, 1e-6)))
    if epochs == 1:  # the budget holds one epoch: the timed one is the training
        model, train_s = probe, epoch_s
    else:
        model = _pypots_model(name, t, v, epochs, args.device)
        t0 = time.perf_counter()
        model.fit({"X": x_train}, val_set)
        train_s = time.perf_counter() - t0
    print(f"{name}: {epochs} epochs ({epoch_s:.0f} s each) in {train_s:.0f} s", flush=True)
    t1 = time.perf_counter()
    draws = {}
    for r, x in inputs.items():
        if name == "csdi":
            x = x[: args.csdi_test_stays or None]
            out = model.predict({"X": x}, n_sampling_times=args.samples)["imputation"]  # (N, K, T, V)
        else:
            out = model.predict({"X": x})["imputation"][:, None]
        draws[r] = np.asarray(out, dtype=float)
    return {"draws": draws, "train_seconds": train_s, "seconds": train_s + time.perf_counter() - t1}


# ---------------------------------------------------------------- scores and report


def score(draws: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """MAE and RMSE of the median, CRPS of the draws, on the hidden cells (normalised units)."""
    from ldmtool.series.metrics import crps, mae, rmse

    med = np.median(draws, axis=1)
    return {"mae": mae(med, truth, mask), "rmse": rmse(med, truth, mask), "crps": crps(draws, truth, mask)}


def tstr(args, model, data, train, val, test) -> dict:
    """AUROC on the real test stays of the regression trained on synthetic (TSTR) and on real (TRTR)
    stays; with several --synth-guidance values, the one whose synthetic stays score best on the
    validation stays is chosen first (the test stays play no part in the choice)."""
    from ldmtool.series.metrics import auroc, fit_logistic, stay_features

    real_test = stay_features(data.values[test], data.static[test])
    y_test = data.outcome[test]
    trtr = fit_logistic(stay_features(data.values[train], data.static[train]), data.outcome[train])
    out = {"trtr": auroc(trtr(real_test), y_test), "test": len(test), "val": len(val), "sets": {}}
    if model is None or not args.tstr_n:
        return out

    def synthesise(guidance: float, seed: int):
        t0 = time.perf_counter()
        syn = model.synthesise(
            args.tstr_n, steps=args.synth_steps, seed=seed, sparse=True, batch_size=128, guidance=guidance
        )
        if len(np.unique(syn.outcome)) < 2:
            return None, time.perf_counter() - t0, float(np.mean(syn.outcome))
        clf = fit_logistic(stay_features(syn.values, syn.static), syn.outcome)
        return clf, time.perf_counter() - t0, float(np.mean(syn.outcome))

    chosen = args.synth_guidance[0]
    if len(args.synth_guidance) > 1:
        real_val = stay_features(data.values[val], data.static[val])
        out["selection"] = {}
        for w in args.synth_guidance:
            clf, _, _ = synthesise(w, args.seed + 100)
            out["selection"][w] = auroc(clf(real_val), data.outcome[val]) if clf else float("nan")
        chosen = max(out["selection"], key=lambda w: np.nan_to_num(out["selection"][w], nan=-1))
        print("TSTR guidance on the validation stays: " + ", ".join(f"{w:g}: {a:.3f}" for w, a in out["selection"].items()),
              flush=True)  # fmt: skip
    for w in dict.fromkeys([1.0, chosen]):
        scores, seconds, deaths = [], [], []
        for k in range(args.tstr_seeds):
            clf, sec, dead = synthesise(w, args.seed + 1 + k)
            seconds.append(sec)
            deaths.append(dead)
            if clf is not None:
                scores.append(auroc(clf(real_test), y_test))
        out["sets"][w] = {"each": scores, "seconds": float(np.mean(seconds)), "deaths": float(np.mean(deaths))}
    out["chosen"] = chosen
    return out


def _table(args, rows: dict) -> None:
    head = " | ".join(f"MAE {r:g} | RMSE {r:g} | CRPS {r:g}" for r in args.rates)
    print(f"| method | {head} | seconds | of which imputing |")
    print("|---|" + "---|" * (3 * len(args.rates) + 2))
    for m, res in rows.items():
        cells = " | ".join(f"{res[r]['mae']:.3f} | {res[r]['rmse']:.3f} | {res[r]['crps']:.3f}" for r in args.rates)
        print(f"| {m} | {cells} | {res['seconds']:.0f} | {res['impute_seconds']:.2f} |")


def report(args, rows: dict, stays: dict, few_rows: dict, auc: dict, synth: dict, n: dict) -> None:
    """`stays`: test stays each method imputed; `few_rows`: every method scored on the fewest of
    them (empty when every method imputed them all)."""
    print(f"\n## PhysioNet 2012 set A: {n['train']} train / {n['val']} validation / {n['test']} test stays, "
          f"{n['vars']} variables × 48 h; {args.minutes:g} min of training per trained method\n")  # fmt: skip
    print("Imputation of hidden observed test values (normalised units; CRPS: CSDI's normalised CRPS)\n")
    _table(args, {m: res for m, res in rows.items() if stays[m] == n["test"]})
    if few_rows:
        k_min = min(stays.values())
        few = ", ".join(m for m, k in stays.items() if k == k_min)
        print(f"\nOn the first {k_min} test stays, the only ones {few} imputed (--csdi-test-stays); every method "
              f"scored on them (seconds: {few}'s for these stays, the others' as above)\n")  # fmt: skip
        _table(args, few_rows)
    print(
        f"\nIn-hospital mortality AUROC (logistic regression, 5-fold CV on the test stays, imputed at rate {args.rates[0]:g})\n"
    )
    print("| data | AUROC |\n|---|---|")
    for m, a in auc.items():
        print(f"| {m} | {a:.3f} |" if a is not None else f"| {m} | – (imputed {stays[m]} test stays only) |")
    if synth:
        print(
            f"\nSynthetic stays (LSSDM sample-series, sparse): mortality AUROC on all {synth['test']} real test stays\n"
        )
        print("| trained on | AUROC |\n|---|---|")
        print(f"| real training stays (TRTR) | {synth['trtr']:.3f} |")
        for w, res in synth["sets"].items():
            if not res["each"]:
                continue
            each = ", ".join(f"{a:.3f}" for a in res["each"])
            how = (
                "the model's conditional draws"
                if w == 1.0
                else "chosen on the validation stays"
                if synth.get("selection")
                else "as given"
            )
            print(f"| {args.tstr_n} synthetic stays, guidance {w:g} ({how}; TSTR, mean of {len(res['each'])} "
                  f"synthetic sets: {each}; {100 * res['deaths']:.0f}% deaths, {res['seconds']:.0f} s to sample each) "
                  f"| {np.mean(res['each']):.3f} |")  # fmt: skip
        if synth.get("selection"):
            sel = ", ".join(f"{w:g}: {a:.3f}" for w, a in synth["selection"].items())
            print(
                f"| (guidance choice: AUROC on the {synth['val']} validation stays of one synthetic set each: {sel}) | |"
            )
        best = synth["sets"].get(synth.get("chosen"), {}).get("each")
        if best:
            print(f"| gap TRTR − TSTR at guidance {synth['chosen']:g} | {synth['trtr'] - np.mean(best):.3f} |")


def run_method(m, args, data, parts, raw_inputs, norm_inputs, fill, normalise, work):
    train, val, test = parts
    if m in BASELINES:
        return run_baseline(m, raw_inputs, fill), True
    if m == "lssdm":
        return run_lssdm(args, data, train, val, data.subset(test), raw_inputs, work), True
    return run_pypots(m, args, normalise(data.values[train]), normalise(data.values[val]), norm_inputs), False


def main(args) -> None:
    import tempfile

    import torch

    from ldmtool.series.metrics import cv_auroc, stay_features
    from ldmtool.series.prepare import normalisation

    torch.set_num_threads(args.threads)
    data = load(args)
    parts = split(len(data.ids), args.split_seed)
    train, val, test = parts
    every_test = test  # TSTR and TRTR score on all test stays (no imputation needed)
    if args.test_stays:
        test = test[: args.test_stays]
        parts = (train, val, test)
    norm = normalisation(data.subset(train))
    normalise, fill = Normaliser(norm), np.asarray(norm["mean"])
    truth = data.values[test]
    hidden = {r: hide(truth, r, args.seed + int(1000 * r)) for r in args.rates}
    raw_inputs = {r: h[0] for r, h in hidden.items()}
    norm_inputs = {r: normalise(v) for r, v in raw_inputs.items()}
    if args.tstr_n is None:
        args.tstr_n = len(train)
    all_draws, stays = {}, {}
    rows, auc, model = (
        {},
        {
            "observed values only": cv_auroc(
                stay_features(raw_inputs[args.rates[0]], data.static[test]), data.outcome[test]
            )
        },
        None,
    )
    with tempfile.TemporaryDirectory(prefix="ldmtool-series-") as work:
        for m in args.methods:
            if m in PYPOTS and not _has_pypots():
                print(f"{m}: skipped (PyPOTS is not installed: pip install pypots)", flush=True)
                continue
            first_res, raw = run_method(m, args, data, parts, raw_inputs, norm_inputs, fill, normalise, Path(work))
            model = first_res.get("model", model)
            for name, res in [(m, first_res), *first_res.get("also", {}).items()]:
                draws = {r: normalise(d) if raw else d for r, d in res["draws"].items()}
                k = len(draws[args.rates[0]])  # test stays imputed (fewer with --csdi-test-stays)
                rows[name] = {r: score(draws[r], normalise(truth[:k]), hidden[r][1][:k]) for r in args.rates}
                rows[name]["seconds"] = res["seconds"]
                rows[name]["impute_seconds"] = res["seconds"] - res["train_seconds"]
                all_draws[name], stays[name] = draws, k
                first = np.median(draws[args.rates[0]], 1) * normalise.std + normalise.mean
                full = k == len(test)
                auc[name] = cv_auroc(stay_features(first, data.static[test]), data.outcome[test]) if full else None
                print(f"{name}: " + ", ".join(f"{r:g}: MAE {rows[name][r]['mae']:.3f}" for r in args.rates), flush=True)
        synth = tstr(args, model, data, train, val, every_test)
    n = {"train": len(train), "val": len(val), "test": len(test), "vars": len(data.variables)}
    k_min = min(stays.values(), default=len(test))
    few_rows = {}  # every method scored on the stays the --csdi-test-stays method imputed, side by side
    if k_min < len(test):
        for m, draws in all_draws.items():
            sub = {r: score(d[:k_min], normalise(truth[:k_min]), hidden[r][1][:k_min]) for r, d in draws.items()}
            few_rows[m] = {**sub, "seconds": rows[m]["seconds"], "impute_seconds": rows[m]["impute_seconds"]}
    report(args, rows, stays, few_rows, auc, synth, n)


def _has_pypots() -> bool:
    try:
        import pypots  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    arguments = parse()
    if not (arguments.data / "set-a.tar.gz").is_file():
        # a fresh clone without the data: nothing to measure and no results file
        print(f"PhysioNet 2012 set A not found: {arguments.data / 'set-a.tar.gz'} — nothing to do (give --data DIR)")
        sys.exit(0)
    with recorded("series"):
        main(arguments)
