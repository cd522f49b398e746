"""Tokenizer, prompts, whole-word indices, graph propagation and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from elmrec.config import ModelConfig
from elmrec.data import Dataset
from elmrec.graph import lightgcn, normalized_adjacency, to_torch_sparse
from elmrec.model import ELMRec, build_model
from elmrec.prompts import EVAL_TEMPLATE, TEMPLATES, render
from elmrec.tasks import DIRECT, EXPLANATION, SEQUENTIAL, Sample
from elmrec.tokenization import (
    add_id_tokens,
    build_tokenizer,
    encode_prompts,
    encode_targets,
    id_scheme,
    item_token_start,
    item_vocab_ids,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(["great scent and long lasting"])


@pytest.fixture(scope="module")
def item_tokenizer():
    """The ``item`` scheme for 5 users and 12 items (the shape of ``_tiny_model``'s graph)."""
    return add_id_tokens(build_tokenizer(["great scent and long lasting"]), 5, 12)


def test_ids_split_into_pieces_like_sentencepiece(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.tokenize("user_123 item_4567") == ["▁user", "_", "12", "3", "▁item", "_", "45", "67"]
    # targets are bare numbers; decoding gives the number back
    ids = loaded("12101")["input_ids"]
    assert loaded.convert_ids_to_tokens(ids) == ["▁", "12", "10", "1", "</s>"]
    assert loaded.decode(ids, skip_special_tokens=True) == "12101"
    assert (loaded.pad_token_id, loaded.eos_token_id) == (0, 1)


def _token_whole_words(tokenizer, prompt):
    batch = encode_prompts(tokenizer, [prompt])
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    return list(zip(tokens, batch["whole_word"][0].tolist()))


def test_graph_aware_whole_word_indices(tokenizer):
    n_users = 50
    prompt = render(Sample(DIRECT, 7, (12, 3), 3), EVAL_TEMPLATE, n_users, incremental=True)
    assert prompt.text == "user_7 item_12 item_3"
    assert _token_whole_words(tokenizer, prompt) == [
        ("▁user", 7), ("_", 7), ("7", 7),
        ("▁item", 62), ("_", 62), ("12", 62),
        ("▁item", 53), ("_", 53), ("3", 53),
        ("</s>", 0),
    ]


def test_incremental_whole_word_indices_and_non_id_tokens(tokenizer):
    prompt = render(Sample(SEQUENTIAL, 9, (40, 41, 5), 6), 1, n_users=50, incremental=True)
    pairs = _token_whole_words(tokenizer, prompt)
    by_piece = [(t, w) for t, w in pairs if w > 0]
    assert [w for _, w in by_piece] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    # every word outside an id (template words, punctuation, </s>) has index 0
    words = [t for t, w in pairs if w == 0]
    assert "▁bought" in words and "</s>" in words and not any(t == "_" for t in words)


def test_whole_word_indices_in_a_padded_batch_match_single_prompts(tokenizer):
    samples = [Sample(DIRECT, 1, (5, 17, 2), 5), Sample(EXPLANATION, 22, (3,), "x")]
    prompts = [render(s, 2, 30, True) for s in samples]
    batch = encode_prompts(tokenizer, prompts)
    for k, p in enumerate(prompts):
        single = encode_prompts(tokenizer, [p])["whole_word"][0]
        assert torch.equal(batch["whole_word"][k, : len(single)], single)
        assert batch["whole_word"][k, len(single):].eq(0).all()


def test_every_template_renders_every_id(tokenizer):
    for task, templates in TEMPLATES.items():
        items = (4, 8) if task != EXPLANATION else (4,)
        for t in range(len(templates)):
            p = render(Sample(task, 3, items, 4), t, 10, True)
            for start, end, _ in p.spans:
                assert p.text[start:end] in {"user_3", "item_4", "item_8"}
            assert len(p.spans) == 1 + len(items)


def test_explanation_targets_are_cut_to_the_limit(tokenizer):
    labels = encode_targets(tokenizer, ["great " * 40], max_tokens=21)
    assert labels.shape[1] == 21 and labels[0, -1].item() == tokenizer.eos_token_id


def test_propagation_equals_dense_reference():
    users, items = np.array([1, 1, 2, 3, 3]), np.array([1, 2, 2, 3, 4])
    adj = normalized_adjacency(3, 4, users, items)
    a = np.zeros((8, 8))
    for u, i in zip(users, items):
        a[u, 3 + i] = a[3 + i, u] = 1
    deg = a.sum(1)
    inv = np.where(deg > 0, deg, 1) ** -0.5 * (deg > 0)
    a_hat = inv[:, None] * a * inv[None, :]
    np.testing.assert_allclose(adj.toarray(), a_hat, atol=1e-7)
    x = torch.randn(8, 6, requires_grad=True)
    layers = 3
    dense = torch.tensor(a_hat, dtype=torch.float32)
    reference = sum(torch.linalg.matrix_power(dense, k) for k in range(layers + 1)) / (layers + 1)
    out = lightgcn(adj, x, layers)
    torch.testing.assert_close(out, reference @ x.detach(), atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    torch.testing.assert_close(x.grad, reference.T @ grad, atol=1e-5, rtol=1e-5)
    # node 0 (padding) is isolated: only its own feature survives, averaged over L + 1 terms
    np.testing.assert_array_equal(adj.toarray()[0], 0)
    torch.testing.assert_close(out[0], x[0].detach() / (layers + 1))
    # the self-weight departure: (w E0 + A E0 + ... + A^L E0) / (w + L), same gradient operator
    for w in (0.0, 0.25):
        propagated = sum(torch.linalg.matrix_power(dense, k) for k in range(1, layers + 1))
        weighted = (w * torch.eye(8) + propagated) / (layers + w)
        x.grad = None
        out = lightgcn(adj, x, layers, self_weight=w)
        torch.testing.assert_close(out, weighted @ x.detach(), atol=1e-5, rtol=1e-5)
        (out * grad).sum().backward()
        torch.testing.assert_close(x.grad, weighted.T @ grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lightgcn(to_torch_sparse(adj, "cpu", torch.float64), x.detach().double(), layers,
                                            self_weight=w).float(), out.detach(), atol=1e-5, rtol=1e-5)
    assert out[0].abs().sum() > 0 and lightgcn(adj, x, layers, self_weight=0.0)[0].abs().sum() == 0
    # the model passes its config's weight on: without the E0 term the isolated padding row is 0
    cfg = ModelConfig(size="tiny", id_tokens="digits", graph_self_weight=0.0)
    assert build_model(cfg, 3, 4, users, items, 400, 0)._propagate()[0].abs().sum() == 0
    cfg = ModelConfig(size="tiny", id_tokens="digits")
    assert build_model(cfg, 3, 4, users, items, 400, 0)._propagate()[0].abs().sum() > 0


def test_graph_holds_no_validation_or_test_interaction():
    # user 1: 10 20 30 40 -> training 10 20; user 2: 30 40 50 -> training 30
    ds = Dataset.from_histories([[1, 2, 3, 4], [3, 4, 5]], n_items=5)
    users, items = ds.train_pairs()
    adj = normalized_adjacency(ds.n_users, ds.n_items, users, items).toarray()
    n = ds.n_users
    edges = {(u, i - n) for u, i in zip(*np.nonzero(adj)) if 1 <= u <= n and i > n}
    assert edges == {(1, 1), (1, 2), (2, 3)}


def _tiny_model(tokenizer, seed=0, **overrides):
    cfg = ModelConfig(size="tiny", id_tokens=id_scheme(tokenizer), **overrides)
    return build_model(cfg, 5, 12, np.array([1, 2, 3, 4, 5]), np.array([1, 3, 5, 7, 9]), len(tokenizer), seed,
                       item_token_start(tokenizer, 12))


def _logits(model, tokenizer, task=DIRECT):
    sample = Sample(task, 2, (3, 7, 11), 7)
    batch = encode_prompts(tokenizer, [render(sample, 1, 5, True)])
    model.eval()
    with torch.no_grad():
        hidden, mask = model.encode(task, **batch)
        return model.decode(hidden, mask, torch.zeros(1, 3, dtype=torch.long)).logits


def test_checkpoint_round_trip_gives_identical_logits(tokenizer, tmp_path):
    model = _tiny_model(tokenizer)
    with torch.no_grad():
        model.graph_table.mul_(1.5)  # weights that are not the initial ones
    model.save_pretrained(tmp_path / "ckpt", tokenizer)
    loaded, tok2 = ELMRec.from_pretrained(tmp_path / "ckpt")
    for task in (DIRECT, SEQUENTIAL, EXPLANATION):
        assert torch.equal(_logits(model, tokenizer, task), _logits(loaded, tok2, task))
    assert tok2.tokenize("item_42") == tokenizer.tokenize("item_42")
    # safetensors only: the weights load with torch's safe loading rules in force
    assert not list((tmp_path / "ckpt").glob("*.bin")) and not list((tmp_path / "ckpt").glob("*.pt"))


def test_checkpoint_write_is_atomic(tokenizer, tmp_path, monkeypatch):
    model = _tiny_model(tokenizer)
    model.save_pretrained(tmp_path / "ckpt", tokenizer)
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("elmrec.model.save_file", broken)
    with pytest.raises(OSError):
        model.save_pretrained(tmp_path / "ckpt", tokenizer)
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an elmrec checkpoint"):
        ELMRec.from_pretrained(tmp_path)


def test_ablation_switches_change_the_embeddings(tokenizer):
    base = _tiny_model(tokenizer)
    sample_ww = torch.tensor([[2, 6, 0]])
    base.eval()
    with torch.no_grad():
        propagated = base.whole_word(DIRECT, sample_ww)
        base.config.use_graph = False
        base._graph_cache = None
        plain = base.whole_word(DIRECT, sample_ww)
        assert not torch.allclose(propagated, plain)
        torch.testing.assert_close(plain[0, 0], base.config.graph_alpha * base.graph_table[2])
        assert plain[0, 2].abs().sum() == 0  # index 0 contributes nothing
        seq = base.whole_word(SEQUENTIAL, sample_ww)
        torch.testing.assert_close(seq[0, 1], base.config.seq_alpha * base.position_table[6])
        base.config.use_incremental = False  # sequential falls back to id-based whole words
        assert torch.equal(base.whole_word(SEQUENTIAL, sample_ww), plain)


def test_soft_prompts_extend_the_encoder_mask(tokenizer):
    model = _tiny_model(tokenizer)
    batch = encode_prompts(tokenizer, [render(Sample(DIRECT, 1, (2, 3), 2), 0, 5, True)])
    hidden, mask = model.encode(DIRECT, **batch)
    assert hidden.shape[1] == batch["input_ids"].shape[1] + 3 and mask[0, :3].eq(1).all()
    model.config.use_soft_prompts = False
    hidden, mask = model.encode(DIRECT, **batch)
    assert hidden.shape[1] == batch["input_ids"].shape[1]


def test_pretrained_backbone_path(tokenizer, tmp_path):
    """A user's own (here: tiny, saved locally) T5 and tokenizer replace the built-in ones."""
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, num_layers=1,
                                             num_heads=2, d_kv=16, decoder_start_token_id=0))
    t5.save_pretrained(tmp_path / "mini-t5")
    tokenizer.save_pretrained(tmp_path / "mini-t5")
    cfg = ModelConfig(backbone=str(tmp_path / "mini-t5"))
    model = build_model(cfg, 5, 12, np.array([1]), np.array([1]), len(tokenizer), 0)
    assert model.t5.config.d_model == 32
    torch.testing.assert_close(model.t5.shared.weight, t5.shared.weight)
    assert _logits(model, tokenizer).shape[-1] == len(tokenizer)


def test_torch_sparse_path_matches_the_scipy_path():
    """The GPU path (torch sparse) computes the same propagation as the CPU (SciPy) path."""
    adj = normalized_adjacency(4, 6, np.array([1, 1, 2, 3, 4, 4]), np.array([1, 2, 2, 5, 6, 1]))
    x = torch.randn(11, 5)
    torch.testing.assert_close(lightgcn(adj, x.double(), 3).float(), lightgcn(adj, x, 3), atol=1e-5, rtol=1e-5)
    dense_torch = to_torch_sparse(adj, "cpu", torch.float64)
    torch.testing.assert_close(lightgcn(dense_torch, x.double(), 3).float(), lightgcn(adj, x, 3), atol=1e-5, rtol=1e-5)
    # the model converts once per device/dtype and reuses it
    cfg = ModelConfig(size="tiny", id_tokens="digits")
    model = build_model(cfg, 4, 6, np.array([1, 2]), np.array([3, 4]), 400, 0).double()
    first = model._propagate()
    cached = model._torch_adjacency[1]
    model._propagate()
    assert model._torch_adjacency[1] is cached and first.dtype == torch.float64


def test_repeated_items_get_the_index_of_each_mention_and_new_users_no_graph_node():
    p = render(Sample(SEQUENTIAL, 3, (8, 9, 8), 1), EVAL_TEMPLATE, 10, incremental=True)
    assert p.spans[:, 2].tolist() == [1, 2, 3, 4]  # the latest mention of item 8 is the most recent
    p = render(Sample(SEQUENTIAL, 11, (8,), 1), EVAL_TEMPLATE, 10, incremental=False)
    assert p.spans[:, 2].tolist() == [0, 18]  # user 11 is outside the 10-user graph


def test_without_the_sequential_user_a_sequential_prompt_names_the_unseen_user_only():
    seq = Sample(SEQUENTIAL, 3, (8, 9), 1)
    for incremental in (True, False):
        p = render(seq, 1, 10, incremental, sequential_user=False)
        assert "user_0" in p.text and "user_3" not in p.text
        assert p.spans[0, 2] == (1 if incremental else 0)  # no graph node: user 0 is nobody
        assert p.spans[1:].tolist() == render(seq, 1, 10, incremental).spans[1:].tolist()
    direct = Sample(DIRECT, 3, (8, 9), 8)
    assert "user_3" in render(direct, 1, 10, True, sequential_user=False).text


@pytest.mark.parametrize("switch", ["use_graph", "use_incremental", "use_soft_prompts"])
def test_every_ablation_checkpoints_after_inference(tokenizer, tmp_path, switch):
    # regression: without propagation the cached table was graph_table itself, got registered as
    # a second parameter and the next checkpoint (after a validation pass) failed to save
    model = _tiny_model(tokenizer, dropout=0.0, **{switch: False})
    names = {n for n, _ in model.named_parameters()}
    before = _logits(model, tokenizer)  # eval-mode forward: fills the inference cache
    assert {n for n, _ in model.named_parameters()} == names
    model.save_pretrained(tmp_path / "ckpt", tokenizer)
    loaded, tok2 = ELMRec.from_pretrained(tmp_path / "ckpt")
    assert getattr(loaded.config, switch) is False
    assert torch.equal(before, _logits(loaded, tok2))


def test_in_place_attention_matches_transformers_eager_attention(tokenizer):
    """Same loss, gradients (the learned position bias included) and cached decoding as T5's
    reference attention, on a padded batch of prompts of different lengths."""
    samples = [Sample(DIRECT, 2, (3, 7, 11), 7), Sample(DIRECT, 1, (2, 4, 6, 8, 10, 12), 4)]
    batch = encode_prompts(tokenizer, [render(s, 1, 5, True) for s in samples])
    assert (batch["attention_mask"] == 0).any()  # padding is exercised
    labels = encode_targets(tokenizer, ["item_7", "item_4"], 8)
    results = {}
    for impl in ("elmrec", "eager"):
        model = _tiny_model(tokenizer, dropout=0.0)
        assert model.t5.config._attn_implementation == "elmrec"
        model.t5.set_attn_implementation(impl)
        model.train()
        loss = model(DIRECT, **batch, labels=labels)
        loss.backward()
        bias = model.t5.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.grad
        model.eval()
        with torch.no_grad():
            hidden, mask = model.encode(DIRECT, **batch)
            out = model.decode(hidden, mask, torch.zeros(2, 1, dtype=torch.long), use_cache=True)
            step = model.decode(hidden, mask, torch.full((2, 1), 5), cache=out.cache, use_cache=True)
            full = model.decode(hidden, mask, torch.tensor([[0, 5], [0, 5]]))
        results[impl] = (loss.detach(), bias.clone(), model.graph_table.grad.clone(), step.logits[:, -1],
                         full.logits[:, -1])
    for ours, reference in zip(results["elmrec"], results["eager"]):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["elmrec"][3], results["elmrec"][4], rtol=1e-5, atol=1e-5)


