"""Does a trained checkpoint read its prompt? Four checks that loss and HR/NDCG cannot make.

1. User dependence on validation users (``elmrec.evaluation.user_dependence``): 1.0 means the
   scores do not change when another user's prompt is read, i.e. the model is an item prior.
2. Encoder collapse: the mean norm of the encoder's hidden states after each layer, and the mean
   cosine between the states of different positions of one direct prompt. Near 1 after the last
   layer, every token looks the same to the decoder, which then cannot copy or compare ids.
3. Graph signal: how well the graph-aware whole-word table itself ranks each user's direct
   validation candidates by the dot product of user and item rows (HR@10 among 100 candidates;
   chance 0.10). It bounds what a model can read from the table without learning E0 further.
4. Candidate reading: does the model prefer the items its direct prompt lists? Each user's listed
   negatives against as many unlisted items the user never interacted with: the share of
   (listed, unlisted) pairs the listed item wins, by log-likelihood. 0.5: the list is ignored.

    python benchmarks/diagnose.py runs/beauty-c16/p5/elmrec/best --data ../shared/data/beauty
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from elmrec.evaluation import sample_users, user_dependence
from elmrec.prompts import EVAL_TEMPLATE, render
from elmrec.recommender import Recommender
from elmrec.tasks import direct_eval_samples, sample_negatives
from elmrec.tokenization import encode_prompts

from checkpoint_args import add_common_args, load_checkpoint, load_data, positive_int, write_report


@torch.no_grad()
def encoder_geometry(rec: Recommender, dataset, users: np.ndarray) -> list[dict]:
    """Mean state norm and mean cosine between the positions of each prompt (soft prompts and
    real tokens), for the encoder input, every block's output and the final layer norm's output,
    averaged over the given users' direct validation prompts."""
    model = rec.model
    samples = direct_eval_samples(dataset, users, "valid")
    prompts = [render(s, EVAL_TEMPLATE, dataset.n_users, model.config.use_incremental) for s in samples]
    batch = encode_prompts(rec.tokenizer, prompts, rec.device)
    states: list[torch.Tensor] = []
    encoder = model.t5.encoder

    def block_input(module, args, kwargs):
        states.append(args[0] if args else kwargs["hidden_states"])

    hooks = [encoder.block[0].register_forward_pre_hook(block_input, with_kwargs=True)]
    hooks += [b.register_forward_hook(lambda m, a, o: states.append(o[0] if isinstance(o, tuple) else o))
              for b in encoder.block]
    hooks.append(encoder.final_layer_norm.register_forward_hook(lambda m, a, o: states.append(o)))
    try:
        _, mask = model.encode("direct", **batch)
    finally:
        for h in hooks:
            h.remove()
    real = mask.bool()
    out = []
    for h in states:
        norms, cosines = [], []
        for b in range(len(samples)):
            v = h[b][real[b]]
            n = torch.nn.functional.normalize(v, dim=-1)
            k = len(v)
            norms.append(v.norm(dim=-1).mean().item())
            cosines.append(((n @ n.T).sum().item() - k) / (k * k - k))
        out.append({"norm": float(np.mean(norms)), "cosine": float(np.mean(cosines))})
    return out


@torch.no_grad()
def graph_signal(rec: Recommender, dataset, users: np.ndarray, k: int = 10) -> dict:
    """HR@k of scoring each direct validation candidate by E[user] . E[n_users + item], with E the
    propagated graph-aware table the model adds to id tokens; and the norms of alpha * E against
    the token embeddings it is added to."""
    model = rec.model
    table = model.graph_embeddings()
    samples = direct_eval_samples(dataset, users, "valid")
    user_rows = table[torch.as_tensor([s.user for s in samples])]
    cands = torch.as_tensor([[s.target, *[i for i in s.items if i != s.target]] for s in samples])
    scores = torch.einsum("ud,ucd->uc", user_rows, table[model.n_users + cands])
    rank = (scores[:, 1:] > scores[:, :1]).sum(1)
    alpha = model.config.graph_alpha
    return {f"hr@{k}": float((rank < k).float().mean()), "chance": k / cands.shape[1],
            "alpha_user_norm": float(alpha * table[1 : model.n_users + 1].norm(dim=1).mean()),
            "alpha_item_norm": float(alpha * table[model.n_users + 1 :].norm(dim=1).mean()),
            "token_norm": float(model.t5.shared.weight.norm(dim=1).mean())}


