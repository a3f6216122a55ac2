"""Cases for the downstream models: read case by case, in memory or memory-mapped from a scratch
folder, with the same results either way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ldmtool.evaluate import cases as cs
from ldmtool.evaluate.volumes import VolumeSet


def _reader_set(images: np.ndarray, labels: np.ndarray | None, name: str = "s") -> tuple[VolumeSet, list[int]]:
    """A VolumeSet that reads its cases through a reader (as `open_volume_set` does), counting reads."""
    reads: list[int] = []

    def reader(i: int):
        reads.append(i)
        return images[i].copy(), None if labels is None else labels[i].copy()

    ids = [f"c{i}" for i in range(len(images))]
    vs = VolumeSet(name, None, None, None, ids, reader=reader, shape=images.shape[1:], has_labels=labels is not None)
    return vs, reads


def test_slice_batch_reads_the_slices_asked_for_in_order(tmp_path, make_phantoms):
    images, labels = make_phantoms(3, 0)
    vs, _ = _reader_set(images, labels)
    k = images.shape[3]
    idx = torch.tensor([2 * k + 5, 0, k + 3, 2 * k + 5, k - 1])  # across cases, repeated, out of order
    for budget in (cs.IN_MEMORY_BYTES, 0):
        with cs.CaseStore(tmp_path, budget=budget) as store:
            c = store.get(vs)
            assert store.on_disk == (budget == 0)
            x, y = c.slice_batch(idx)
        assert x.shape == (5, 1, *images.shape[1:3]) and x.dtype == torch.float32 and y.dtype == torch.int64
        for row, g in enumerate(idx.tolist()):
            n, s = divmod(g, k)
            assert np.array_equal(x[row, 0].numpy(), images[n, :, :, s])
            assert np.array_equal(y[row, 0].numpy(), labels[n, :, :, s])


def test_scratch_holds_every_case_once_and_is_removed(tmp_path, make_phantoms):
    images, labels = make_phantoms(4, 1)
    vs, reads = _reader_set(images, labels)
    with cs.CaseStore(tmp_path, budget=0) as store:
        a = store.get(vs)
        b = store.get(vs.alias("train"))  # the same folder under another name: not read again
        assert a is b and sorted(reads) == [0, 1, 2, 3]
        files = sorted(p.name for p in tmp_path.glob(".downstream-cases-*/*/*.npy"))
        assert len(files) == 8  # an image and a label per case
        img, lab = a.case(2)
        assert np.array_equal(np.asarray(img), images[2]) and np.array_equal(np.asarray(lab), labels[2])
    assert not list(tmp_path.glob(".downstream-cases-*"))


def test_sigterm_removes_the_scratch_folder(tmp_path, make_phantoms):
    import os
    import signal

    images, labels = make_phantoms(2, 4)
    vs, _ = _reader_set(images, labels)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        with cs.CaseStore(tmp_path, budget=0) as store:
            store.get(vs)
            assert list(tmp_path.glob(".downstream-cases-*/*/*.npy"))
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between bytecodes
                pass
    assert stop.value.code == 128 + signal.SIGTERM
    assert not list(tmp_path.glob(".downstream-cases-*")) and signal.getsignal(signal.SIGTERM) == before


def test_subsets_and_joins_share_the_cases(make_phantoms):
    images, labels = make_phantoms(4, 2)
    real = cs.cases_from_arrays(images[:2], labels[:2])
    syn = cs.cases_from_arrays(images[2:], labels[2:])
    both = real + syn.subset([1])
    assert len(both) == 3 and both.items[2] is syn.items[1] and both.items[0] is real.items[0]
    assert np.shares_memory(both.case(2)[0], images)  # a view of the caller's array, not a copy
    k = images.shape[3]
    want = [i * k + s for i, n in enumerate((0, 1, 3)) for s in range(k) if (labels[n, :, :, s] == 3).any()]
    assert both.slices_with(3).tolist() == want
    counts = np.bincount(labels[[0, 1, 3]].ravel(), minlength=256)
    assert np.array_equal(both.class_counts(), counts) and both.max_label() == int(labels[[0, 1, 3]].max())
    with pytest.raises(ValueError):
        real + real.with_targets([0, 1])


def test_downstream_models_score_the_same_from_memory_and_disk(tmp_path, make_phantoms):
    from ldmtool.evaluate import downstream as ds

    images, labels = make_phantoms(5, 3)
    cfg = ds.DownstreamConfig(channels=(4, 8), steps=8, batch_size=4, real_share=0.5)
    out = []
    for budget in (cs.IN_MEMORY_BYTES, 0):
        train_vs, _ = _reader_set(images[:3], labels[:3], "train")
        test_vs, _ = _reader_set(images[3:], labels[3:], "test")
        with cs.CaseStore(tmp_path, budget=budget) as store:
            train, test = store.get(train_vs), store.get(test_vs)
            n = max(train.max_label(), test.max_label()) + 1
            model = ds.train_segmenter(train + test.subset([0]), n, cfg, torch.device("cpu"), 0, n_real=3)
            out.append(
                [ds.evaluate_segmenter(model, test, n, cfg, torch.device("cpu"), 0, p) for p in ("clean", "pgd")]
            )
            clf = ds.train_classifier(train.with_targets([0, 1, 0]), 2, cfg, torch.device("cpu"), 0)
            out[-1].append(ds.evaluate_classifier(clf, test.with_targets([1, 0]), 2, cfg, torch.device("cpu"), 0))
    (mem_clean, mem_pgd, mem_acc), (disk_clean, disk_pgd, disk_acc) = out
    assert np.array_equal(mem_clean, disk_clean) and np.array_equal(mem_pgd, disk_pgd) and mem_acc == disk_acc


def test_evaluate_unpacks_large_sets_and_reports_the_same(sets_dir, tmp_path, monkeypatch):
    from ldmtool.config import EvaluateConfig
    from ldmtool.evaluate.report import run_evaluation

    cfg = EvaluateConfig(
        only=("utility", "robustness"), seg_steps=5, seg_channels=(4, 8), seg_batch_size=4, utility_curve=(2,)
    )
    reps = []
    for budget in (cs.IN_MEMORY_BYTES, 0):
        monkeypatch.setattr(cs, "IN_MEMORY_BYTES", budget)
        out = tmp_path / f"r{budget}"
        kw = {"train_dir": sets_dir / "train", "test_dir": sets_dir / "test"}
        reps.append(run_evaluation(sets_dir / "test", sets_dir / "copies", out, cfg, **kw))
        assert not list(out.glob(".downstream-cases-*"))  # scratch removed
    mem, disk = reps
    assert mem["utility"]["cases_held"] == "memory" and disk["utility"]["cases_held"] == "memory-mapped files"
    for key in ("utility", "robustness", "utility_curve"):
        a, b = (json.dumps(r[key]["results"], sort_keys=True) for r in (mem, disk))
        assert a == b, key


def test_cases_read_by_an_earlier_stage_are_not_read_again(tmp_path, make_phantoms):
    images, labels = make_phantoms(4, 5)
    vs, reads = _reader_set(images, labels)
    with cs.CaseStore(tmp_path, budget=0) as store:
        store.watch(vs)
        for i in (0, 2):  # an earlier stage streams part of the set
            vs.read(i)
        got = store.get(vs)
        assert sorted(reads) == [0, 1, 2, 3]  # only the two cases no stage had read
        vs.read(1)
        assert store.get(vs) is got and vs._store["taps"] == []  # done: nothing kept any more
        img, lab = got.case(2)
        assert np.array_equal(np.asarray(img), images[2]) and np.array_equal(np.asarray(lab), labels[2])


def test_evaluate_reads_each_volume_once_for_features_and_downstream(sets_dir, tmp_path):
    from ldmtool.config import EvaluateConfig
    from ldmtool.evaluate.report import run_evaluation

    small = dict(seg_steps=3, seg_channels=(4, 8), seg_batch_size=4, audit_steps=0, cache_dir="none")
    kw = {"train_dir": sets_dir / "train", "test_dir": sets_dir / "test"}
    both = run_evaluation(
        sets_dir / "test",
        sets_dir / "copies",
        tmp_path / "a",
        EvaluateConfig(only=("privacy", "utility"), **small),
        **kw,
    )
    alone = run_evaluation(
        sets_dir / "test", sets_dir / "copies", tmp_path / "b", EvaluateConfig(only=("utility",), **small), **kw
    )
    # the privacy feature pass reads train, synthetic and test (= real): the downstream models keep them
    assert not [k for k in both["stage_seconds"] if k.startswith("reading")]
    assert {k for k in alone["stage_seconds"] if k.startswith("reading")} == {
        f"reading {n} for the downstream models" for n in ("train", "synthetic", "test")
    }
    assert both["utility"]["results"] == alone["utility"]["results"]