def test_item_scheme_gives_each_id_one_token_and_loads_with_auto_tokenizer(item_tokenizer, tmp_path):
    item_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert id_scheme(loaded) == "item" and id_scheme(build_tokenizer()) == "digits"

    def tokens(text):
        return loaded.convert_ids_to_tokens(loaded(text, add_special_tokens=False)["input_ids"])

    assert tokens("user_3 item_12 item_1") == ["user_3", "item_12", "item_1"]  # no space tokens between ids
    assert tokens("user_1 has bought item_1 .") == ["user_1", "▁has", "▁bought", "item_1", "▁", "."]
    # an id the tokenizer has no token for falls back to pieces instead of matching a shorter id
    assert tokens("item_123") == ["▁item", "_", "12", "3"]
    assert item_vocab_ids(loaded, [1, 12]).tolist() == loaded.convert_tokens_to_ids(["item_1", "item_12"])
    with pytest.raises(ValueError, match="no token for item"):
        item_vocab_ids(loaded, [13])


def test_item_scheme_whole_word_indices(item_tokenizer):
    prompt = render(Sample(DIRECT, 4, (12, 3), 3), 3, 5, incremental=True)
    assert prompt.text == "from item_12 item_3, select one item for user_4 ."
    pairs = _token_whole_words(item_tokenizer, prompt)
    assert [(t, w) for t, w in pairs if w] == [("item_12", 17), ("item_3", 8), ("user_4", 4)]
    assert all(w == 0 for t, w in pairs if not t.startswith(("item_", "user_")))
    prompt = render(Sample(SEQUENTIAL, 2, (7, 9, 7), 1), 1, 5, incremental=True)
    pairs = _token_whole_words(item_tokenizer, prompt)
    assert [(t, w) for t, w in pairs if w] == [("user_2", 1), ("item_7", 2), ("item_9", 3), ("item_7", 4)]


