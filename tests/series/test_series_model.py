"""LSSDM parts, training on the shared loop, and the loaded model's imputation and synthesis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ldmtool.series.config import SeriesModelConfig, SeriesTrainConfig
from ldmtool.series.model import linear_fill, variable_graph
from ldmtool.series.pipeline import SeriesModel
from ldmtool.series.train import train_series
from tests.series.conftest import tiny_data

TINY_MODEL = dict(channels=8, heads=2, gcn_hidden=8, latent_dim=4, score_layers=1, num_train_timesteps=10)
TINY_TRAIN = dict(steps=6, batch_size=8, warmup_steps=2)


def test_linear_fill():
    x = torch.tensor([[[0.0], [2.0], [0.0], [0.0], [8.0], [0.0]]])
    m = torch.tensor([[[False], [True], [False], [False], [True], [False]]])
    assert linear_fill(x, m)[0, :, 0].tolist() == [2.0, 2.0, 4.0, 6.0, 8.0, 8.0]
    assert linear_fill(x, torch.zeros_like(m)).abs().sum() == 0  # nothing observed: the mean (0)


def test_variable_graph_links_correlated_variables():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 10))
    values = np.stack([a, a + 0.01 * rng.normal(size=a.shape), rng.normal(size=a.shape)], -1)
    adj = variable_graph(values, k=1)
    assert (adj == adj.T).all() and adj[0, 1] == 1 and np.trace(adj) == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("series_model")
    result = train_series(
        tiny_data(),
        out,
        model_cfg=SeriesModelConfig(**TINY_MODEL),
        train_cfg=SeriesTrainConfig(**TINY_TRAIN),
        device=torch.device("cpu"),
        seed=0,
    )
    return out, result


def test_training_is_seeded(trained, tmp_path):
    out, _ = trained
    train_series(
        tiny_data(),
        tmp_path,
        model_cfg=SeriesModelConfig(**TINY_MODEL),
        train_cfg=SeriesTrainConfig(**TINY_TRAIN),
        device=torch.device("cpu"),
        seed=0,
    )
    from safetensors.torch import load_file

    a, b = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_impute_keeps_observed_values_and_is_seeded(trained):
    out, _ = trained
    model = SeriesModel.load(out)
    data = tiny_data(n=5, seed=3)
    draws = model.impute(data, samples=3, steps=4, seed=7, batch_size=4)
    obs = data.observed
    assert draws.shape == (5, 3, *data.values.shape[1:])
    assert np.array_equal(draws[:, 1][obs], data.values[obs])  # observed values exactly
    assert np.isfinite(draws).all()
    assert not np.allclose(draws[:, 0][~obs], draws[:, 1][~obs])  # draws differ
    np.testing.assert_array_equal(draws, model.impute(data, samples=3, steps=4, seed=7, batch_size=4))
    again = model.impute(
        data, samples=3, steps=4, seed=7, batch_size=7
    )  # other batching: the same up to float rounding
    np.testing.assert_allclose(draws, again, rtol=0, atol=1e-4)
    alone = model.impute(data.subset([2]), samples=3, steps=4, seed=7)  # a stay's draws do not depend on the others
    np.testing.assert_allclose(alone[0], draws[2], rtol=0, atol=1e-4)


def test_synthesis_conditioned_on_outcome(trained):
    out, _ = trained
    model = SeriesModel.load(out)
    a = model.synthesise(4, outcome=1, steps=3, seed=1)
    b = model.synthesise(4, outcome=1, steps=3, seed=1)
    assert np.isfinite(a.values).all() and a.values.shape == (4, 12, 4)
    np.testing.assert_array_equal(a.values, b.values)
    assert (a.outcome == 1).all()
    sparse = model.synthesise(4, steps=3, seed=1, sparse=True)
    assert 0 < np.isnan(sparse.values).mean() < 1


def test_guidance_on_the_outcome(trained, tmp_path):
    """Classifier-free guidance: w = 0 draws as if no outcome were given, w = 1 is the plain
    conditional draw, and with one step (a draw affine in the network's output) w = 0.5 lands
    halfway between them; a negative w is a one-line error."""
    from ldmtool.errors import LdmError

    out, _ = trained
    model = SeriesModel.load(out)
    data = tiny_data(n=5, seed=3)
    unknown = tiny_data(n=5, seed=3)
    unknown.outcome = None
    kw = dict(samples=2, steps=1, seed=7)
    plain = model.impute(data, **kw)
    np.testing.assert_array_equal(plain, model.impute(data, guidance=1.0, **kw))
    none = model.impute(unknown, **kw)
    assert not np.allclose(plain, none)  # the outcome changes the draws
    np.testing.assert_allclose(model.impute(data, guidance=0.0, **kw), none, rtol=0, atol=1e-5)
    half = model.impute(data, guidance=0.5, **kw)
    lo, hi = (np.asarray(model.config["normalisation"][k]) for k in ("min", "max"))
    inside = (plain > lo) & (plain < hi) & (none > lo) & (none < hi)  # draws are clipped to the training range
    assert inside.mean() > 0.9
    np.testing.assert_allclose(half[inside], ((plain + none) / 2)[inside], rtol=0, atol=1e-5)
    with pytest.raises(LdmError, match="--guidance must be 0 or more"):
        model.impute(data, guidance=-1.0, **kw)
    a = model.synthesise(4, steps=3, seed=1, guidance=0.5)
    assert np.isfinite(a.values).all() and not np.allclose(a.values, model.synthesise(4, steps=3, seed=1).values)
    from ldmtool.series.jobs import sample_table

    sample_table(out, tmp_path / "s", n=3, steps=2, guidance=0.5)
    assert json.loads((tmp_path / "s" / "sample-series.json").read_text())["guidance"] == 0.5


class _StopAfter:
    """A StopFlag stand-in: a stop is requested from the `n`-th step on (as if SIGTERM came then)."""

    signal_name = "SIGTERM"

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    @property
    def requested(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


def test_preempted_training_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file

    from ldmtool.errors import Preempted

    def run(out, resume="never", stop=None):
        return train_series(
            tiny_data(), out, model_cfg=SeriesModelConfig(**TINY_MODEL), train_cfg=SeriesTrainConfig(**TINY_TRAIN),
            device=torch.device("cpu"), seed=0, resume=resume, stop=stop,
        )  # fmt: skip

    with pytest.raises(Preempted, match="SIGTERM at step 3"):
        run(tmp_path / "a", stop=_StopAfter(3))
    assert run(tmp_path / "a", resume="must").resumed_from == 3
    run(tmp_path / "b")
    a, b = (load_file(str(tmp_path / x / "train_state.safetensors")) for x in "ab")
    weights = [k for k in a if k.startswith("model/")]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)


def _structured_stays(n: int, seed: int):
    """Stays whose four variables are one shared curve (a random phase per stay) in different units:
    a hidden value follows from its neighbours in time and from the other variables at its time."""
    from ldmtool.series.reader import Grid, SeriesData

    rng = np.random.default_rng(seed)
    t = np.arange(12)
    curve = np.sin(t[None, :] / 2 + rng.uniform(0, 2 * np.pi, (n, 1)))  # (n, T)
    values = 50 + curve[..., None] * np.array([10.0, -5.0, 20.0, 2.0]) + 0.05 * rng.normal(size=(n, 12, 4))
    values[rng.random(values.shape) < 0.3] = np.nan
    values[:, 0, 0] = 50.0
    return SeriesData([f"s{seed}-{i}" for i in range(n)], ["A", "B", "C", "D"], values, [], np.zeros((n, 0)),
                      Grid(12, 1.0), {"format": "long-csv", "time_style": "hours"})  # fmt: skip


def test_briefly_trained_model_beats_mean_imputation(tmp_path):
    """Half the observed values of new stays hidden: the median of a short-trained model's draws is
    much closer to them than each variable's training mean (in units of the variable's std)."""
    train = _structured_stays(128, 0)
    model_cfg = SeriesModelConfig(channels=16, heads=2, gcn_hidden=16, latent_dim=4, num_train_timesteps=20)
    train_cfg = SeriesTrainConfig(steps=100, batch_size=16, warmup_steps=10, val_fraction=0.0, lr=2e-3)
    train_series(train, tmp_path, model_cfg=model_cfg, train_cfg=train_cfg, device=torch.device("cpu"), seed=0)
    model = SeriesModel.load(tmp_path)
    test = _structured_stays(40, 1)
    truth = test.values.copy()
    hidden = test.observed & (np.random.default_rng(2).random(truth.shape) < 0.5)
    test.values = np.where(hidden, np.nan, truth)
    median = np.median(model.impute(test, samples=3, steps=10, seed=0), axis=1)
    std = np.nanstd(train.values, axis=(0, 1))
    mean_err = np.abs((np.nanmean(train.values, axis=(0, 1)) - truth) / std)[hidden].mean()
    model_err = np.abs((median - truth) / std)[hidden].mean()
    assert model_err < 0.6 * mean_err, (model_err, mean_err)


def test_checkpoint_of_another_layout_is_a_one_line_error(trained, tmp_path):
    import json
    import struct

    from safetensors.torch import load_file, save_file

    from ldmtool.errors import LdmError

    out, _ = trained
    path = out / "model.safetensors"
    with open(path, "rb") as f:  # the safetensors header: 8-byte length, then JSON with the metadata
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    tensors = load_file(str(path))
    tensors["score.inp.weight"] = tensors["score.inp.weight"][:, :-1].contiguous()  # an earlier input layout
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata=header["__metadata__"])
    with pytest.raises(LdmError, match="train the model again"):
        SeriesModel.load(tmp_path / "model.safetensors")


def test_observation_mask_gives_each_stay_its_drawn_count():
    """Sparse synthesis: with drawn fractions, each stay and variable gets fraction × T observations
    (rounded down or up), at cells following the training pattern over time, never where the
    variable never was; no fractions → each cell kept with its outcome's rate."""
    from ldmtool.series.pipeline import observation_mask

    t_len = 12
    t = np.linspace(0.1, 0.3, t_len)
    rates = np.stack([np.stack([t, 0 * t, 0.5 + 0 * t], 1), np.stack([2 * t, 0 * t, 0.25 + 0 * t], 1)])  # (2, 12, 3)
    n = 4000
    y = np.tile([0.0, 1.0, np.nan, 0.0], n // 4)
    fractions = np.tile([[2 / t_len, 0.5, 1.0], [0.4, 0.3, 0.1], [0.2, 0.0, 0.5], [0.25, 0.0, 0.0]], (n // 4, 1))
    keep = observation_mask(rates, y, fractions, np.random.default_rng(0))
    assert keep.shape == (n, t_len, 3) and keep.dtype == bool
    count = keep.sum(1)
    exact = fractions * t_len
    assert ((count == np.floor(exact)) | (count == np.ceil(exact)))[:, [0, 2]].all()
    assert (count[0::4, 0] == 2).all()  # twice in 12 steps: exactly two values, never none
    np.testing.assert_allclose(count[:, 0].mean(), exact[:, 0].mean(), atol=0.05)  # the rounding keeps the mean
    assert not keep[:, :, 1].any()  # never observed in training: never observed
    assert keep[0::4, :, 2].all()  # fraction 1: every cell
    late, early = keep[0::4, -3:, 0].mean(), keep[0::4, :3, 0].mean()
    assert late > 1.5 * early  # the training pattern over time (rate 0.3 late vs 0.1 early)
    coin = observation_mask(rates, y, None, np.random.default_rng(0))
    np.testing.assert_allclose(coin[1::4].mean(0), rates[1], atol=0.05)  # no fractions: the outcome's rates
    np.testing.assert_allclose(coin[2::4].mean(0), rates[0], atol=0.05)  # unknown outcome: outcome 0's


def test_expected_value_is_one_call_predicting_the_clean_residual(trained):
    """`expected`: one network call per batch, at the noisiest step, whose clean-residual prediction
    is the answer: a network that predicts the residual 0.25 everywhere gives coarse + 0.25 on the
    unobserved cells, the observed ones exact."""
    from ldmtool.series.prepare import to_tensors

    out, _ = trained
    model = SeriesModel.load(out)
    data = tiny_data().subset([0, 1, 2])
    sampler = model.sampler(1)
    calls = []

    def fake(z, t, x, m, coarse, cond):
        calls.append(int(t[0]))
        a = sampler.alphas_cumprod[t].float().view(-1, 1, 1)
        return (a.sqrt() * z - 0.25) / (1 - a).sqrt()  # the v whose implied clean residual is 0.25

    model.model.denoise = fake
    got = model.expected(data, batch_size=8)
    assert calls == [model.model.cfg.num_train_timesteps - 1]
    tens = to_tensors(data, model.config["normalisation"])
    with torch.no_grad():
        cond = model.model.condition(tens.static, tens.known, tens.outcome)
        coarse = model.model.coarse(tens.x, tens.m, cond)[0].double().numpy()
    want = model._denormalise(coarse + 0.25)
    obs = data.observed
    np.testing.assert_array_equal(got[obs], data.values[obs])
    np.testing.assert_allclose(got[~obs], want[~obs], rtol=1e-5, atol=1e-5)


def test_draws_take_ten_steps_unless_told():
    """A draw takes 10 of the training timesteps by default (all of them when there are fewer);
    --steps outside 1..timesteps is a one-line error."""
    from ldmtool.errors import LdmError
    from ldmtool.series.model import LSSDM

    for total, default in ((50, 10), (6, 6)):
        net = LSSDM(SeriesModelConfig(**{**TINY_MODEL, "num_train_timesteps": total}), 3, 8, 0, torch.zeros(3, 3))
        model = SeriesModel(net, {}, torch.device("cpu"))
        assert model.sampling_steps(None) == default and len(model.sampler(None).timesteps) == default
        assert model.sampling_steps(total) == total
        with pytest.raises(LdmError, match="--steps must be between 1 and"):
            model.sampling_steps(total + 1)


def test_imputation_leaves_outcomes_out_unless_asked(trained, tmp_path):
    """A PhysioNet set with Outcomes-X.txt beside it: impute-series reads the outcomes but does not
    condition on them (a mortality model trained on the imputation would learn them from it);
    use_outcomes conditions on them; the provenance says which."""
    from ldmtool.series.jobs import impute_table
    from ldmtool.series.writer import write_table

    out, _ = trained
    data = tiny_data(n=6, seed=5, fmt="physionet", style="hhmm")
    folder = write_table(data, tmp_path / "set-t")
    column = SeriesModel.load(out).config["outcome"]  # the outcome column the model was trained on
    rows = [f"RecordID,{column}"] + [f"{i},{int(y)}" for i, y in zip(data.ids, data.outcome)]
    (tmp_path / "Outcomes-t.txt").write_text("\n".join(rows) + "\n")
    kw = dict(samples=2, steps=2, seed=3)
    impute_table(folder, out, tmp_path / "a", **kw)
    impute_table(folder, out, tmp_path / "b", use_outcomes=True, **kw)
    rec_a = json.loads((tmp_path / "a" / "impute-series.json").read_text())
    rec_b = json.loads((tmp_path / "b" / "impute-series.json").read_text())
    assert rec_a["outcomes"] == "read, not used" and rec_b["outcomes"] == "used"
    model = SeriesModel.load(out)
    table = model.read(folder)
    assert table.outcome is not None
    given = model.impute(table, **kw)
    table.outcome = None
    blind = model.impute(table, **kw)
    assert not np.allclose(given, blind)
    np.testing.assert_allclose(np.load(tmp_path / "a" / "samples.npz")["draws"], blind, rtol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "b" / "samples.npz")["draws"], given, rtol=1e-5)


def test_first_step_is_computed_once_per_stay(trained, monkeypatch):
    """At the noisiest step a stay's draws share one network call (rows: K (S − 1) + 1 per stay, not
    K S). With a network whose clean-residual prediction there ignores the noisy input, as a trained
    one nearly does, the draws are those of the unshared sampler; with one that does not ignore
    it, they differ (the sharing is real, not a no-op)."""
    from functools import partialmethod

    out, _ = trained
    model = SeriesModel.load(out)
    data = tiny_data().subset([0, 1, 2])
    sampler = model.sampler(3)
    t0 = int(sampler.timesteps[0])
    rows, original = [], SeriesModel._draw

    def net(z, t, x, m, coarse, cond, *, listens_at_t0: bool):
        rows.append((int(t[0]), len(z)))
        a = sampler.alphas_cumprod[t].float().view(-1, 1, 1)
        x0 = 0.1 * coarse + 0.01 * t.view(-1, 1, 1) + (0.3 * z if (listens_at_t0 or int(t[0]) != t0) else 0)
        return (a.sqrt() * z - x0) / (1 - a).sqrt()  # the v whose implied clean residual is x0

    def draws(share: bool, listens: bool):
        rows.clear()
        model.model.denoise = lambda *a: net(*a, listens_at_t0=listens)
        monkeypatch.setattr(SeriesModel, "_draw", partialmethod(original, share_first=share))
        return model.impute(data, samples=4, steps=3, seed=5, batch_size=64)

    shared = draws(True, False)
    assert rows == [(t0, 3), (int(sampler.timesteps[1]), 12), (int(sampler.timesteps[2]), 12)]
    np.testing.assert_allclose(shared, draws(False, False), rtol=0, atol=1e-4)
    assert rows[0] == (t0, 12)
    assert not np.allclose(draws(True, True), draws(False, True), atol=1e-3)
