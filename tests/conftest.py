"""Shared fixtures: small synthetic datasets (in memory and as a P5 directory), a factory for
hand-written P5 directories, and the shared Beauty data (skipped where it is absent)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from elmrec.data import Dataset
from elmrec.formats import load_p5, write_p5
from elmrec.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
SHARED_BEAUTY = ROOT.parent / "shared" / "data" / "beauty"

# small enough for a tiny model to train on in seconds; the default arguments give 300 x 200
SYNTHETIC_ARGS = dict(n_users=100, n_items=60, n_communities=3, min_len=5, max_len=12, seed=0)


@pytest.fixture(scope="session")
def synthetic_dataset() -> Dataset:
    """100 users, 60 items, 48 negatives per user, explanations, random item ids."""
    return make_synthetic(**SYNTHETIC_ARGS)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Dataset) -> Path:
    """``synthetic_dataset`` written as a P5-format directory (treat as read-only)."""
    return write_p5(synthetic_dataset, tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture
def make_p5_dir(tmp_path: Path) -> Callable[..., Path]:
    """``make_p5_dir(sequential="1 1 2 3\\n", negative=..., datamaps=..., explanation=...)``:
    a P5 directory with exactly these file contents (None = file absent)."""

    def make(name: str = "p5", **files: str | None) -> Path:
        d = tmp_path / name
        d.mkdir()
        for stem, text in files.items():
            if text is not None:
                suffix = ".json" if stem in ("datamaps", "explanation") else ".txt"
                (d / f"{stem}{suffix}").write_text(text, encoding="utf-8")
        return d

    return make


@pytest.fixture(scope="session")
def shared_beauty() -> Path:
    """Path of ../shared/data/beauty; skips the test in a fresh clone without it."""
    if not (SHARED_BEAUTY / "sequential.txt").is_file():
        pytest.skip("../shared/data/beauty not present (fresh clone)")
    return SHARED_BEAUTY


@pytest.fixture(scope="session")
def beauty(shared_beauty: Path) -> Dataset:
    """The Beauty benchmark, loaded once per session (about 2 s)."""
    return load_p5(shared_beauty)


# --- a trained checkpoint, shared by the inference tests ----------------------------------------

# Planted transitions strong enough that a tiny model learns them in about a minute on 2 cores.
QUICK_DATA = dict(n_users=600, n_items=40, n_communities=4, p_successor=0.9, min_len=4, max_len=8,
                  n_negatives=19, seed=0)
QUICK_TRAIN = dict(size="tiny", graph_alpha=3.0, seq_alpha=0.1, dropout=0.0, lr=3e-3, batch_size=32, valid_users=100,
                   n_negatives=19, epochs=12, patience=100, tasks=["sequential", "direct"])


@pytest.fixture(scope="session")
def quick_dataset() -> Dataset:
    return make_synthetic(**QUICK_DATA)


@pytest.fixture(scope="session")
def quick_dir(tmp_path_factory: pytest.TempPathFactory, quick_dataset: Dataset) -> Path:
    return write_p5(quick_dataset, tmp_path_factory.mktemp("quick") / "data")


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, quick_dataset: Dataset) -> Path:
    """A tiny ELMRec trained for about a minute on ``quick_dataset``: RUN/best."""
    from elmrec.config import load_config
    from elmrec.training import train

    run = tmp_path_factory.mktemp("run") / "run"
    train(load_config(overrides=QUICK_TRAIN), quick_dataset, run, progress=False, echo=lambda s: None)
    return run / "best"


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory, quick_dataset: Dataset) -> Path:
    """``trained_checkpoint`` in the paper's ``digits`` id scheme, for the beam-search paths; 4
    epochs (about 20 s) are enough for their mechanics."""
    from elmrec.config import load_config
    from elmrec.training import train

    run = tmp_path_factory.mktemp("digits") / "run"
    cfg = load_config(overrides={**QUICK_TRAIN, "id_tokens": "digits", "epochs": 4})
    train(cfg, quick_dataset, run, progress=False, echo=lambda s: None)
    return run / "best"