def test_item_scheme_checkpoint_round_trip_and_mixed_schemes_refused(item_tokenizer, tokenizer, tmp_path):
    model = _tiny_model(item_tokenizer)
    assert model.config.id_tokens == "item" and model.t5.config.vocab_size == len(item_tokenizer)
    model.save_pretrained(tmp_path / "ckpt", item_tokenizer)
    loaded, tok2 = ELMRec.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.id_tokens == "item" and id_scheme(tok2) == "item"
    for task in (DIRECT, SEQUENTIAL):
        assert torch.equal(_logits(model, item_tokenizer, task), _logits(loaded, tok2, task))
    # a digits tokenizer beside item-scheme weights never reads ids silently in the other scheme
    tokenizer.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="trained with id_tokens 'item'"):
        ELMRec.from_pretrained(tmp_path / "ckpt")


def test_id_scheme_defaults_follow_the_backbone():
    assert ModelConfig(size="tiny").id_tokens == "item"
    assert ModelConfig(backbone="some/t5").id_tokens == "digits"
    assert ModelConfig(backbone="some/t5", id_tokens="item").id_tokens == "item"


def test_item_head_is_the_vocabulary_head_at_eos_and_the_item_tokens(item_tokenizer):
    """The item scheme's restricted softmax reads the same logits as T5's head, at </s> and at the
    vocabulary ids the tokenizer gives item_1 .. item_12, in that order."""
    model = _tiny_model(item_tokenizer)
    states = torch.randn(3, model.t5.config.d_model)
    columns = [item_tokenizer.eos_token_id] + item_tokenizer.convert_tokens_to_ids([f"item_{k}" for k in range(1, 13)])
    torch.testing.assert_close(model.item_logits(states), model.vocabulary_logits(states)[:, columns])
    assert "item_rows" not in model.state_dict()  # derived from the tokenizer, not a weight