def unlisted_items(dataset, samples: list, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(listed negatives, as many unlisted items) per direct sample; the unlisted ones are uniform
    among the items the user never interacted with and the prompt does not list (fewer, the same
    number for every sample, where a small catalogue has not that many left)."""
    listed = np.array([[i for i in s.items if i != s.target] for s in samples])
    excluded = [np.union1d(dataset.history(s.user), s.items) for s in samples]
    n = min(listed.shape[1], dataset.n_items - max(len(e) for e in excluded))
    if n < 1:
        raise ValueError(f"{dataset.name}: no unlisted item left to compare the listed candidates with")
    return listed, np.stack([sample_negatives(dataset.n_items, e, n, rng) for e in excluded])


@torch.no_grad()
def candidate_reading(rec: Recommender, dataset, users: np.ndarray, batch_size: int = 16, seed: int = 2) -> dict:
    """Share of (listed negative, unlisted item) pairs of one user's direct validation prompt in
    which the listed item has the higher log-likelihood, and the mean log-likelihood gap. A model
    that picks among the listed items scores them far above the rest; one that ignores the list
    scores both alike (0.5, gap 0)."""
    model, rng = rec.model, np.random.default_rng(seed)
    samples = direct_eval_samples(dataset, users, "valid")
    wins, gaps = [], []
    for k in range(0, len(samples), batch_size):
        chunk = samples[k : k + batch_size]
        prompts = [render(s, EVAL_TEMPLATE, dataset.n_users, model.config.use_incremental) for s in chunk]
        batch = encode_prompts(rec.tokenizer, prompts, rec.device)
        hidden, mask = model.encode("direct", **batch)
        # a user_start model's direct step starts from the user, as it was trained
        start = model.user_start(batch["input_ids"], batch["whole_word"]) if model.config.user_start else None
        listed, unlisted = (rec.item_log_likelihood(hidden, mask, items, start)
                            for items in unlisted_items(dataset, chunk, rng))
        wins.append((listed[:, :, None] > unlisted[:, None, :]).float().mean(dim=(1, 2)))
        gaps.append(listed.mean(1) - unlisted.mean(1))
    return {"listed_wins": float(torch.cat(wins).mean()), "log_likelihood_gap": float(torch.cat(gaps).mean()),
            "users": len(samples)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint directories (e.g. RUN/best)")
    add_common_args(p)
    p.add_argument("--users", type=positive_int, default=500, help="validation users for user dependence")
    p.add_argument("--geometry-users", type=positive_int, default=8, help="direct prompts for the encoder check")
    p.add_argument("--reading-users", type=positive_int, default=200,
                   help="direct prompts for the candidate-reading check")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = p.parse_args(argv)
    dataset = load_data(p, args)
    users = sample_users(dataset, args.users, seed=1)  # the benchmark's probe users
    report = {"data": args.data, "reindex": args.reindex, "checkpoints": {}}
    for ck in args.checkpoints:
        t0 = time.time()
        rec = load_checkpoint(p, ck, dataset, args.device)
        dep = user_dependence(rec, dataset, "valid", users=users)
        geometry = encoder_geometry(rec, dataset, users[: args.geometry_users])
        graph = graph_signal(rec, dataset, users)
        reading = candidate_reading(rec, dataset, users[: args.reading_users])
        report["checkpoints"][ck] = {"user_dependence": dep, "encoder": geometry, "graph_signal": graph,
                                     "candidate_reading": reading, "seconds": time.time() - t0}
        layers = " | ".join(f"{g['norm']:.0f} / {g['cosine']:.2f}" for g in geometry)
        print(f"{ck}: direct rank correlation {dep['direct_rank_correlation']:.5f}, sequential top-10 overlap "
              f"{dep['sequential_top_overlap']:.4f}; encoder norm / position cosine by layer: {layers}; graph "
              f"table alone: direct HR@10 {graph['hr@10']:.3f} (chance {graph['chance']:.2f}), norms alpha*E "
              f"user {graph['alpha_user_norm']:.1f} / item {graph['alpha_item_norm']:.1f} / token "
              f"{graph['token_norm']:.1f}; listed candidates beat unlisted items in {reading['listed_wins']:.3f} "
              f"of pairs (0.5: the list is ignored), log-likelihood gap {reading['log_likelihood_gap']:+.3f}",
              flush=True)
    write_report(args.output, report, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
