import json
import logging

import numpy as np
import pandas as pd
import pytest

from elmrec.data import DataError, Dataset, describe, explanation_leaks, reindex, sample_negatives
from elmrec.formats import load_dataset, load_p5, load_recbole_inter, load_table, write_p5

SEQ = "1 1 2 3 4\n2 2 3 5\n3 5 4 1 6\n"
NEG = "1 5 6\n2 1 4\n3 2 3\n"


# --- split ---------------------------------------------------------------------------------


def test_split_holds_out_last_two(synthetic_dataset):
    ds = synthetic_dataset
    users, items = ds.train_pairs()
    for u in ds.users:
        h = ds.history(u)
        assert items[users == u].tolist() == h[:-2].tolist()
        assert ds.split_history(u, "valid").tolist() == h[:-2].tolist()
        assert ds.split_history(u, "test").tolist() == h[:-1].tolist()
        assert ds.targets("valid")[u] == h[-2] and ds.targets("test")[u] == h[-1]
    assert np.array_equal(ds.item_counts(), np.bincount(items, minlength=ds.n_items + 1))
    assert ds.item_counts().sum() == ds.n_interactions - 2 * ds.n_users


def test_from_histories_checks_ids():
    with pytest.raises(DataError, match="at least 3"):
        Dataset.from_histories([[1, 2, 3], [1, 2]])
    with pytest.raises(DataError, match="1..3"):
        Dataset.from_histories([[1, 2, 4]], n_items=3)


# --- P5 directories ------------------------------------------------------------------------


def test_load_p5_minimal(make_p5_dir):
    d = make_p5_dir(sequential=SEQ, negative=NEG)
    ds = load_p5(d)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (3, 6, 11)
    assert ds.history(3).tolist() == [5, 4, 1, 6]
    assert ds.negatives[2].tolist() == [1, 4]


@pytest.mark.parametrize(
    "files, file, line, words",
    [
        (dict(sequential="1 1 2 3\n2 4 x 5\n"), "sequential.txt", 2, "'x'"),
        (dict(sequential="1 1 2 3\n1 4 5 6\n"), "sequential.txt", 2, "listed twice (first on line 1)"),
        (dict(sequential="1 1 2 3\n2 4 5\n"), "sequential.txt", 2, "2 interactions"),
        (dict(sequential="1 1 2 3\n2 0 5 6\n"), "sequential.txt", 2, "positive"),
        (dict(sequential="\n\n"), "sequential.txt", None, "empty"),
        (dict(sequential="1 1 2 3\n3 4 5 6\n"), "sequential.txt", None, "user 2 is missing"),
        (
            dict(sequential=SEQ, negative="1 5 6\n2 1 3\n3 2 3\n"),
            "negative.txt",
            2,
            "interacted with by user 2",
        ),
        (dict(sequential=SEQ, negative="1 5 6\n2 1\n3 2 3\n"), "negative.txt", 2, "expected 2 negatives"),
        (dict(sequential=SEQ, negative="1 5 6\n2 1 4\n3 2 3\n3 2 3\n"), "negative.txt", 4, "listed twice"),
        (dict(sequential=SEQ, negative="1 5 6\n2 1 4\n9 2 3\n"), "negative.txt", 3, "user 9"),
        (dict(sequential=SEQ, negative="1 5 6\n3 2 3\n"), "negative.txt", None, "no negatives for user 2"),
        (dict(sequential=SEQ, negative=""), "negative.txt", None, "empty"),
        (
            dict(sequential="1 1 2 3\n", datamaps='{"id2user": {"1": "a"}, "id2item": {"1": "x", "2": "y"}}'),
            "sequential.txt",
            1,
            "outside id2item",
        ),
        (dict(sequential="1 1 2 3\n", datamaps='{"id2user": {"1": "a"}}'), "datamaps.json", None, "id2item"),
        (dict(sequential="1 1 2 3\n", datamaps="{\n"), "datamaps.json", 2, "invalid JSON"),
        (
            dict(
                sequential="1 1 2 3\n", explanation='{"train": [{"user": 1, "item": 9, "explanation": "x"}]}'
            ),
            "explanation.json",
            None,
            "item 9",
        ),
    ],
)
def test_p5_bad_input(make_p5_dir, files, file, line, words):
    d = make_p5_dir(**files)
    with pytest.raises(DataError) as e:
        load_p5(d)
    msg = str(e.value)
    assert file in msg and words in msg
    if line is not None:
        assert f"line {line}:" in msg
    assert e.value.line == line