@pytest.mark.parametrize("template, last_item_start", [(EVAL_TEMPLATE, False), (2, False), (EVAL_TEMPLATE, True),
                                                      (2, True)])
def test_causal_history_trains_every_prefix_exactly_as_inference_reads_it(item_tokenizer, template, last_item_start):
    """One training prompt of a causal_history model: its loss is the mean over prefixes k of
    -log P(item k + 1 | items 1..k) exactly as inference computes it from a prompt of that prefix
    alone (words after the history included: the decoder reads up to the last item either way),
    with and without the encoder's own padding; the same with gradients (the training attention)
    and close under bf16. With ``last_item_start`` the decoder starts from item k, also in training."""
    from elmrec.generation import item_log_probs
    from elmrec.prompts import target_text
    from elmrec.tokenization import encode_targets

    model = _tiny_model(item_tokenizer, causal_history=True, dropout=0.0, last_item_start=last_item_start)
    model.eval()

    def starts(last_items):
        return model.decoder_start(SEQUENTIAL, torch.tensor(last_items))

    samples = [Sample(SEQUENTIAL, 2, (3, 7, 11, 5), 9, prefixes=True), Sample(SEQUENTIAL, 4, (12, 1), 6, prefixes=True)]
    assert target_text(samples[0], "item") == "item_7 item_11 item_5 item_9"
    batch = encode_prompts(item_tokenizer, [render(s, template, 5, True) for s in samples])
    labels = encode_targets(item_tokenizer, [target_text(s, "item") for s in samples])
    labels = labels.masked_fill(labels == item_tokenizer.eos_token_id, -100)
    with torch.no_grad():
        loss = model(SEQUENTIAL, **batch, labels=labels)
        expected = []
        for s in samples:
            full = (*s.items, s.target)
            for k in range(1, len(full)):
                # a prefix's inference prompt: the eval-time rendering for the whole history; for a
                # shorter one the same template cut after item k (what the causal mask leaves visible)
                one = encode_prompts(item_tokenizer, [render(Sample(SEQUENTIAL, s.user, full[:k], full[k]), template, 5,
                                                            True)])
                hidden, mask = model.encode(SEQUENTIAL, **one)
                expected.append(-item_log_probs(model, hidden, mask, starts([full[k - 1]]))[0, full[k] - 1])
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=1e-5, atol=1e-5)
    trained = model(SEQUENTIAL, **batch, labels=labels)  # with gradients: the training attention path
    trained.backward()
    torch.testing.assert_close(trained.detach(), loss, rtol=1e-5, atol=1e-5)
    assert model.position_table.grad is not None and torch.isfinite(model.position_table.grad).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model(SEQUENTIAL, **batch, labels=labels), loss, rtol=0.05, atol=0.05)
    # validation labels (the target alone) read the whole history
    with torch.no_grad():
        single = encode_targets(item_tokenizer, [f"item_{s.target}" for s in samples])
        single = single.masked_fill(single == item_tokenizer.eos_token_id, -100)
        last = model(SEQUENTIAL, **batch, labels=single)
        hidden, mask = model.encode(SEQUENTIAL, **batch)
        logp = item_log_probs(model, hidden, mask, starts([5, 1]))
    torch.testing.assert_close(last, -(logp[0, 8] + logp[1, 5]) / 2, rtol=1e-5, atol=1e-5)
    if last_item_start:  # the start differs: the test reads what the option changes
        assert not torch.allclose(logp, item_log_probs(model, hidden, mask))


