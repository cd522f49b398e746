"""Training: samplers, determinism, resume, learning, configuration."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from elmrec import tasks as T
from elmrec.config import PRESETS, load_config
from elmrec.data import Dataset
from elmrec.training import train

FAST = dict(size="tiny", batch_size=16, steps_per_epoch=2, valid_users=20, warmup_steps=2, n_negatives=9,
            eval_batch_size=8)


def _cfg(**overrides):
    return load_config(overrides={**FAST, **overrides})


def test_every_prefix_samples_hold_the_training_history_or_a_window_of_it():
    from elmrec.prompts import target_text

    ds = Dataset.from_histories([[1, 2, 3, 4, 5, 6], list(range(1, 31)), [7, 8, 9]], n_items=30)
    rng = np.random.default_rng(0)
    for _ in range(20):
        short, long_ = T.sequential_train_samples(ds, np.array([1, 2, 3]), rng, max_history=5, every_prefix=True)
        # user 3 has one training item: no prefix to train
        assert short.items == (1, 2, 3) and short.target == 4 and short.prefixes  # the last two are held out
        window = (*long_.items, long_.target)
        assert len(window) == 6 and window == tuple(range(window[0], window[0] + 6)) and window[-1] <= 28
        assert target_text(short, "item") == "item_2 item_3 item_4"


def test_sequential_samples_stay_inside_training_history():
    ds = Dataset.from_histories([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10]], n_items=10)
    rng = np.random.default_rng(0)
    for _ in range(50):
        for s in T.sequential_train_samples(ds, ds.users, rng, max_history=2):
            train_items = list(ds.split_history(s.user, "train"))
            seg = list(s.items) + [s.target]
            assert 1 <= len(s.items) <= 2
            assert any(train_items[k : k + len(seg)] == seg for k in range(len(train_items)))


def test_sequential_continuations_are_what_followed_the_target_in_training():
    ds = Dataset.from_histories([[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12]], n_items=12)
    lengths = set()
    for seed in range(30):
        plain = T.sequential_train_samples(ds, ds.users, np.random.default_rng(seed), max_history=3)
        more = T.sequential_train_samples(ds, ds.users, np.random.default_rng(seed), max_history=3, targets=3)
        for a, b in zip(plain, more):
            assert (a.user, a.items, a.target, a.continuation) == (b.user, b.items, b.target, ())  # same draws
            train_items = list(ds.split_history(b.user, "train"))  # never the validation/test items
            seg = list(b.items) + [b.target, *b.continuation]
            assert len(b.continuation) <= 2 and any(train_items[k : k + len(seg)] == seg
                                                    for k in range(len(train_items)))
            # the continuation stops only where the training history does
            assert len(b.continuation) == 2 or seg[-1] == train_items[-1]
            lengths.add(len(b.continuation))
    assert lengths == {0, 1, 2}
    sample = T.Sample(T.SEQUENTIAL, 1, (1, 2), 3, (4, 5))
    from elmrec.prompts import target_text

    assert target_text(sample, "item") == "item_3 item_4 item_5" and target_text(sample, "digits") == "3 4 5"


def test_a_pretrained_backbone_takes_the_item_scheme(tmp_path, synthetic_dataset):
    """A user's own T5 and tokenizer (here tiny, saved by the test): the item scheme adds one token
    per user and item to its tokenizer and grows its embeddings; the checkpoint reloads."""
    from transformers import T5Config, T5ForConditionalGeneration

    from elmrec.model import ELMRec
    from elmrec.tokenization import build_tokenizer, id_scheme

    tok = build_tokenizer()
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=32, d_ff=64, num_layers=1,
                                             num_heads=2, d_kv=16, decoder_start_token_id=0))
    t5.save_pretrained(tmp_path / "mini")
    tok.save_pretrained(tmp_path / "mini")
    assert _cfg(backbone=str(tmp_path / "mini")).model.id_tokens == "digits"  # default with a backbone
    cfg = _cfg(backbone=str(tmp_path / "mini"), id_tokens="item", epochs=1, tasks=["sequential", "direct"])
    train(cfg, synthetic_dataset, tmp_path / "run", progress=False, echo=lambda s: None)
    model, tokenizer = ELMRec.from_pretrained(tmp_path / "run" / "best")
    n_ids = synthetic_dataset.n_users + 1 + synthetic_dataset.n_items
    assert id_scheme(tokenizer) == "item" and len(tokenizer) == len(tok) + n_ids
    assert model.t5.config.vocab_size == len(tokenizer) and model.t5.config.d_model == 32
    assert model.item_token_start == tokenizer.convert_tokens_to_ids("item_1")


def test_direct_samples_hold_one_training_positive_and_fresh_negatives():
    ds = Dataset.from_histories([[1, 2, 3, 4, 5, 6]] * 3, n_items=40)
    rng = np.random.default_rng(0)
    seen = set()
    for s in T.direct_train_samples(ds, ds.users, rng, n_negatives=20):
        assert len(set(s.items)) == 21 and s.target in s.items
        assert s.target in (1, 2, 3, 4)  # training part only
        assert not set(s.items) - {s.target} & {1, 2, 3, 4}
        seen.add(s.items)
    assert len(seen) == 3  # resampled per sample


def test_training_explanations_skip_reviews_of_held_out_items():
    ds = Dataset.from_histories(
        [[1, 2, 3, 4]], n_items=4,
        explanations={"train": [(1, 1, "ok"), (1, 4, "test item leak"), (1, 3, "valid leak")]},
    )
    assert [s.target for s in T.explanation_samples(ds, "train")] == ["ok"]


def test_preset_file_and_command_line_layering(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"preset": "beauty", "model": {"graph_alpha": 3}, "train": {"lr": 0.01}}))
    cfg = load_config(path, overrides={"lr": 0.5, "sigma": 2})
    assert cfg.model.graph_alpha == 3 and cfg.model.seq_alpha == PRESETS["beauty"]["seq_alpha"]
    assert cfg.eval.extra_candidates == 15 and cfg.train.lr == 0.5
    assert cfg.model.graph_sigma == cfg.model.seq_sigma == 2
    with pytest.raises(ValueError, match="unknown configuration field 'colour'"):
        load_config(overrides={"colour": 1})
    with pytest.raises(ValueError, match="batch_size"):
        load_config(overrides={"batch_size": "many"})
    with pytest.raises(ValueError, match="unknown preset"):
        load_config(preset="movies")


def _weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_equals_an_uninterrupted_run(tmp_path, synthetic_dataset, ema_decay):
    cfg = _cfg(epochs=2, patience=10, ema_decay=ema_decay)
    train(cfg, synthetic_dataset, tmp_path / "full", progress=False, echo=lambda s: None)

    class Stop(Exception):
        pass

    def interrupt(message):
        if message.startswith("epoch 1:"):
            raise Stop  # the process dies right after epoch 1 was saved

    with pytest.raises(Stop):
        train(cfg, synthetic_dataset, tmp_path / "cut", progress=False, echo=interrupt)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, synthetic_dataset, tmp_path / "cut", progress=False, echo=lambda s: None)
    train(cfg, synthetic_dataset, tmp_path / "cut", resume=True, progress=False, echo=lambda s: None)
    full, cut = _weights(tmp_path / "full" / "last"), _weights(tmp_path / "cut" / "last")
    assert full.keys() == cut.keys()
    for k in full:
        assert (full[k] == cut[k]).all(), k

    def losses(run):
        return [json.loads(ln)["valid_loss"] for ln in (tmp_path / run / "log.jsonl").read_text().splitlines()]

    assert losses("full") == losses("cut")


def test_a_checkpoint_without_the_average_is_not_resumed_as_one(tmp_path, synthetic_dataset):
    from elmrec.training import LAST, _Training

    cfg = _cfg(epochs=1)
    train(cfg, synthetic_dataset, tmp_path / "run", progress=False, echo=lambda s: None)
    averaged = replace(cfg, train=replace(cfg.train, ema_decay=0.9))
    session = _Training(averaged, synthetic_dataset, tmp_path / "run", tokenizer_dir=tmp_path / "run" / LAST)
    with pytest.raises(ValueError, match="without ema_decay"):
        session.restore(tmp_path / "run" / LAST)


def test_moving_average_is_what_validation_reads_and_checkpoints_hold(tmp_path, synthetic_dataset, monkeypatch):
    from elmrec.checkpoint import read_training_state
    from elmrec.training import LAST, _Training

    decay, seen = 0.8, []
    step = _Training.step

    def recording_step(self, batch):
        out = step(self, batch)
        seen.append(self.model.soft_prompts.detach().clone())
        return out

    def validate(model, tokenizer):  # the ranking callback (select_by ndcg) is given the average too
        given.append(model.soft_prompts.detach().clone())
        return {}

    given = []
    monkeypatch.setattr(_Training, "step", recording_step)
    cfg = _cfg(epochs=2, patience=10, tasks=["sequential", "direct"], ema_decay=decay)
    train(cfg, synthetic_dataset, tmp_path / "run", progress=False, echo=lambda s: None, validate=validate)
    # by hand: the first step's weights, then a decay-weighted average of every later step's
    expected = seen[0]
    for w in seen[1:]:
        expected = decay * expected + (1 - decay) * w
    saved = _weights(tmp_path / "run" / LAST)["soft_prompts"]
    assert len(seen) == 8 and torch.allclose(saved, expected, atol=1e-6)
    assert len(given) == 2 and torch.allclose(given[-1], expected, atol=1e-6)
    trained = read_training_state(tmp_path / "run" / LAST, torch.device("cpu"))["trained_weights"]
    assert torch.equal(trained["soft_prompts"], seen[-1]) and not torch.allclose(saved, seen[-1])
    # the logged validation loss is the checkpoint's (not the trained weights', and no graph
    # embeddings cached from older weights): a run without the average reads the model files only
    logged = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["valid_loss"]
    fresh = _Training(replace(cfg, train=replace(cfg.train, ema_decay=None)), synthetic_dataset, tmp_path / "run",
                      tokenizer_dir=tmp_path / "run" / LAST)
    fresh.restore(tmp_path / "run" / LAST)
    assert fresh.validation_loss() == pytest.approx(logged, rel=1e-6)


def test_same_seed_same_model_and_another_seed_differs(tmp_path, synthetic_dataset):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(_cfg(epochs=1, seed=seed), synthetic_dataset, tmp_path / name, progress=False, echo=lambda s: None)
    a, b, c = (_weights(tmp_path / n / "best") for n in "abc")
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)


def test_valid_seed_holds_the_validation_users_while_the_training_seed_changes(tmp_path, synthetic_dataset):
    from elmrec.training import _Training

    def users(**train_fields):  # the users and every validation prompt (direct ones list sampled negatives)
        run = _Training(_cfg(valid_users=20, **train_fields), synthetic_dataset, tmp_path / "run")
        return run.valid_users, torch.cat([b.inputs["input_ids"].flatten() for b in run.valid_batches])

    def same(a, b):
        return np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])

    assert not same(users(seed=1), users(seed=2))  # by default the seed draws them too
    assert same(users(seed=1, valid_seed=7), users(seed=2, valid_seed=7))
    assert same(users(seed=7), users(seed=3, valid_seed=7))


def test_loader_workers_make_the_same_batches_and_unset_settings_follow_the_device(tmp_path, synthetic_dataset):
    """Batches rendered by two loader processes are those rendered in line: the same weights. Unset
    length groups and loader workers resolve per device (4 and 0 on a CPU, 1 and 2 on a GPU)."""
    import torch

    from elmrec.batching import default_length_groups, default_loader_workers

    for name, workers in (("inline", 0), ("workers", 2)):
        train(_cfg(epochs=1, loader_workers=workers), synthetic_dataset, tmp_path / name, progress=False,
              echo=lambda s: None)
    a, b = _weights(tmp_path / "inline" / "best"), _weights(tmp_path / "workers" / "best")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    for name, workers in (("inline", 0), ("workers", 2)):  # the run's config says what ran
        saved = json.loads((tmp_path / name / "config.json").read_text())["train"]
        assert (saved["length_groups"], saved["loader_workers"]) == (4, workers)
    cpu, gpu, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert (default_length_groups(cpu), default_loader_workers(cpu)) == (4, 0)
    assert (default_length_groups(gpu), default_loader_workers(gpu)) == (1, 2)
    assert (default_length_groups(mps), default_loader_workers(mps)) == (4, 0)  # measured on CUDA only
    cfg = _cfg()
    assert cfg.train.length_groups is None and cfg.train.loader_workers is None
    with pytest.raises(ValueError, match=r"train.loader_workers must be >= 0 \(or unset\), got -1"):
        _cfg(loader_workers=-1)


def test_loader_workers_build_the_inline_batches_and_end_with_the_loop(synthetic_dataset):
    """prepared_batches with 2 worker processes yields the batches built in line, tensor for tensor
    and in order; the workers exist while it runs and are gone once the loop is closed early."""
    import multiprocessing

    import torch

    from elmrec.batching import prepared_batches
    from elmrec.tokenization import build_tokenizer

    ds, cfg, cpu = synthetic_dataset, _cfg(), torch.device("cpu")
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    tok = build_tokenizer([s.target for s in T.explanation_samples(ds, "train")])
    rng = np.random.default_rng(0)
    batches = []
    for task in (T.SEQUENTIAL, T.DIRECT, T.EXPLANATION, T.SEQUENTIAL):
        s = T.train_samples(task, ds, ds.users[:24], rng, 20, 9)[:12]
        batches.append((s, rng.integers(4, size=len(s)).tolist()))
    inline = list(prepared_batches(batches, tok, ds.n_users, cfg, cpu, workers=0))
    loaded = list(prepared_batches(batches, tok, ds.n_users, cfg, cpu, workers=2))
    assert [b.task for b in loaded] == [b.task for b in inline] == ["sequential", "direct", "explanation", "sequential"]
    for a, b in zip(inline, loaded):
        assert a.inputs.keys() == b.inputs.keys() and all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
        assert torch.equal(a.labels, b.labels) and a.size == b.size

    before = len(multiprocessing.active_children())
    ready = prepared_batches(batches, tok, ds.n_users, cfg, cpu, workers=2)
    next(ready)
    assert len(multiprocessing.active_children()) == before + 2
    ready.close()  # what train_epoch does on a budget stop or an error
    assert len(multiprocessing.active_children()) == before
    # the workers go without the tokenizer's threads; the parent keeps its setting
    assert os.environ.get("TOKENIZERS_PARALLELISM") == parallelism


def test_bf16_autocast_on_cpu_keeps_fp32_weights_and_the_loss(tmp_path, synthetic_dataset):
    """--amp runs bf16 matrix products on a CPU too: the result differs from fp32 (so it is on)
    but the validation losses agree to bf16 precision, and the stored weights stay fp32."""
    logs = {}
    for amp in (False, True):
        train(_cfg(epochs=1, amp=amp), synthetic_dataset, tmp_path / str(amp), progress=False, echo=lambda s: None)
        logs[amp] = [json.loads(ln)["valid_loss"]["mean"] for ln in (tmp_path / str(amp) / "log.jsonl").open()]
    assert logs[True] != logs[False]
    np.testing.assert_allclose(logs[True], logs[False], rtol=0.02)
    weights = _weights(tmp_path / "True" / "best").values()
    assert all(w.dtype.is_floating_point and w.dtype.itemsize == 4 for w in weights)


def test_resume_refuses_another_dataset(tmp_path, synthetic_dataset):
    train(_cfg(epochs=1), synthetic_dataset, tmp_path / "run", progress=False, echo=lambda s: None)
    other = Dataset.from_histories([[1, 2, 3]] * 4, n_items=3)
    with pytest.raises(ValueError, match="trained on dataset"):
        train(_cfg(epochs=1), other, tmp_path / "run", resume=True, progress=False)


def test_tiny_model_learns_within_a_minute(tmp_path, synthetic_dataset):
    # the digits scheme: its token losses (id pieces, </s>) halve within a minute on this data; the
    # item scheme's learning is tested on planted transitions (test_recommender's quick model)
    cfg = load_config(overrides=dict(size="tiny", id_tokens="digits", batch_size=16, epochs=8, valid_users=None,
                                     warmup_steps=10, n_negatives=19, budget_minutes=1.0))
    result = train(cfg, synthetic_dataset, tmp_path / "run", progress=False, echo=lambda s: None)
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    start = log[0]["valid_loss"]
    assert log[0]["epoch"] == 0
    assert set(start) == {"explanation", "sequential", "direct", "mean"}
    assert result["best_valid_loss"] < 0.5 * start["mean"]
    assert set(log[0]["item_prior_loss"]) == {"sequential", "direct"}  # not for explanations
    for task in ("sequential", "direct", "explanation"):
        assert min(rec["valid_loss"][task] for rec in log[1:]) < 0.6 * start[task]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["n_negatives"] == 19


def test_settings_that_cannot_work_are_refused():
    for bad in ({"max_history": 0}, {"top_n": -1}, {"eval_batch_size": 0}, {"budget_minutes": 0},
                {"valid_users": 0}, {"n_positions": 10, "max_history": 20}, {"graph_self_weight": -1},
                {"graph_self_weight": 0, "graph_layers": 0}, {"seq_targets": 0},
                {"seq_targets": 3, "id_tokens": "digits"}, {"direct_decode": "beam", "id_tokens": "item"},
                {"ema_decay": 1.0}, {"ema_decay": 0}, {"label_smoothing": 1.0}, {"label_smoothing": -0.1},
                {"seed": -1}, {"valid_seed": -3}):
        with pytest.raises(ValueError, match="invalid configuration"):
            load_config(overrides=bad)
    assert load_config(overrides={"seq_targets": 3}).train.seq_targets == 3  # item scheme by default


def test_select_by_ndcg_keeps_the_epoch_of_the_highest_validation_ndcg(tmp_path, synthetic_dataset):
    # scripted NDCG@10: best at epoch 2 although the loss may fall later; patience 2 stops after 4
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.9])

    def validate(model, tokenizer):
        return {"sequential": {"NDCG@10": next(scripted)}}

    cfg = _cfg(epochs=5, patience=2, tasks=["sequential"], select_by="ndcg")
    result = train(cfg, synthetic_dataset, tmp_path / "run", progress=False, echo=lambda s: None, validate=validate)
    assert result["stopped"] == "early_stopping" and result["epochs"] == 4
    assert result["best_epoch"] == 2 and result["best_valid_ndcg"] == 0.3
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["best_epoch"] for r in log[1:]] == [1, 2, 2, 2]
    assert result["best_valid_loss"] == log[2]["valid_loss"]["mean"]  # the loss of best/, not the lowest
    best, last = _weights(tmp_path / "run" / "best"), _weights(tmp_path / "run" / "last")
    assert any((best[k] != last[k]).any() for k in best)  # best/ stayed at epoch 2

    # without a callback the run measures its own validation NDCG on the validation-loss users; a
    # resumed run takes up the same selection (best, best epoch) and ends with the same best/
    own = _cfg(epochs=3, tasks=["sequential"], select_by="ndcg", valid_users=30, lr=3e-3)
    result = train(own, synthetic_dataset, tmp_path / "own", progress=False, echo=lambda s: None)
    log = [json.loads(ln) for ln in (tmp_path / "own" / "log.jsonl").read_text().splitlines()][1:]
    ndcg = [r["valid_metrics"]["sequential"]["NDCG@10"] for r in log]
    assert result["best_valid_ndcg"] == max(ndcg) and log[-1]["best_epoch"] == 1 + int(np.argmax(ndcg))
    assert len(set(ndcg)) > 1  # the epochs differ, so the choice means something

    class Stop(Exception):
        pass

    def interrupt(message):
        if message.startswith("epoch 2:"):
            raise Stop

    with pytest.raises(Stop):
        train(own, synthetic_dataset, tmp_path / "cut", progress=False, echo=interrupt)
    resumed = train(own, synthetic_dataset, tmp_path / "cut", resume=True, progress=False, echo=lambda s: None)
    assert {k: v for k, v in resumed.items() if k not in ("checkpoint", "elapsed_s")} == \
        {k: v for k, v in result.items() if k not in ("checkpoint", "elapsed_s")}
    full, cut = _weights(tmp_path / "own" / "best"), _weights(tmp_path / "cut" / "best")
    assert all((full[k] == cut[k]).all() for k in full)

    with pytest.raises(ValueError, match="NDCG@10"):
        train(cfg, synthetic_dataset, tmp_path / "bad", progress=False, echo=lambda s: None,
              validate=lambda m, t: {"sequential": {"HR@10": 0.5}})
    with pytest.raises(ValueError, match="select_by 'ndcg' needs a ranking task"):
        load_config(overrides={"select_by": "ndcg", "tasks": ["explanation"]})


def test_resume_may_extend_epochs_and_says_when_nothing_is_left(tmp_path, synthetic_dataset):
    train(_cfg(epochs=1), synthetic_dataset, tmp_path / "run", progress=False, echo=lambda s: None)
    said = []
    train(_cfg(epochs=1), synthetic_dataset, tmp_path / "run", resume=True, progress=False, echo=said.append)
    assert any("nothing to do" in s for s in said)
    result = train(_cfg(epochs=2, lr=0.5), synthetic_dataset, tmp_path / "run", resume=True, progress=False,
                   echo=lambda s: None)
    assert result["epochs"] == 2
    saved = json.loads((tmp_path / "run" / "last" / "run_config.json").read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["lr"] != 0.5  # only run length may change
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_cfg(), synthetic_dataset, tmp_path / "empty", resume=True, progress=False)


RECIPE = dict(causal_history=True, last_item_start=True, sequential_user=False, seq_targets=1)  # every prefix
DIRECT_RECIPE = dict(tasks=["direct"], direct_loss="candidates", graph_init="cooccurrence", item_init="cooccurrence",
                     user_start=True, hide_direct_edges=True, seq_targets=1)


@pytest.mark.parametrize("task,scheme,extra", [(T.SEQUENTIAL, "digits", {}), (T.SEQUENTIAL, "item", {}),
                                               (T.DIRECT, "digits", {}),
                                               (T.SEQUENTIAL, "item", RECIPE),
                                               (T.DIRECT, "item", DIRECT_RECIPE)])
def test_micro_batches_give_the_gradients_of_the_whole_batch(tmp_path, task, scheme, extra):
    """forward_backward's chunks and length groups give the gradients of one plain backward of the
    batch, also for the recipe's every-prefix loss."""
    import torch

    from elmrec.batching import make_batch
    from elmrec.training import _Training, forward_backward

    rng = np.random.default_rng(0)  # digits: ids 1..150 are one- and two-token targets
    ds = Dataset.from_histories([rng.choice(np.arange(1, 151), int(rng.integers(5, 10)), replace=False).tolist()
                                 for _ in range(40)], n_items=150)  # histories of several lengths
    # item: 1 to 3 targets; every prefix (RECIPE): one per history item
    cfg = _cfg(dropout=0.0, id_tokens=scheme, **{"seq_targets": 3 if scheme == "item" else 1, **extra})
    run = _Training(cfg, ds, tmp_path)
    samples, templates = next((s, t) for s, t in run.epoch_batches(0) if s[0].task == task)
    batch = make_batch(samples, templates, run.tokenizer, ds.n_users, cfg, run.device)
    # targets of different lengths make an unweighted mean of chunk means differ from the batch mean
    # (a direct item-scheme target is one token; there the batch's own hidden edges are the point)
    assert len(set((batch.labels != -100).sum(1).tolist())) > 1 or extra is DIRECT_RECIPE

    def grads(micro, groups=1):
        run.model.zero_grad(set_to_none=True)
        loss = forward_backward(run.model, batch, micro, length_groups=groups)
        return loss, [p.grad.clone() for p in run.model.parameters() if p.grad is not None]

    run.model.zero_grad(set_to_none=True)  # the reference: one plain forward of the padded batch
    whole_loss = run.model(batch.task, **batch.inputs, labels=batch.labels)
    whole_loss.backward()
    whole = [p.grad.clone() for p in run.model.parameters() if p.grad is not None]
    if extra is DIRECT_RECIPE:  # the start and the hidden-edge propagation pass gradients to E0
        assert run.model.training and run.model.graph_table.grad.abs().sum() > 0
    # micro-batches in batch order, and length groups: sorted, each cut to its own longest prompt
    # (the graph embeddings of the direct task then propagated once for all groups)
    for micro, groups in ((None, 1), (3, 1), (None, 4), (5, 3)):
        part_loss, part = grads(micro, groups)
        assert torch.allclose(whole_loss, part_loss, atol=1e-5)
        assert len(whole) == len(part) > 0
        for a, b in zip(whole, part):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_graph_head_batch_in_chunks_propagates_the_graph_once(tmp_path):
    """With ``graph_head`` a sequential batch reads the graph at its outputs only; split into
    micro-batches it still propagates LightGCN once, not once per chunk."""
    from elmrec.batching import chunks, make_batch
    from elmrec.training import _Training, forward_backward

    rng = np.random.default_rng(0)
    ds = Dataset.from_histories([rng.choice(np.arange(1, 151), 8, replace=False).tolist() for _ in range(40)],
                                n_items=150)
    cfg = _cfg(dropout=0.0, id_tokens="item", graph_head=True)
    run = _Training(cfg, ds, tmp_path)
    samples, templates = next((s, t) for s, t in run.epoch_batches(0) if s[0].task == T.SEQUENTIAL)
    batch = make_batch(samples, templates, run.tokenizer, ds.n_users, cfg, run.device)
    assert len(list(chunks(batch, 3, 1))) > 1
    calls, propagate = [], run.model._propagate
    run.model._propagate = lambda: calls.append(1) or propagate()
    forward_backward(run.model, batch, 3, length_groups=1)
    assert len(calls) == 1