def test_negative_errors_name_the_negative_file_line(make_p5_dir):
    # user 3 is on line 3 of sequential.txt but line 1 of negative.txt
    negatives = "3 2 99\n1 5 6\n2 1 4\n"
    d = make_p5_dir(sequential=SEQ, negative=negatives, datamaps=None)
    with pytest.raises(DataError, match=r"negative.txt, line 1: item 99 is outside"):
        load_p5(d, name=None)
    maps = {
        "id2user": {str(u): f"u{u}" for u in (1, 2, 3)},
        "id2item": {str(i): f"i{i}" for i in range(1, 8)},
    }
    d = make_p5_dir("with_maps", sequential=SEQ, negative="3 2 7\n1 5 6\n2 1 8\n", datamaps=json.dumps(maps))
    with pytest.raises(DataError, match=r"negative.txt, line 3: item 8 is outside the item ids 1..7"):
        load_p5(d)


def test_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_p5(tmp_path / "nope")
    with pytest.raises(DataError, match="needs sequential.txt"):
        load_p5(tmp_path)


def test_binary_file_is_a_data_error(make_p5_dir):
    d = make_p5_dir()
    (d / "sequential.txt").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(DataError, match="UTF-8"):
        load_p5(d)


# --- tables --------------------------------------------------------------------------------