def test_cooccurrence_embedding_puts_items_of_one_sequence_together():
    """Two groups of items that only ever appear with each other: every within-group dot product
    beats every cross-group one; items never in a pair, and row 0, are zero rows; the scale is
    T5's (mean square 1); the same seed gives the same vectors."""
    from elmrec.graph import cooccurrence_embedding

    histories = [[1, 2, 3, 1, 2], [2, 3, 1], [4, 5, 6, 4], [6, 5, 4, 5], [7]]  # item 7: alone; 8: never seen
    users = np.repeat(np.arange(1, 6), [len(h) for h in histories])
    items = np.concatenate(histories)
    for dim in (4, 32):  # fewer dimensions than items, and more (the dense solver's padding)
        e = cooccurrence_embedding(users, items, 8, dim, window=2, seed=0)
        assert e.shape == (9, dim) and e.dtype == np.float32
        np.testing.assert_array_equal(e[[0, 7, 8]], 0)
        np.testing.assert_allclose(np.mean(e[1:7] ** 2), 1.0, rtol=1e-5)
        dots = e[1:7] @ e[1:7].T
        within = [dots[a, b] for a in range(6) for b in range(6) if a != b and a // 3 == b // 3]
        across = [dots[a, b] for a in range(6) for b in range(6) if a // 3 != b // 3]
        assert min(within) > max(across)
        np.testing.assert_array_equal(e, cooccurrence_embedding(users, items, 8, dim, window=2, seed=0))


def test_item_init_sets_the_item_tokens_and_needs_the_item_scheme(item_tokenizer):
    from elmrec.config import load_config
    from elmrec.graph import cooccurrence_embedding

    users, items = np.array([1, 1, 1, 2, 2, 3, 3]), np.array([1, 2, 3, 2, 3, 5, 6])
    cfg = ModelConfig(size="tiny", id_tokens="item", item_init="cooccurrence")
    start = item_token_start(item_tokenizer, 12)
    model = build_model(cfg, 5, 12, users, items, len(item_tokenizer), 0, start)
    plain = build_model(ModelConfig(size="tiny", id_tokens="item"), 5, 12, users, items, len(item_tokenizer), 0, start)
    vectors = torch.from_numpy(cooccurrence_embedding(users, items, 12, 128, seed=0))
    table = model.t5.shared.weight.detach()
    in_pairs = [1, 2, 3, 5, 6]  # items 4, 7..12 never share a sequence with another item
    torch.testing.assert_close(table[start + np.array(in_pairs) - 1], vectors[in_pairs])
    alone = start + np.array([4, 7, 12]) - 1
    torch.testing.assert_close(table[alone], plain.t5.shared.weight.detach()[alone])  # T5's random rows
    assert torch.equal(table[:start], plain.t5.shared.weight.detach()[:start])  # words and users untouched
    assert model.t5.lm_head.weight.data_ptr() == model.t5.shared.weight.data_ptr()  # the output rows too
    with pytest.raises(ValueError, match="item_init 'cooccurrence' needs model.id_tokens 'item'"):
        load_config(overrides={"size": "tiny", "id_tokens": "digits", "item_init": "cooccurrence"})


def test_cooccurrence_embedding_of_many_items_is_seeded_leak_free_and_empty_without_pairs():
    """The Lanczos branch (the one Beauty takes): the same seed gives the same vectors, their dot
    products are the dense solver's; the vectors come from training interactions only (changing
    the validation and test items changes nothing); no co-occurring pair at all gives zero rows."""
    from elmrec.graph import cooccurrence_embedding

    rng = np.random.default_rng(0)
    n_items, dim = 600, 8  # n > max(2 dim, 500): eigsh
    histories = [rng.choice(np.arange(1, n_items + 1), int(rng.integers(4, 9)), replace=False).tolist()
                 for _ in range(500)]
    ds = Dataset.from_histories(histories, n_items=n_items)
    e = cooccurrence_embedding(*ds.train_pairs(), n_items, dim, seed=3)
    np.testing.assert_array_equal(e, cooccurrence_embedding(*ds.train_pairs(), n_items, dim, seed=3))
    import elmrec.graph as graph

    # the dense solution of the same matrix spans the same top-dim subspace: compare E E^T
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(graph, "eigsh", lambda a, k, which, v0: (lambda w, v: (w[-k:], v[:, -k:]))(
            *np.linalg.eigh(a.toarray())))
        dense = graph.cooccurrence_embedding(*ds.train_pairs(), n_items, dim, seed=3)
    np.testing.assert_allclose(e @ e.T, dense @ dense.T, atol=1e-3)
    moved = [h[:-2] + [(h[-2] % n_items) + 1, (h[-1] % n_items) + 1] for h in histories]  # new held-out items
    np.testing.assert_array_equal(e, cooccurrence_embedding(*Dataset.from_histories(moved, n_items=n_items)
                                                            .train_pairs(), n_items, dim, seed=3))
    # three items per user: one training item each, so no pair at all
    lone = Dataset.from_histories([[i, i % n_items + 1, (i + 1) % n_items + 1] for i in range(1, 601)], n_items=n_items)
    np.testing.assert_array_equal(cooccurrence_embedding(*lone.train_pairs(), n_items, dim), 0)


def test_item_init_reaches_an_untied_output_head_at_the_backbone_scale(item_tokenizer, tmp_path):
    """A pretrained backbone whose output head is its own table (T5 v1.1, flan-t5): both tables get
    the vectors, each at its own root mean square."""
    from transformers import T5Config, T5ForConditionalGeneration

    from elmrec.graph import cooccurrence_embedding

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=len(item_tokenizer), d_model=16, d_ff=32, num_layers=1,
                                             num_heads=2, d_kv=8, decoder_start_token_id=0, tie_word_embeddings=False))
    with torch.no_grad():
        t5.lm_head.weight.mul_(3.0)  # another scale than the input table's
    t5.save_pretrained(tmp_path / "untied")
    item_tokenizer.save_pretrained(tmp_path / "untied")
    users, items = np.array([1, 1, 1, 2, 2]), np.array([1, 2, 3, 2, 3])
    cfg = ModelConfig(backbone=str(tmp_path / "untied"), id_tokens="item", item_init="cooccurrence")
    start = item_token_start(item_tokenizer, 12)
    model = build_model(cfg, 5, 12, users, items, len(item_tokenizer), 0, start)
    vectors = torch.from_numpy(cooccurrence_embedding(users, items, 12, 16))
    rows = start + np.array([1, 2, 3]) - 1
    for before, after in ((t5.shared.weight, model.t5.shared.weight), (t5.lm_head.weight, model.t5.lm_head.weight)):
        torch.testing.assert_close(after.detach()[rows], vectors[[1, 2, 3]] * before.detach().pow(2).mean().sqrt())
        torch.testing.assert_close(after.detach()[start + 3], before.detach()[start + 3])  # item 4: no pair, kept


