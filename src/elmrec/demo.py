"""``elmrec demo``: the whole product on built-in synthetic data in a few minutes.

Generates a dataset with planted structure, trains a tiny ELMRec for a fixed number of steps (the
same figures on every machine for a seed; an optional time cap trades that for speed), compares
it with popularity on both tasks (test split), shows one user's recommendations next to their
history, and saves a learning-curve plot and the checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .baselines import PopularityScorer
from .config import load_config
from .evaluation import evaluate, format_table, sample_users
from .formats import write_p5
from .recommender import Recommender
from .synthetic import make_synthetic
from .training import LOG_FILE, train, validation_metrics

# A dataset whose planted transitions a tiny model picks up in a couple of CPU minutes.
DEMO_DATA = dict(n_users=600, n_items=40, n_communities=4, p_successor=0.9, min_len=4, max_len=8, n_negatives=19)
# Small whole-word scales: with a randomly initialised T5 (token embeddings of std 1) the paper's
# alpha of 6-9 (tuned on pretrained t5-small) drowns the token identity; see README.
DEMO_CONFIG = dict(size="tiny", graph_alpha=3.0, seq_alpha=0.1, dropout=0.0, lr=3e-3, batch_size=32, valid_users=100,
                   n_negatives=19, epochs=12, patience=100)  # 12 epochs: about a minute on 2 cores


def plot_learning_curves(run_dir: Path, path: Path) -> Path:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    log = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines()]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    trained = [r for r in log if "train" in r]
    for task in trained[0]["train"]:
        ax1.plot([r["epoch"] for r in trained], [r["train"][task]["loss"] for r in trained], "o-",
                 label=f"train {task}")  # markers: a run of one epoch still shows its points
    ax1.plot([r["epoch"] for r in log], [r["valid_loss"]["mean"] for r in log], "ko--", label="validation (mean)")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax1.legend()
    with_metrics = [r for r in log if "valid_metrics" in r]
    for task in ("sequential", "direct"):
        ax2.plot([r["epoch"] for r in with_metrics], [r["valid_metrics"][task]["NDCG@10"] for r in with_metrics],
                 "o-", label=f"{task} NDCG@10")
    ax2.set(xlabel="epoch", title="validation metrics")
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


MARKER = ".elmrec-demo"


def run_demo(
    out: str | Path = "demo", minutes: float | None = None, seed: int = 0, progress: bool = True,
    overwrite: bool = False,
) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not overwrite:
        raise FileExistsError(f"{out} is not empty and not a demo folder; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    t0 = time.time()
    dataset = make_synthetic(seed=seed, **DEMO_DATA)
    write_p5(dataset, out / "data", overwrite=True)
    print(f"[1/5] synthetic data: {dataset.n_users} users, {dataset.n_items} items -> {out / 'data'}")

    cfg = load_config(overrides={**DEMO_CONFIG, "budget_minutes": minutes, "seed": seed})
    run_dir = out / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cap = f", at most {minutes:g} minutes" if minutes else ""
    print(f"[2/5] training a tiny ELMRec: {cfg.train.epochs} epochs{cap}")
    users = sample_users(dataset, 100, seed=seed)
    result = train(cfg, dataset, run_dir, progress=progress, validate=validation_metrics(dataset, users, cfg))

    print("[3/5] test split: ELMRec against popularity")
    rec = Recommender.from_pretrained(run_dir / "best", device="cpu")
    pop = PopularityScorer(dataset)
    rows = {}
    for task in ("sequential", "direct"):
        for name, scorer in (("ELMRec", rec), ("popularity", pop)):
            rows[f"{name} {task}"] = evaluate(scorer, dataset, task, "test", progress=False)
    print(format_table(rows))

    user = int(users[0])
    recs = rec.recommend(user=user, top_n=5)
    print(f"[4/5] user {user}: history (oldest first) {dataset.history(user).tolist()}")
    print("      top-5: " + ", ".join(f"{r.item} ({r.score:.2f})" for r in recs))
    if dataset.has_explanations:
        print(f"      why item {recs[0].item}? \"{rec.explain(user, recs[0].item)}\"")

    plot = plot_learning_curves(run_dir, out / "learning_curves.png")
    print(f"[5/5] plot: {plot}   checkpoint: {run_dir / 'best'}   ({time.time() - t0:.0f} s in all)")
    return {"train": result, "plot": str(plot), "checkpoint": str(run_dir / "best"),
            "metrics": {k: v.metrics for k, v in rows.items()}}