def test_length_groups_cover_the_batch_and_cut_padding(tmp_path, synthetic_dataset):
    import dataclasses

    import torch

    from elmrec.batching import chunks, make_batch
    from elmrec.training import _Training

    run = _Training(_cfg(), synthetic_dataset, tmp_path)
    samples, templates = next((s, t) for s, t in run.epoch_batches(0) if s[0].task == T.SEQUENTIAL)
    batch = make_batch(samples, templates, run.tokenizer, synthetic_dataset.n_users, run.cfg, run.device)
    parts = list(chunks(batch, length_groups=4))
    assert len(parts) == 4 and sum(len(labels) for _, labels in parts) == batch.size
    widths = [inputs["input_ids"].shape[1] for inputs, _ in parts]
    assert widths == sorted(widths) and widths[0] < batch.inputs["input_ids"].shape[1]
    seen = []
    for inputs, labels in parts:  # every row keeps all its real tokens, and each chunk has no empty column
        assert inputs["attention_mask"][:, -1].any() and (labels[:, -1] != -100).any()
        seen += [tuple(row[m > 0].tolist()) for row, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    full = [tuple(row[m > 0].tolist()) for row, m in zip(batch.inputs["input_ids"], batch.inputs["attention_mask"])]
    assert sorted(seen) == sorted(full)
    assert len(list(chunks(batch, micro_batch_size=batch.size, length_groups=1))) == 1
    # prompts of one length: groups would cut no padding, so the batch stays whole, micro-batch or not
    same = dataclasses.replace(batch, inputs={n: t[:, :5] for n, t in batch.inputs.items()})
    same.inputs["attention_mask"] = torch.ones_like(same.inputs["attention_mask"])
    for micro in (None, batch.size):
        assert len(list(chunks(same, micro_batch_size=micro, length_groups=4))) == 1
    assert len(list(chunks(same, micro_batch_size=batch.size // 2, length_groups=4))) == 2
    with pytest.raises(ValueError, match=r"train.length_groups must be >= 1 \(or unset\), got 0"):
        _cfg(length_groups=0)


def test_a_non_finite_loss_stops_training_with_advice(tmp_path, synthetic_dataset, monkeypatch):
    import torch

    from elmrec.model import ELMRec

    monkeypatch.setattr(ELMRec, "forward", lambda self, *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(FloatingPointError, match=r"non-finite \w+ loss in epoch 1; lower --lr.*last good state"):
        train(_cfg(epochs=1), synthetic_dataset, tmp_path / "run", echo=lambda s: None)


def test_running_out_of_gpu_memory_is_one_line_with_advice(tmp_path, synthetic_dir, monkeypatch, capsys):
    import torch

    from elmrec.cli import main
    from elmrec.model import ELMRec

    real = ELMRec.forward

    def forward(self, *a, **k):  # training steps only: validation must not be what fails
        if torch.is_grad_enabled():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *a, **k)

    monkeypatch.setattr(ELMRec, "forward", forward)
    args = ["train", "--data", str(synthetic_dir), "--out", str(tmp_path / "run"), "--size", "tiny", "--epochs", "1",
            "--batch-size", "16", "--steps-per-epoch", "2", "--valid-users", "20", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of GPU memory in a ") and "--micro-batch-size" in err and "\n" not in err


def test_task_repeats_give_a_task_more_batches_per_turn(tmp_path, synthetic_dataset):
    from elmrec.training import _Training

    cfg = _cfg(task_repeats="sequential=3", tasks=[T.SEQUENTIAL, T.DIRECT])
    assert cfg.train.task_repeats == {T.SEQUENTIAL: 3}
    run = _Training(cfg, synthetic_dataset, tmp_path)
    order = [s[0].task for s, _ in run.epoch_batches(0)]
    assert order == [T.SEQUENTIAL] * 3 + [T.DIRECT] + [T.SEQUENTIAL] * 3 + [T.DIRECT]  # steps_per_epoch 2
    # the repeated batches are fresh samples, not one batch three times
    seq = [tuple((x.user, x.items) for x in s) for s, _ in run.epoch_batches(0) if s[0].task == T.SEQUENTIAL]
    assert len(set(seq)) == len(seq)
    for bad, words in (("sequential=0", "must be >= 1"), ("ranking=2", "unknown task"),
                       ("sequential", "expected KEY=N")):
        with pytest.raises(ValueError, match=words):
            _cfg(task_repeats=bad)


def test_direct_curriculum_grows_the_training_list_but_not_the_validation_list(tmp_path, synthetic_dataset):
    from elmrec.training import _Training, direct_negatives

    cfg = _cfg(n_negatives=9, n_negatives_start=1, curriculum_epochs=4, tasks=[T.DIRECT])
    assert [direct_negatives(cfg.train, e) for e in range(7)] == [1, 3, 5, 7, 9, 9, 9]
    assert direct_negatives(_cfg(n_negatives=9).train, 0) == 9  # off by default
    run = _Training(cfg, synthetic_dataset, tmp_path)
    for epoch, n in ((0, 2), (2, 6), (4, 10), (9, 10)):
        lists = {len(x.items) for s, _ in run.epoch_batches(epoch) for x in s}
        assert lists == {n}, (epoch, lists)
    # without negative.txt the validation lists are sampled with n_negatives: the curriculum must not shorten them
    rng = np.random.default_rng(0)
    ds = Dataset.from_histories([rng.choice(np.arange(1, 61), 6, replace=False).tolist() for _ in range(30)],
                                n_items=60)
    assert ds.negatives is None
    for c in (cfg, _cfg(n_negatives=9, tasks=[T.DIRECT])):
        v = _Training(c, ds, tmp_path / "v")
        words = [v.tokenizer.decode(ids) for b in v.valid_batches for ids in b.inputs["input_ids"]]
        assert {w.count("item_") for w in words} == {10}, words[0]
    for bad, words in ((dict(n_negatives_start=0), "between 1 and"), (dict(n_negatives_start=10), "between 1 and"),
                       (dict(n_negatives_start=1, curriculum_epochs=0), "curriculum_epochs must be >= 1")):
        with pytest.raises(ValueError, match=words):
            _cfg(**bad)
    train(_cfg(epochs=2, n_negatives_start=1, curriculum_epochs=1, tasks=[T.DIRECT]), synthetic_dataset,
          tmp_path / "run", progress=False, echo=lambda s: None)
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["train"][T.DIRECT]["negatives"] for r in log if "train" in r] == [1, 9]


def test_linear_schedule_warms_up_then_decays_to_zero_at_the_last_epoch(tmp_path, synthetic_dataset):
    cfg = _cfg(lr_schedule="linear", epochs=2, warmup_steps=2, lr=1e-3, tasks=[T.SEQUENTIAL, T.DIRECT])
    train(cfg, synthetic_dataset, tmp_path / "run", progress=False, echo=lambda s: None)
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # 4 batches an epoch (2 per task), 8 in all: after epoch 1 (4 steps) 1e-3 * (8 - 4) / (8 - 2)
    assert log[1]["lr"] == pytest.approx(1e-3 * 4 / 6) and log[2]["lr"] == 0.0
    assert _cfg(lr=1e-3).train.lr_schedule == "constant"
    with pytest.raises(ValueError, match="lr_schedule"):
        _cfg(lr_schedule="cosine")


def test_item_prior_loss_computed_by_hand():
    """Items 1..123, none seen in training but item 12 (four times): with +1 smoothing the masses
    are 1 everywhere and 5 for item 12, 127 in all. Item 123 is written ▁ 12 3 </s>, and
    the items starting with chunk 12 are 12, 120..123 (mass 9): P = 1 * 9/127 * 1/9 * 1 = 1/127.
    Item 12 (▁ 12 </s>): 9/127 * 5/9 = 5/127. One batch holds both: the token mean over 7 tokens."""
    import math

    from elmrec.batching import Batch
    from elmrec.tokenization import build_tokenizer, encode_targets
    from elmrec.training import item_prior_loss

    tok = build_tokenizer()
    counts = np.zeros(124)
    counts[12] = 4
    labels = encode_targets(tok, ["123", "12"])
    assert tok.convert_ids_to_tokens(labels[0].tolist()) == ["\u2581", "12", "3", "</s>"]
    batch = Batch("sequential", {}, labels, 2)
    explanation = Batch("explanation", {}, encode_targets(tok, ["nice"]), 1)
    expected = (math.log(127) + math.log(127 / 5)) / 7
    prior = item_prior_loss([batch, explanation], tok, counts)
    assert prior == pytest.approx({"sequential": expected})
    # batches are weighted by their samples, as the model's validation loss is
    prior = item_prior_loss([batch, Batch("sequential", {}, labels[:1, :], 1)], tok, counts)
    assert prior["sequential"] == pytest.approx((2 * expected + math.log(127) / 4) / 3)


def test_the_quick_model_goes_below_the_item_prior_on_sequential_validation(trained_checkpoint):
    """The validation loss means something only against the item prior: the quick model (which
    beats popularity, tests of inference) must be well below it where it reads its history."""
    log = [json.loads(ln) for ln in (trained_checkpoint.parent / "log.jsonl").read_text().splitlines()]
    prior = log[0]["item_prior_loss"]["sequential"]
    assert min(rec["valid_loss"]["sequential"] for rec in log[1:]) < 0.9 * prior


def test_candidate_prior_of_direct_prompts_computed_by_hand():
    """direct_loss 'candidates': the prior's softmax runs over the prompt's items. Counts + 1: item 2
    -> 4, items 1 and 3 -> 1; a prompt listing 1, 2, 3 with target 2 costs log(6/4), one listing 1
    and 3 with target 3 log(2/1); the mean over the batch's two labels."""
    import math

    from elmrec.batching import Batch
    from elmrec.tokenization import add_id_tokens, build_tokenizer, encode_prompts, encode_targets
    from elmrec.training import item_prior_loss

    tok = add_id_tokens(build_tokenizer(), 2, 3)
    counts = np.array([0, 0, 3, 0])
    from elmrec.prompts import render
    from elmrec.tasks import DIRECT, Sample

    prompts = encode_prompts(tok, [render(Sample(DIRECT, 1, (1, 2, 3), 2), 0, 2, True),
                                   render(Sample(DIRECT, 2, (3, 1), 3), 0, 2, True)])
    labels = encode_targets(tok, ["item_2", "item_3"])
    labels = labels.masked_fill(labels == tok.eos_token_id, -100)
    batch = Batch("direct", prompts, labels, 2)
    prior = item_prior_loss([batch], tok, counts, "item", direct_candidates=True)
    assert prior["direct"] == pytest.approx((math.log(6 / 4) + math.log(2)) / 2)
    # over every item instead: log(6/4) and log(6/1)
    assert item_prior_loss([batch], tok, counts, "item")["direct"] == pytest.approx((math.log(1.5) + math.log(6)) / 2)


def _two_direct_prompts():
    """A tiny item-scheme model with the candidate softmax, two direct prompts and their labels."""
    from elmrec.model import build_model
    from elmrec.prompts import render
    from elmrec.tasks import DIRECT, Sample
    from elmrec.tokenization import add_id_tokens, build_tokenizer, encode_prompts, encode_targets, item_token_start

    tok = add_id_tokens(build_tokenizer(), 5, 12)
    cfg = _cfg(size="tiny", dropout=0.0, direct_loss="candidates").model
    model = build_model(cfg, 5, 12, np.array([1, 2, 3]), np.array([1, 3, 5]), len(tok), 0, item_token_start(tok, 12))
    model.eval()
    samples = [Sample(DIRECT, 2, (3, 7, 11), 7), Sample(DIRECT, 4, (12, 1), 1)]
    batch = encode_prompts(tok, [render(s, 1, 5, True) for s in samples])
    labels = encode_targets(tok, [f"item_{s.target}" for s in samples])
    labels = labels.masked_fill(labels == tok.eos_token_id, -100)
    return model, samples, batch, labels


def test_direct_candidate_loss_is_the_cross_entropy_over_the_listed_items():
    from elmrec.generation import item_log_probs
    from elmrec.tasks import DIRECT

    model, samples, batch, labels = _two_direct_prompts()
    with torch.no_grad():
        loss = model(DIRECT, **batch, labels=labels)
        hidden, mask = model.encode(DIRECT, **batch)
        logp = item_log_probs(model, hidden, mask)  # over every item; renormalise over the listed ones
    expected = [-(logp[k, s.target - 1] - logp[k, [i - 1 for i in s.items]].logsumexp(0))
                for k, s in enumerate(samples)]
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=1e-5, atol=1e-5)
    model.config.direct_loss = "items"
    with torch.no_grad():
        everything = model(DIRECT, **batch, labels=labels)
    torch.testing.assert_close(everything, -(logp[0, 6] + logp[1, 0]) / 2, rtol=1e-5, atol=1e-5)


def test_user_start_decodes_a_direct_prompt_from_the_users_own_input_embedding():
    """user_start: the first decoder input is the user's token plus alpha times its graph-aware
    whole-word embedding; training's loss is the cross-entropy of the scores that inference reads
    from that start, and a prompt with the unknown user_0 starts from T5's start token."""
    from elmrec.generation import item_log_probs
    from elmrec.tasks import DIRECT

    model, samples, batch, labels = _two_direct_prompts()
    with torch.no_grad():
        plain = model(DIRECT, **batch, labels=labels)
        model.config.user_start = True
        loss = model(DIRECT, **batch, labels=labels)
        start = model.user_start(batch["input_ids"], batch["whole_word"])
        graph = model.graph_embeddings()
        for k, s in enumerate(samples):  # graph index of user u is u
            token = model.t5.shared.weight[batch["input_ids"][k][batch["whole_word"][k] == s.user][0]]
            torch.testing.assert_close(start[k], token + model.config.graph_alpha * graph[s.user])
        hidden, mask = model.encode(DIRECT, **batch)
        logp = item_log_probs(model, hidden, mask, start)
        unknown = model.user_start(batch["input_ids"], batch["whole_word"].masked_fill(batch["whole_word"] <= 5, 0))
    expected = [-(logp[k, s.target - 1] - logp[k, [i - 1 for i in s.items]].logsumexp(0))
                for k, s in enumerate(samples)]
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=1e-5, atol=1e-5)
    assert abs(float(loss - plain)) > 1e-3  # the start is read
    torch.testing.assert_close(unknown, model.t5.shared.weight[model.t5.config.decoder_start_token_id].expand(2, -1))


def test_hide_direct_edges_propagates_a_training_batch_without_its_own_pairs():
    """hide_direct_edges: a direct training batch's graph embeddings come from the graph without
    its (user, positive) edges, so the loss is the one over that graph; validation (eval mode)
    and the other tasks keep the whole training graph."""
    from elmrec.graph import without_edges
    from elmrec.model import build_model
    from elmrec.prompts import render
    from elmrec.tasks import DIRECT, SEQUENTIAL, Sample
    from elmrec.tokenization import add_id_tokens, build_tokenizer, encode_prompts, encode_targets, item_token_start

    tok = add_id_tokens(build_tokenizer(), 5, 12)
    cfg = _cfg(size="tiny", dropout=0.0, hide_direct_edges=True).model
    users, items = np.array([1, 2, 2, 3, 4]), np.array([1, 3, 4, 5, 3])
    model = build_model(cfg, 5, 12, users, items, len(tok), 0, item_token_start(tok, 12))
    samples = [Sample(DIRECT, 2, (3, 7, 11), 3), Sample(DIRECT, 4, (12, 3), 3)]  # both are training edges
    batch = encode_prompts(tok, [render(s, 1, 5, True) for s in samples])
    labels = encode_targets(tok, [f"item_{s.target}" for s in samples])
    model.train()
    hidden_users, hidden_items = model.training_edges(DIRECT, batch["whole_word"], labels)
    assert hidden_users.tolist() == [2, 4] and hidden_items.tolist() == [5 + 3, 5 + 3]
    with torch.no_grad():
        loss = model(DIRECT, **batch, labels=labels)
        by_hand = model(DIRECT, **batch, labels=labels,
                        graph=model._propagate(without_edges(model.adjacency, hidden_users, hidden_items)))
        whole = model(DIRECT, **batch, labels=labels, graph=model._propagate())
    torch.testing.assert_close(loss, by_hand)
    assert abs(float(loss - whole)) > 1e-4
    assert model.training_edges(SEQUENTIAL, batch["whole_word"], labels) is None
    model.eval()
    assert model.training_edges(DIRECT, batch["whole_word"], labels) is None


def test_label_smoothing_spreads_over_what_the_softmax_can_output():
    """(1 - e) * cross-entropy + e * the mean of -log p over the softmax's outputs: every item and
    </s> for the item softmax, the listed items for the candidate one (not -inf elsewhere)."""
    from elmrec.generation import item_log_probs
    from elmrec.tasks import DIRECT

    model, samples, batch, labels = _two_direct_prompts()
    e = 0.3
    with torch.no_grad():
        smoothed = model(DIRECT, **batch, labels=labels, smoothing=e)
        hidden, mask = model.encode(DIRECT, **batch)
        logp = item_log_probs(model, hidden, mask)
        model.config.direct_loss = "items"
        over_items = model(DIRECT, **batch, labels=labels, smoothing=e)
    expected = []
    for k, s in enumerate(samples):
        listed = logp[k, [i - 1 for i in s.items]]
        listed = listed - listed.logsumexp(0)
        expected.append(-(1 - e) * listed[s.items.index(s.target)] - e * listed.mean())
    torch.testing.assert_close(smoothed, torch.stack(expected).mean(), rtol=1e-5, atol=1e-5)
    eos = torch.log1p(-logp.exp().sum(1, keepdim=True))  # item_log_probs leaves out </s>
    full = torch.cat([eos, logp], 1)
    expected = [-(1 - e) * full[k, s.target] - e * full[k].mean() for k, s in enumerate(samples)]
    torch.testing.assert_close(over_items, torch.stack(expected).mean(), rtol=1e-4, atol=1e-4)


def test_the_vocabulary_loss_is_t5s_own_and_smoothing_spreads_over_the_vocabulary():
    """The explanation (and digits) path computes T5's loss itself, so label smoothing can enter."""
    from elmrec.model import build_model
    from elmrec.prompts import render
    from elmrec.tasks import EXPLANATION, Sample
    from elmrec.tokenization import build_tokenizer, encode_prompts, encode_targets

    tok = build_tokenizer()
    cfg = _cfg(size="tiny", dropout=0.0, id_tokens="digits").model
    model = build_model(cfg, 5, 12, np.array([1, 2, 3]), np.array([1, 3, 5]), len(tok), 0, None)
    model.eval()
    samples = [Sample(EXPLANATION, 2, (7,), "great smell"), Sample(EXPLANATION, 4, (11,), "it lasts all day long")]
    batch = encode_prompts(tok, [render(s, 0, 5, False) for s in samples])
    labels = encode_targets(tok, [s.target for s in samples])
    with torch.no_grad():
        plain, smoothed = (model(EXPLANATION, **batch, labels=labels, smoothing=e) for e in (0.0, 0.2))
        hidden, mask = model.encode(EXPLANATION, **batch)
        t5 = model.t5(encoder_outputs=(hidden,), attention_mask=mask, labels=labels)
    torch.testing.assert_close(plain, t5.loss)
    logp, real = t5.logits.log_softmax(-1), labels != -100
    nll = -logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(smoothed, (0.8 * nll - 0.2 * logp.mean(-1))[real].mean(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fields", [dict(tasks=["sequential", "direct"]),
                                    dict(tasks=["sequential"], causal_history=True)])  # the recipe's loss
def test_label_smoothing_trains_but_validation_loss_stays_plain(tmp_path, synthetic_dataset, fields):
    from elmrec.training import LAST, _Training

    cfg = _cfg(epochs=1, label_smoothing=0.4, **fields)
    train(cfg, synthetic_dataset, tmp_path / "smooth", progress=False, echo=lambda s: None)
    plain = replace(cfg, train=replace(cfg.train, label_smoothing=0.0))
    train(plain, synthetic_dataset, tmp_path / "plain", progress=False, echo=lambda s: None)
    smooth_w, plain_w = _weights(tmp_path / "smooth" / LAST), _weights(tmp_path / "plain" / LAST)
    assert not torch.equal(smooth_w["soft_prompts"], plain_w["soft_prompts"])  # it reached the gradients
    logged = json.loads((tmp_path / "smooth" / "log.jsonl").read_text().splitlines()[-1])["valid_loss"]
    fresh = _Training(plain, synthetic_dataset, tmp_path / "smooth", tokenizer_dir=tmp_path / "smooth" / LAST)
    fresh.restore(tmp_path / "smooth" / LAST)
    assert fresh.validation_loss() == pytest.approx(logged, rel=1e-6)


def test_a_graph_head_scores_an_item_by_its_token_and_graph_embeddings_and_trains_the_graph():
    from elmrec.generation import item_log_probs
    from elmrec.model import build_model
    from elmrec.prompts import render
    from elmrec.tasks import DIRECT, SEQUENTIAL, Sample
    from elmrec.tokenization import add_id_tokens, build_tokenizer, encode_prompts, encode_targets, item_token_start

    tok = add_id_tokens(build_tokenizer(), 5, 12)
    cfg = _cfg(size="tiny", dropout=0.0, graph_head=True, graph_alpha=2.0).model
    model = build_model(cfg, 5, 12, np.array([1, 2, 3]), np.array([1, 3, 5]), len(tok), 0, item_token_start(tok, 12))
    model.eval()
    batch = encode_prompts(tok, [render(Sample(DIRECT, 2, (3, 7, 11), 7), 1, 5, True)])
    with torch.no_grad():
        hidden, mask = model.encode(DIRECT, **batch)
        logp = item_log_probs(model, hidden, mask)
        start = torch.full((1, 1), model.t5.config.decoder_start_token_id)
        state = model.head_states(model.t5.decoder(input_ids=start, encoder_hidden_states=hidden,
                                                   encoder_attention_mask=mask).last_hidden_state[:, -1])
        graph = model.graph_embeddings()
    rows = torch.cat([model.t5.lm_head.weight[[tok.eos_token_id]],
                      model.t5.lm_head.weight[item_token_start(tok, 12) : item_token_start(tok, 12) + 12]
                      + 2.0 * graph[6:18]])
    torch.testing.assert_close(logp, (state @ rows.T).log_softmax(-1)[:, 1:], rtol=1e-5, atol=1e-5)
    # the output reaches the graph table: through the items' rows even where the input does not
    # (sequential prompts use incremental whole-word embeddings)
    model.train()
    seq = encode_prompts(tok, [render(Sample(SEQUENTIAL, 2, (3, 7), 11), 1, 5, True)])
    labels = encode_targets(tok, ["item_11"])
    model(SEQUENTIAL, **seq, labels=labels.masked_fill(labels == tok.eos_token_id, -100)).backward()
    assert model.graph_table.grad is not None and model.graph_table.grad[6:18].abs().sum() > 0


@pytest.mark.parametrize("fields, message", [
    (dict(id_tokens="digits", causal_history=True), "causal_history needs"),
    (dict(causal_history=True, seq_targets=5), "causal_history needs"),
    (dict(id_tokens="digits", direct_loss="candidates"), "direct_loss 'candidates' needs"),
    (dict(id_tokens="digits", graph_head=True), "graph_head needs"),
    (dict(last_item_start=True), "last_item_start needs"),
    (dict(id_tokens="digits", user_start=True), "user_start needs"),
    (dict(id_tokens="digits", hide_direct_edges=True), "hide_direct_edges needs"),
])
def test_item_scheme_training_options_are_refused_with_digits(fields, message):
    with pytest.raises(ValueError, match=message):
        _cfg(size="tiny", **fields)