def test_graph_init_starts_e0_from_cooccurrence_so_users_sit_by_their_items(item_tokenizer):
    """graph_init cooccurrence: E0's item rows are graph_sigma times the spectral vectors, its user
    rows zero; propagated, a user's graph vector scores its own group's items above the other's.
    The graph table is about ids, not tokens, so the digits scheme takes it too."""
    from elmrec.graph import cooccurrence_embedding

    # two item groups: users 1-3 buy items 1-3, users 4-6 buy items 4-6, in varied orders
    orders = [[1, 2, 3], [2, 3, 1], [3, 1, 2], [4, 5, 6], [5, 6, 4], [6, 4, 5]]
    users = np.repeat(np.arange(1, 7), 3)
    items = np.concatenate(orders)
    cfg = ModelConfig(size="tiny", id_tokens="item", graph_init="cooccurrence", graph_sigma=2.0)
    start = item_token_start(item_tokenizer, 12)
    model = build_model(cfg, 6, 12, users, items, len(item_tokenizer), 0, start)
    vectors = torch.from_numpy(cooccurrence_embedding(users, items, 12, 128, seed=0))
    e0 = model.graph_table.detach()
    torch.testing.assert_close(e0[7:], 2.0 * vectors[1:])
    assert not e0[:7].any()  # padding and users
    plain = build_model(ModelConfig(size="tiny", id_tokens="item"), 6, 12, users, items, len(item_tokenizer), 0, start)
    assert torch.equal(model.t5.shared.weight, plain.t5.shared.weight)  # tokens untouched (item_init random)
    model.eval()
    e = model.graph_embeddings()
    scores = e[1:7] @ e[7:13].T  # users 1..6 against items 1..6
    for u in range(6):
        own, other = scores[u, 3 * (u // 3) : 3 * (u // 3) + 3], scores[u, 3 * (1 - u // 3) : 3 * (1 - u // 3) + 3]
        assert own.min() > other.max()
    digits_cfg = ModelConfig(size="tiny", id_tokens="digits", graph_init="cooccurrence", graph_sigma=2.0)
    digits = build_model(digits_cfg, 6, 12, users, items, len(item_tokenizer), 0)
    torch.testing.assert_close(digits.graph_table.detach()[7:], 2.0 * vectors[1:])


def test_without_edges_renormalises_the_graph_left():
    """Taking edges out is A_hat of the interactions without them; a pair that is no edge changes
    nothing, and the original matrix is left as it was."""
    from elmrec.graph import normalized_adjacency, without_edges

    users, items = np.array([1, 1, 2, 2, 3]), np.array([1, 2, 2, 3, 3])
    a_hat = normalized_adjacency(3, 3, users, items)
    before = a_hat.toarray().copy()
    got = without_edges(a_hat, np.array([1, 2, 3]), np.array([3 + 2, 3 + 2, 3 + 1]))  # (3, 3 + 1) is no edge
    np.testing.assert_allclose(got.toarray(), normalized_adjacency(3, 3, np.array([1, 2, 3]), np.array([1, 3, 3]))
                               .toarray(), rtol=1e-6)
    np.testing.assert_array_equal(a_hat.toarray(), before)
    np.testing.assert_allclose(without_edges(a_hat, np.array([3]), np.array([3 + 1])).toarray(), before, rtol=1e-6)
