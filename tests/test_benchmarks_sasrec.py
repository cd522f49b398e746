"""benchmarks/sasrec.py, the trained ID-based reference: it learns planted transitions in seconds,
obeys the Scorer protocol, reads no held-out item, and repeats itself for a seed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from elmrec.baselines import PopularityScorer
from elmrec.data import Dataset
from elmrec.evaluation import evaluate

# small and quick: a few seconds of training on quick_dataset (600 users, 40 items)
TINY = dict(dim=32, heads=2, ffn_dim=32, max_len=6, dropout=0.1, lr=3e-3, batch_size=64)


@pytest.fixture(scope="module")
def sasrec():
    """benchmarks/sasrec.py as a module (benchmarks/ is not a package); registered in sys.modules
    while loaded, since dataclasses look their module up there."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sasrec.py"
    spec = importlib.util.spec_from_file_location("sasrec_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _train(sasrec, dataset: Dataset, epochs: int, seed: int = 0):
    cfg = sasrec.SASRecConfig(**TINY, max_epochs=epochs)
    return sasrec.train_sasrec(dataset, cfg, budget_minutes=1, seed=seed, valid_users=200, progress=False)


def test_learns_planted_transitions(sasrec, quick_dataset):
    ds = quick_dataset
    scorer = _train(sasrec, ds, epochs=8)
    info = scorer.stats()
    assert info["epochs"] == 8 and 1 <= info["best_epoch"] <= 8 and len(info["history"]) == 8
    for task in ("sequential", "direct"):
        model = evaluate(scorer, ds, task, "valid", progress=False).metrics
        pop = evaluate(PopularityScorer(ds), ds, task, "valid", progress=False).metrics
        assert model["NDCG@10"] > pop["NDCG@10"] + 0.2 and model["HR@10"] > pop["HR@10"], task


def test_scorer_protocol(sasrec, quick_dataset):
    ds = quick_dataset
    scorer = _train(sasrec, ds, epochs=1)
    users = ds.users[:5]
    # a long history (beyond max_len), a short one, an empty one: each scored as if alone
    hist = [ds.split_history(int(u), "test") for u in users[:3]] + [np.arange(1, 20), np.zeros(0, np.int64)]
    full = scorer.score_all(users, hist)
    assert full.shape == (5, ds.n_items + 1) and np.all(full[:, 0] == -np.inf) and np.isfinite(full[:, 1:]).all()
    for r, h in enumerate(hist):  # padding and batch companions change nothing
        assert np.allclose(scorer.score_all(users[r:r + 1], [h])[0, 1:], full[r, 1:], atol=1e-5)
    assert np.allclose(scorer.score_all(users[3:4], [np.arange(14, 20)]), full[3:4], atol=1e-5)  # last max_len
    cands = np.stack([np.r_[ds.targets("test")[u], ds.negatives[u]] for u in users])
    part = scorer.score_candidates(users, hist, cands)
    assert part.shape == cands.shape and np.allclose(part, np.take_along_axis(full, cands, axis=1), atol=1e-5)


def test_training_reads_training_items_only(sasrec):
    hist = [[1, 2, 3, 4, 5, 6], [2, 3, 4, 5], [6, 5, 1, 2, 3]]
    ds = Dataset.from_histories(hist, n_items=9)
    other = Dataset.from_histories([h[:-2] + [9, 8] for h in hist], n_items=9)  # other held-out items
    inputs, targets = sasrec._training_sequences(ds, max_len=3)
    # training parts [1, 2, 3, 4], [2, 3], [6, 5, 1]: inputs drop the last item, targets the first
    assert inputs.tolist() == [[1, 2, 3], [0, 0, 2], [0, 6, 5]]
    assert targets.tolist() == [[2, 3, 4], [0, 0, 3], [0, 5, 1]]
    for a, b in zip((inputs, targets), sasrec._training_sequences(other, max_len=3)):
        assert np.array_equal(a, b)


def test_reproducible_for_a_seed(sasrec, quick_dataset):
    ds = quick_dataset
    hist = [ds.split_history(int(u), "valid") for u in ds.users[:20]]
    a, b, c = (_train(sasrec, ds, epochs=2, seed=s).score_all(ds.users[:20], hist) for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_budget_stops_training(sasrec, quick_dataset):
    cfg = sasrec.SASRecConfig(**TINY)  # no epoch limit: only the budget (0.6 s) stops it
    info = sasrec.train_sasrec(quick_dataset, cfg, budget_minutes=0.01, valid_users=100, progress=False).stats()
    assert info["epochs"] >= 1 and info["train_seconds"] < 5


def test_main_writes_both_tasks(sasrec, quick_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sasrec, "tune_cpu", lambda: False)  # process-wide settings: not in the test process
    out = tmp_path / "sasrec.json"
    argv = ["--data", str(quick_dir), "--max-epochs", "1", "--valid-users", "50", "--out", str(out), "--no-progress"]
    assert sasrec.main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"sequential", "direct"}
    for r in report["results"].values():
        assert r["protocol"]["split"] == "test" and r["protocol"]["all_users"] and "NDCG@10" in r["metrics"]
    assert report["training"]["epochs"] == 1 and report["train_seconds"] > 0
    assert "sasrec/direct/test" in capsys.readouterr().out
