import json

import pytest

from elmrec.cli import main
from elmrec.formats import load_p5


def test_synthetic_info_evaluate(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synthetic", "--out", str(out), "--users", "50", "--items", "40"]) == 0
    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["users"] == 50 and info["negatives_per_user"] == 20
    for task in ("sequential", "direct"):
        metrics = tmp_path / f"{task}.json"
        argv = [
            "evaluate",
            "--model",
            "popularity",
            "--data",
            str(out),
            "--task",
            task,
            "--split",
            "valid",
            "--no-progress",
            "--output",
            str(metrics),
        ]
        assert main(argv) == 0
        record = json.loads(metrics.read_text())
        assert record["model"] == "popularity"
        assert set(record["metrics"]) == {"HR@1", "HR@5", "HR@10", "NDCG@1", "NDCG@5", "NDCG@10"}
        assert record["protocol"]["split"] == "valid" and "exclude_history" in record["protocol"]
        assert record["dataset"]["fingerprint"] == load_p5(out).fingerprint()
    assert "HR@10" in capsys.readouterr().out


def test_evaluate_options(synthetic_dir, tmp_path):
    metrics = tmp_path / "m.json"
    argv = [
        "evaluate",
        "--model",
        "id-shortcut",
        "--data",
        str(synthetic_dir),
        "--no-exclude-history",
        "--users",
        "20",
        "--ks",
        "1,20",
        "--no-progress",
        "--output",
        str(metrics),
    ]
    assert main(argv) == 0
    record = json.loads(metrics.read_text())
    assert record["protocol"]["exclude_history"] is False and record["protocol"]["n_users"] == 20
    assert "HR@20" in record["metrics"]


def test_prepare_csv_round_trip(tmp_path):
    csv = tmp_path / "log.csv"
    rows = [f"u{u},i{(u * 7 + k) % 25},{k}" for u in range(30) for k in range(6)]
    csv.write_text("uid,iid,ts\n" + "\n".join(rows) + "\n")
    out = tmp_path / "p5"
    argv = [
        "data",
        "prepare",
        str(csv),
        "--out",
        str(out),
        "--user-col",
        "uid",
        "--item-col",
        "iid",
        "--time-col",
        "ts",
        "--reindex",
        "random",
        "--seed",
        "1",
        "--negatives",
        "10",
    ]
    assert main(argv) == 0
    ds = load_p5(out)
    assert (ds.n_users, ds.negatives.shape[1]) == (30, 10)
    assert ds.user_names[1] == "u0"
    assert [ds.item_names[i] for i in ds.history(2)] == [f"i{(7 + k) % 25}" for k in range(6)]
    meta = json.loads((out / "prepare.json").read_text())
    assert meta["reindex"] == "random" and "sampled" in meta["negatives"]
    # the same command gives the same data
    assert main(argv + ["--overwrite"]) == 0
    assert load_p5(out).fingerprint() == ds.fingerprint()


def test_prepare_inter_with_kcore(tmp_path):
    inter = tmp_path / "x.inter"
    lines = [
        f"{u}\t{i}\t{t}"
        for t, (u, i) in enumerate(
            [(1, 10), (1, 11), (1, 12), (2, 10), (2, 11), (2, 12), (3, 10), (3, 11), (3, 99)]
        )
    ]
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(lines) + "\n")
    out = tmp_path / "p5"
    assert (
        main(["data", "prepare", str(inter), "--out", str(out), "--min-item", "2", "--negatives", "0"]) == 0
    )
    ds = load_p5(out)
    assert ds.user_names[1:] == ("1", "2") and ds.negatives is None
    assert [ds.item_names[i] for i in ds.history(1)] == ["10", "11", "12"]


def test_prepare_p5_carries_negatives(synthetic_dir, synthetic_dataset, tmp_path):
    out = tmp_path / "rnd"
    assert main(["data", "prepare", str(synthetic_dir), "--out", str(out), "--reindex", "random"]) == 0
    ds = load_p5(out)
    names, old = ds.item_names, synthetic_dataset.item_names
    assert [names[i] for i in ds.negatives[5]] == [old[i] for i in synthetic_dataset.negatives[5]]
    assert len(ds.explanations["test"]) == synthetic_dataset.n_users


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["evaluate", "--model", "popularity", "--data", "/nonexistent/dir"],
            "/nonexistent/dir: not a directory",
        ),
        (["data", "info", "/nonexistent"], "not a directory"),
        (["data", "prepare", "/nonexistent.csv", "--out", "/tmp/x"], "not found"),
    ],
)
def test_errors_are_one_line(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err


def test_bad_table_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["data", "prepare", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv, line 1: missing column(s) 'user', 'item', 'timestamp'; found columns 'a', 'b'" in err
    assert main(["data", "synthetic", "--out", str(tmp_path / "s"), "--users", "10"]) == 0
    assert main(["data", "synthetic", "--out", str(tmp_path / "s"), "--users", "10"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_threads_must_be_a_positive_integer(capsys):
    from elmrec.cli import build_parser

    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["evaluate", "--checkpoint", "c", "--data", "d", "--threads", bad])
        assert "expected a positive integer" in capsys.readouterr().err
    args = build_parser().parse_args(["recommend", "--checkpoint", "c", "--user", "1", "--threads", "1"])
    assert args.threads == 1


def test_id_scheme_flags_parse_into_the_config(capsys):
    from elmrec.cli import build_parser
    from elmrec.config import config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--id-tokens", "digits"])
    assert config_from_args(args).model.id_tokens == "digits"
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--seq-targets", "4"])
    cfg = config_from_args(args)
    assert (cfg.model.id_tokens, cfg.train.seq_targets) == ("item", 4)  # the built-in backbones' default
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--out", "o", "--id-tokens", "words"])
    assert "invalid choice: 'words'" in capsys.readouterr().err


def test_evaluation_flags_are_named_as_their_config_fields():
    """evaluate/recommend spell an EvalConfig field as train does (--direct-decode, --eval-amp); the
    older --decode / --amp still work."""
    from elmrec.cli import build_parser

    p = build_parser()
    for command in (["evaluate", "--data", "d"], ["recommend", "--user", "1"]):
        args = p.parse_args([command[0], "--checkpoint", "c", *command[1:], "--direct-decode", "beam", "--eval-amp"])
        assert (args.direct_decode, args.eval_amp) == ("beam", True)
        args = p.parse_args([command[0], "--checkpoint", "c", *command[1:], "--decode", "score", "--no-amp"])
        assert (args.direct_decode, args.eval_amp) == ("score", False)
    train = p.parse_args(["train", "--data", "d", "--out", "o", "--direct-decode", "beam", "--eval-amp"])
    assert (train.cfg_direct_decode, train.cfg_eval_amp) == ("beam", True)