def write_csv(path, rows, header="user,item,timestamp"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_table_orders_by_time_and_keeps_names(tmp_path):
    rows = ["bob,x,5", "amy,y,1", "bob,y,3", "amy,z,1", "amy,x,0", "bob,z,3"]
    ds = load_table(write_csv(tmp_path / "t.csv", rows))
    # users in order of first appearance; histories by time, ties (amy y/z, bob y/z) in file order
    assert ds.user_names == ("", "bob", "amy")
    hist = {ds.user_names[u]: [ds.item_names[i] for i in ds.history(u)] for u in ds.users}
    assert hist == {"bob": ["y", "z", "x"], "amy": ["x", "y", "z"]}
    # P5 indexing: ids by first appearance scanning users in id order
    assert ds.items.tolist() == [1, 2, 3, 3, 1, 2]
    assert ds.name == "t"


def test_load_table_tsv_parquet_and_dates(tmp_path):
    frame = pd.DataFrame(
        {
            "uid": ["a"] * 3 + ["b"] * 3,
            "iid": [1, 2, 3, 3, 2, 1],
            "when": pd.date_range("2020", periods=6)[::-1],
        }
    )
    frame.to_parquet(tmp_path / "t.parquet")
    ds = load_table(tmp_path / "t.parquet", "uid", "iid", "when")
    assert [ds.item_names[i] for i in ds.history(1)] == ["3", "2", "1"]
    frame.assign(when=frame["when"].dt.strftime("%Y-%m-%d")).to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    ds2 = load_table(tmp_path / "t.tsv", "uid", "iid", "when")
    assert ds2.fingerprint() == ds.fingerprint()
    ds3 = load_table(tmp_path / "t.tsv", "uid", "iid", time_col=None)  # file order
    assert [ds3.item_names[i] for i in ds3.history(1)] == ["1", "2", "3"]


def test_kcore_reaches_a_fixed_point(tmp_path, caplog):
    # eve has 2 < 3 interactions; item "rare" has 1, dropping it leaves carl with 2, so carl goes;
    # then "c" has only 2 interactions (< min_item 3) and goes, leaving amy and bob with 3 each
    rows = [
        f"{u},{i},{t}"
        for t, (u, i) in enumerate(
            [
                ("amy", "a"),
                ("amy", "b"),
                ("amy", "c"),
                ("amy", "d"),
                ("bob", "a"),
                ("bob", "b"),
                ("bob", "c"),
                ("bob", "d"),
                ("carl", "a"),
                ("carl", "c"),
                ("carl", "rare"),
                ("dan", "a"),
                ("dan", "b"),
                ("dan", "d"),
                ("eve", "a"),
                ("eve", "b"),
            ]
        )
    ]
    path = write_csv(tmp_path / "k.csv", rows)
    with caplog.at_level(logging.WARNING):
        ds = load_table(path, min_item=3)
    assert set(ds.user_names[1:]) == {"amy", "bob", "dan"}
    assert set(ds.item_names[1:]) == {"a", "b", "d"}
    assert "dropped 2 of 5 users" in caplog.text
    counts = np.bincount(ds.items)[1:]
    assert counts.min() >= 3 and np.diff(ds.offsets)[1:].min() >= 3
    # without k-core only the users with < 3 interactions are dropped
    plain = load_table(path)
    assert set(plain.user_names[1:]) == {"amy", "bob", "carl", "dan"} and plain.n_items == 5


@pytest.mark.parametrize(
    "name, text, line, words",
    [
        (
            "cols.csv",
            "u,i,t\n1,2,3\n",
            1,
            "missing column(s) 'user', 'item', 'timestamp'; found columns 'u', 'i', 't'",
        ),
        ("empty.csv", "", None, "empty"),
        ("header.csv", "user,item,timestamp\n", None, "no interactions"),
        ("time.csv", "user,item,timestamp\na,x,1\na,y,2\na,z,soon\n", 4, "'soon'"),
        ("blank.csv", "user,item,timestamp\na,x,1\na,,2\na,z,3\n", 3, "empty 'item'"),
        ("fields.csv", "user,item,timestamp\na,x,1\na,y,2,9\n", 3, "fields"),
        ("few.csv", "user,item,timestamp\na,x,1\na,y,2\n", None, "no user keeps 3"),
        ("data.xlsx", "whatever", None, "unknown file type '.xlsx'"),
    ],
)
def test_table_bad_input(tmp_path, name, text, line, words):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_table(path)
    msg = str(e.value)
    assert name in msg and words in msg
    if line is not None:
        assert f"line {line}:" in msg


def test_parquet_errors_name_the_row(tmp_path):
    pd.DataFrame({"user": ["a", None], "item": ["x", "y"], "timestamp": [1, 2]}).to_parquet(
        tmp_path / "p.parquet"
    )
    with pytest.raises(DataError, match=r"p.parquet: row 2: empty 'user'"):
        load_table(tmp_path / "p.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read as Parquet"):
        load_table(tmp_path / "bad.parquet")


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("user,item,timestamp\na,x,1\n\na,y,2\na,z,oops\n")
    with pytest.raises(DataError, match="line 5"):
        load_table(path)


def test_recbole_inter(tmp_path):
    path = tmp_path / "ml.inter"
    path.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "7\t10\t5\t3\n7\t11\t4\t1\n7\t12\t3\t2\n8\t10\t1\t1\n8\t12\t1\t2\n8\t13\t1\t3\n"
    )
    ds = load_recbole_inter(path)
    assert [ds.item_names[i] for i in ds.history(1)] == ["11", "12", "10"]
    assert load_dataset(path).fingerprint() == ds.fingerprint()
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id\titem_id\n1\t2\n")
    with pytest.raises(DataError, match=r"bad.inter, line 1: expected a RecBole header"):
        load_recbole_inter(bad)
    with pytest.raises(DataError, match=r"missing column\(s\) 'uid'; found columns 'user_id', 'item_id'"):
        load_recbole_inter(path, user_col="uid")


# --- transformations -----------------------------------------------------------------------


def test_random_reindex_preserves_everything_up_to_the_mapping(synthetic_dataset):
    ds = synthetic_dataset
    r = reindex(ds, "random", seed=3)
    assert not np.array_equal(r.items, ds.items)
    names = np.array(ds.item_names, dtype=object)
    new_names = np.array(r.item_names, dtype=object)
    assert np.array_equal(new_names[r.items], names[ds.items])  # same histories, same order
    assert np.array_equal(new_names[r.negatives[1:]], names[ds.negatives[1:]])  # same candidates
    for split in ("train", "valid", "test"):
        old = [(u, names[i], t) for u, i, t in ds.explanations[split]]
        assert [(u, new_names[i], t) for u, i, t in r.explanations[split]] == old
    assert reindex(ds, "random", seed=3).fingerprint() == r.fingerprint()
    assert reindex(ds, "random", seed=4).fingerprint() != r.fingerprint()
    with pytest.raises(ValueError, match="unknown order"):
        reindex(ds, "alphabetical")


