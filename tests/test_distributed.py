"""torchrun with 2 CPU processes (gloo) against one process: the same training losses and
weights, the same evaluation metrics, and a clean exit when one rank fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from elmrec.cli import main

TRAIN = ["--size", "tiny", "--batch-size", "16", "--dropout", "0", "--epochs", "2", "--steps-per-epoch", "3",
         "--valid-users", "30", "--tasks", "sequential,direct,explanation", "--threads", "1", "--no-progress"]


def elmrec(*args: str, ranks: int = 1, timeout: int = 180) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    cmd = (launcher if ranks > 1 else [sys.executable]) + ["-m", "elmrec", *args]
    # faulthandler: should a rank die of a signal, its Python stacks show where
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ELMREC_DIST_TIMEOUT": "60", "PYTHONFAULTHANDLER": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_dir: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("ddp")
    for name, ranks in (("one", 1), ("two", 2)):
        p = elmrec("train", "--data", str(synthetic_dir), "--out", str(out / name), *TRAIN, ranks=ranks)
        assert p.returncode == 0, p.stderr[-3000:]
    return {"one": out / "one", "two": out / "two"}


def test_two_ranks_follow_the_single_process_run(runs):
    """Batch 16 in one process against 8 + 8 in two, dropout off (its masks depend on the shapes)."""
    one, two = _log(runs["one"]), _log(runs["two"])
    assert len(one) == len(two) == 3  # epoch 0 (before training) and two epochs
    for a, b in zip(one, two):
        for task, loss in a["valid_loss"].items():
            assert b["valid_loss"][task] == pytest.approx(loss, rel=1e-4)
        for task, stats in a.get("train", {}).items():
            assert b["train"][task]["loss"] == pytest.approx(stats["loss"], rel=1e-4)
            assert b["train"][task]["batches"] == stats["batches"]
    w1, w2 = (load_file(runs[r] / "last" / "model.safetensors") for r in ("one", "two"))
    assert w1.keys() == w2.keys()
    # 18 steps of AdamW from summation orders that differ: equal to float tolerance, not bit for bit
    worst = max(float((w1[k] - w2[k]).abs().max() / w1[k].abs().max().clamp(min=1e-6)) for k in w1)
    assert worst < 1e-4, worst
    assert not (runs["two"] / "last" / "training_state.pt.tmp").exists()


def test_a_resumed_two_rank_run_continues_exactly(runs, synthetic_dir, tmp_path):
    cut = tmp_path / "cut"
    k = TRAIN.index("--epochs") + 1
    first = TRAIN[:k] + ["1"] + TRAIN[k + 1 :]  # one epoch, then resume to two
    p = elmrec("train", "--data", str(synthetic_dir), "--out", str(cut), *first, ranks=2)
    assert p.returncode == 0, p.stderr[-3000:]
    p = elmrec("train", "--data", str(synthetic_dir), "--out", str(cut), *TRAIN, "--resume", ranks=2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _log(cut)[-1]["valid_loss"] == pytest.approx(_log(runs["two"])[-1]["valid_loss"], rel=1e-6)
    a, b = (load_file(d / "last" / "model.safetensors") for d in (cut, runs["two"]))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_sharded_evaluation_gives_the_same_metrics(runs, synthetic_dir, tmp_path):
    for task in ("sequential", "direct"):
        results = {}
        for ranks in (1, 2):
            out = tmp_path / f"{task}-{ranks}.json"
            args = ["evaluate", "--checkpoint", str(runs["one"] / "best"), "--data", str(synthetic_dir),
                    "--task", task, "--output", str(out), "--no-progress"]
            if ranks == 1:  # in this process: one start-up less
                assert main(args) == 0
            else:
                p = elmrec(*args, ranks=ranks)
                assert p.returncode == 0, p.stderr[-3000:]
            results[ranks] = json.loads(out.read_text())
        assert results[1]["metrics"] == results[2]["metrics"]
        assert results[1]["protocol"]["n_users"] == results[2]["protocol"]["n_users"] == 100
        assert results[1]["extra"]["users"] == results[2]["extra"]["users"] == 100


def test_a_failing_rank_ends_the_job_with_its_error(synthetic_dir, tmp_path):
    out = tmp_path / "run"
    (out / "config.json").mkdir(parents=True)  # rank 0 cannot write the run's config; rank 1 could go on
    t = time.monotonic()
    p = elmrec("train", "--data", str(synthetic_dir), "--out", str(out), *TRAIN, ranks=2, timeout=120)
    took = time.monotonic() - t
    assert p.returncode != 0
    assert "error (rank 0):" in p.stderr and "config.json" in p.stderr
    assert took < 60, took  # torchrun stops the waiting rank; it does not sit out the gloo timeout


@pytest.mark.parametrize("clean", [True, False])
def test_shutdown_waits_for_the_other_ranks_only_after_a_clean_run(monkeypatch, clean):
    """A rank that finished cleanly waits at a barrier before ending the process group (no rank
    tears its connections down under a peer still at work); a failing rank ends at once."""
    from elmrec import distributed

    calls: list[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(distributed.os, "_exit", lambda code: calls.append(f"exit {code}"))
    distributed.shutdown(clean)
    assert calls == []  # a process group this module did not start is left alone
    monkeypatch.setattr(distributed, "_started_here", True)
    distributed.shutdown(clean)
    # a clean rank waits, ends the group and leaves before the interpreter's teardown
    assert calls == (["barrier", "destroy", "exit 0"] if clean else ["destroy"])