def test_sequential_reindex_is_first_appearance():
    ds = Dataset.from_histories([[5, 3, 5, 9], [2, 3, 7]], n_items=10)
    s = reindex(ds, "sequential")
    assert s.items.tolist() == [1, 2, 1, 3, 4, 2, 5]
    assert s.item_names[1:6] == ("5", "3", "9", "2", "7")  # unnamed input: original ids become names
    assert set(s.item_names[6:]) == {"1", "4", "6", "8", "10"}  # items seen nowhere come last
    assert reindex(s, "sequential").fingerprint() == s.fingerprint()


def test_sample_negatives_are_valid_and_deterministic(synthetic_dataset):
    ds = sample_negatives(synthetic_dataset, n=30, seed=1)
    assert ds.negatives.shape == (ds.n_users + 1, 30)
    for u in ds.users:
        negs = ds.negatives[u]
        assert len(set(negs.tolist())) == 30
        assert not set(negs.tolist()) & set(ds.history(u).tolist())
        assert negs.min() >= 1 and negs.max() <= ds.n_items
    assert np.array_equal(sample_negatives(synthetic_dataset, n=30, seed=1).negatives, ds.negatives)
    assert not np.array_equal(sample_negatives(synthetic_dataset, n=30, seed=2).negatives, ds.negatives)


def test_sample_negatives_uniform_over_untouched_items():
    # user 1 touched 1..3, so 4..10 are equally likely; 7 candidates, draw 1 many times
    ds = Dataset.from_histories([[1, 2, 3]], n_items=10)
    draws = np.concatenate([sample_negatives(ds, n=1, seed=s).negatives[1] for s in range(1400)])
    counts = np.bincount(draws, minlength=11)
    assert counts[:4].sum() == 0 and counts[4:].min() > 150


def test_sample_negatives_caps_width(caplog):
    ds = Dataset.from_histories([[1, 2, 3, 4], [1, 2, 3]], n_items=6)
    with caplog.at_level(logging.WARNING):
        out = sample_negatives(ds, n=99)
    assert out.negatives.shape == (3, 2) and "only 2 negatives" in caplog.text
    with pytest.raises(DataError, match="every item"):
        sample_negatives(Dataset.from_histories([[1, 2, 3]]), n=5)


def test_write_p5_round_trip(tmp_path, synthetic_dataset):
    out = write_p5(synthetic_dataset, tmp_path / "out", meta={"why": "test"})
    back = load_p5(out)
    assert back.fingerprint() == synthetic_dataset.fingerprint()
    assert back.item_names == synthetic_dataset.item_names
    assert back.user_names == synthetic_dataset.user_names
    assert back.explanations == synthetic_dataset.explanations
    assert json.loads((out / "prepare.json").read_text()) == {"why": "test"}
    assert set(json.loads((out / "explanation.json").read_text())) == {"train", "val", "test"}
    with pytest.raises(DataError, match="not empty"):
        write_p5(synthetic_dataset, out)
    write_p5(reindex(synthetic_dataset, "random", seed=1), out, overwrite=True)
    assert load_p5(out).fingerprint() != synthetic_dataset.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary leftovers


def test_write_p5_without_optional_parts(tmp_path):
    ds = Dataset.from_histories([[1, 2, 3], [3, 2, 1, 4]])
    out = write_p5(ds, tmp_path / "plain")
    assert sorted(p.name for p in out.iterdir()) == ["datamaps.json", "sequential.txt"]
    assert load_p5(out).fingerprint() == ds.fingerprint()


def test_describe_measures_the_id_leak(synthetic_dataset):
    info = describe(synthetic_dataset)
    assert info["users"] == synthetic_dataset.n_users
    assert 0 <= info["test_target_is_max_plus_one"] < 0.2
    ds = Dataset.from_histories([[1, 2, 3], [4, 5, 6], [1, 6, 3]])
    assert describe(ds)["test_target_is_max_plus_one"] == pytest.approx(2 / 3, abs=1e-3)


def test_leaky_training_explanations_are_reported(make_p5_dir, caplog):
    rows = [{"user": 1, "item": 1, "explanation": "ok"}, {"user": 1, "item": 3, "explanation": "test item"}]
    d = make_p5_dir(sequential="1 1 2 3\n", explanation=json.dumps({"train": rows}))
    with caplog.at_level(logging.WARNING):
        ds = load_p5(d)
    assert explanation_leaks(ds) == 1 and "1 training explanations" in caplog.text
