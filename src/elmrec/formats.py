"""File formats: readers that validate P5 directories, CSV/TSV/Parquet tables and RecBole
``.inter`` files into a ``Dataset`` (errors name the file, the line and what was expected), and
the P5 writer that ``load_p5`` reads back unchanged."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .data import MIN_INTERACTIONS, DataError, Dataset, explanation_leaks
from .io import atomic_directory

log = logging.getLogger(__name__)


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _parse_int_lines(path: Path, what: str) -> list[tuple[int, list[int]]]:
    """Lines of whitespace-separated positive integers -> (line number, ints)."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    ints = [int(p) for p in parts]
                except ValueError:
                    bad = next(p for p in parts if not _is_int(p))
                    raise DataError(path, lineno, f"expected {what} (integer ids), found {bad!r}") from None
                if min(ints) < 1:
                    raise DataError(path, lineno, f"ids must be positive integers from 1, found {min(ints)}")
                rows.append((lineno, ints))
    except UnicodeDecodeError:
        raise DataError(path, None, f"not a UTF-8 text file; expected {what}") from None
    if not rows:
        raise DataError(path, None, f"file is empty; expected {what}")
    return rows


def _read_sequences(path: Path) -> dict[int, tuple[int, list[int]]]:
    out: dict[int, tuple[int, list[int]]] = {}
    for lineno, ints in _parse_int_lines(path, "'user_id item_id item_id ...'"):
        user, hist = ints[0], ints[1:]
        if user in out:
            raise DataError(path, lineno, f"user {user} is listed twice (first on line {out[user][0]})")
        if len(hist) < MIN_INTERACTIONS:
            raise DataError(
                path,
                lineno,
                f"user {user} has {len(hist)} interactions; at least {MIN_INTERACTIONS} are needed "
                "(train, validation and test)",
            )
        out[user] = (lineno, hist)
    users = sorted(out)
    if users != list(range(1, len(users) + 1)):
        missing = next(u for u in range(1, len(users) + 1) if u not in out)
        raise DataError(
            path,
            None,
            f"user ids must be 1..{len(users)} without gaps; user {missing} is missing "
            "(run 'elmrec data prepare' to re-index)",
        )
    return out


def _read_negatives(path: Path, seqs: dict[int, tuple[int, list[int]]], n_items: int) -> np.ndarray:
    """Candidate negatives per user; every error names the offending line of ``path`` itself."""
    n_users = len(seqs)
    rows: dict[int, list[int]] = {}
    first_line: dict[int, int] = {}
    width = None
    for lineno, ints in _parse_int_lines(path, "'user_id item_id ...' (candidate negatives)"):
        user, negs = ints[0], ints[1:]
        if user not in seqs:
            raise DataError(path, lineno, f"user {user} does not appear in sequential.txt")
        if user in rows:
            raise DataError(path, lineno, f"user {user} is listed twice (first on line {first_line[user]})")
        if width is None:
            if not negs:
                raise DataError(path, lineno, f"user {user} has no negatives; expected 'user_id item_id ...'")
            width, width_line = len(negs), lineno
        if len(negs) != width:
            expected = f"expected {width} negatives per user (like line {width_line})"
            raise DataError(path, lineno, f"{expected}, found {len(negs)}")
        if max(negs) > n_items:
            raise DataError(path, lineno, f"item {max(negs)} is outside the item ids 1..{n_items}")
        seen = set(seqs[user][1])
        hit = next((i for i in negs if i in seen), None)
        if hit is not None:
            raise DataError(path, lineno, f"negative item {hit} was interacted with by user {user}")
        rows[user], first_line[user] = negs, lineno
    if len(rows) != n_users:
        missing = next(u for u in range(1, n_users + 1) if u not in rows)
        raise DataError(path, None, f"no negatives for user {missing}; every user needs a line")
    out = np.zeros((n_users + 1, width), dtype=np.int64)
    for u, negs in rows.items():
        out[u] = negs
    return out


def _read_datamaps(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        with open(path, encoding="utf-8") as f:
            maps = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"invalid JSON: {e.msg}") from None
    names = []
    for key in ("id2user", "id2item"):
        m = maps.get(key) if isinstance(maps, dict) else None
        if not isinstance(m, dict):
            raise DataError(path, None, f"expected an object with key {key!r} mapping id -> original id")
        try:
            ids = {int(k): str(v) for k, v in m.items()}
        except ValueError:
            raise DataError(path, None, f"{key} keys must be integer ids") from None
        n = max(ids, default=0)
        if sorted(ids) != list(range(1, n + 1)):
            raise DataError(path, None, f"{key} must cover ids 1..{n} without gaps")
        names.append(("",) + tuple(ids[i] for i in range(1, n + 1)))
    return names[0], names[1]


def _read_explanations(path: Path, n_users: int, n_items: int) -> dict[str, list[tuple[int, int, str]]]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"invalid JSON: {e.msg}") from None
    if not isinstance(raw, dict) or "train" not in raw:
        raise DataError(path, None, "expected an object with 'train' (and optionally 'val'/'test') lists")
    out = {}
    for split_in, split in (("train", "train"), ("val", "valid"), ("valid", "valid"), ("test", "test")):
        if split_in not in raw:
            continue
        rows = []
        for k, rec in enumerate(raw[split_in]):
            try:
                u, i, text = int(rec["user"]), int(rec["item"]), str(rec["explanation"])
            except (KeyError, TypeError, ValueError):
                raise DataError(
                    path, None, f"{split_in}[{k}]: expected {{user, item, explanation}} with integer ids"
                ) from None
            if not (1 <= u <= n_users and 1 <= i <= n_items):
                raise DataError(path, None, f"{split_in}[{k}]: user {u} or item {i} outside the dataset")
            rows.append((u, i, text))
        out[split] = rows
    return out


def load_p5(directory: str | Path, name: str | None = None) -> Dataset:
    """Load a P5-format directory: sequential.txt (required), negative.txt, datamaps.json and
    explanation.json (optional)."""
    d = Path(directory)
    seq_path = d / "sequential.txt"
    if not d.is_dir():
        raise DataError(d, None, "not a directory; expected a P5-format dataset directory")
    if not seq_path.is_file():
        raise DataError(seq_path, None, "missing; a P5-format directory needs sequential.txt")
    seqs = _read_sequences(seq_path)
    n_users = len(seqs)
    user_names = item_names = None
    max_item = max(max(h) for _, h in seqs.values())
    if (d / "datamaps.json").is_file():
        user_names, item_names = _read_datamaps(d / "datamaps.json")
        if len(user_names) - 1 != n_users:
            raise DataError(
                d / "datamaps.json",
                None,
                f"id2user has {len(user_names) - 1} users, sequential.txt {n_users}",
            )
        n_items = len(item_names) - 1
        if max_item > n_items:
            line = next(ln for ln, h in seqs.values() if max(h) > n_items)
            raise DataError(seq_path, line, f"item {max_item} is outside id2item (1..{n_items})")
    else:
        n_items = max_item
    negatives = None
    if (d / "negative.txt").is_file():
        negatives = _read_negatives(d / "negative.txt", seqs, n_items)
    explanations = None
    if (d / "explanation.json").is_file():
        explanations = _read_explanations(d / "explanation.json", n_users, n_items)
    lengths = np.array([0] + [len(seqs[u][1]) for u in range(1, n_users + 1)])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.concatenate([np.asarray(seqs[u][1]) for u in range(1, n_users + 1)])
    ds = Dataset(
        name=name or d.resolve().name,
        offsets=offsets,
        items=items,
        n_items=n_items,
        negatives=negatives,
        user_names=user_names,
        item_names=item_names,
        explanations=explanations,
    )
    if leaks := explanation_leaks(ds):
        log.warning(
            "%s: %d training explanations are about a (user, item) that is not a training interaction "
            "(e.g. the user's validation or test item); see elmrec.data.explanation_leaks",
            d / "explanation.json",
            leaks,
        )
    return ds


_DELIMITED = {".csv": ",", ".tsv": "\t"}
_PARQUET = (".parquet", ".pq")


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    """All cells as strings; blank lines are kept as empty rows so that row i sits on line i + 2."""
    try:
        return pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False
        )
    except pd.errors.EmptyDataError:
        raise DataError(path, None, "file is empty; expected a header and one interaction per line") from None
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        found = re.search(r"saw (\d+)", str(e))
        detail = f"found {found.group(1)} fields where the header has fewer" if found else str(e).strip()
        raise DataError(path, int(m.group(1)) if m else None, f"cannot parse: {detail}") from None
    except UnicodeDecodeError:
        raise DataError(path, None, "not a UTF-8 text file") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(path, None, f"cannot read as Parquet: {e}") from None


def _missing(values: pd.Series) -> np.ndarray:
    """Empty cells: NaN/None in typed columns (Parquet), '' or whitespace in text columns (CSV)."""
    return (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()


def _timestamps(values: pd.Series, path: Path, line_of) -> np.ndarray:
    """Numbers, or dates that pandas can parse; the first bad cell stops with its line."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.astype("int64").to_numpy(dtype=np.float64)
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return numeric.to_numpy(dtype=np.float64)
    if numeric.isna().all():  # maybe dates
        dates = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        if dates.notna().all():
            return dates.astype("int64").to_numpy(dtype=np.float64)
        bad = int(np.flatnonzero(dates.isna().to_numpy())[0])
    else:
        bad = int(np.flatnonzero(numeric.isna().to_numpy())[0])
    raise DataError(path, *line_of(bad, f"timestamp {values.iloc[bad]!r} is neither a number nor a date"))


def _from_frame(
    frame: pd.DataFrame,
    path: Path,
    user_col: str,
    item_col: str,
    time_col: str | None,
    min_user: int,
    min_item: int,
    name: str | None,
    has_lines: bool,
) -> Dataset:
    """Interaction rows -> Dataset: k-core filter, order by time, assign ids, keep original ids."""

    def line_of(row: int, message: str) -> tuple[int | None, str]:
        # header is line 1 of a text table; Parquet has rows, not lines
        return (row + 2, message) if has_lines else (None, f"row {row + 1}: {message}")

    wanted = [c for c in (user_col, item_col, time_col) if c]
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        found = ", ".join(repr(str(c)) for c in frame.columns)
        raise DataError(
            path,
            1 if has_lines else None,
            f"missing column(s) {', '.join(map(repr, absent))}; found columns {found} "
            "(choose them with --user-col / --item-col / --time-col; --time-col '' keeps file order)",
        )
    cells = frame[wanted]
    blank = np.all([_missing(cells[c]) for c in wanted], axis=0)
    rows = np.flatnonzero(~blank)  # wholly blank lines are skipped, partly empty ones are errors
    if len(rows) == 0:
        raise DataError(path, None, "no interactions: the file has a header but no data lines")
    cells = cells.iloc[rows]
    for c in wanted:
        empty = _missing(cells[c])
        if empty.any():
            raise DataError(path, *line_of(int(rows[np.argmax(empty)]), f"empty {c!r} value"))
    users = cells[user_col].astype(str).str.strip().to_numpy()
    items = cells[item_col].astype(str).str.strip().to_numpy()
    times = (
        _timestamps(cells[time_col], path, lambda r, m: line_of(int(rows[r]), m))
        if time_col
        else np.zeros(len(rows))
    )
    ucode, unames = pd.factorize(users)
    icode, inames = pd.factorize(items)

    # k-core to a fixed point; users need MIN_INTERACTIONS anyway, so that limit takes part too
    need_user = max(min_user, MIN_INTERACTIONS)
    keep = np.ones(len(rows), dtype=bool)
    while True:
        uc = np.bincount(ucode[keep], minlength=len(unames))
        ic = np.bincount(icode[keep], minlength=len(inames))
        new_keep = keep & (uc[ucode] >= need_user) & (ic[icode] >= min_item)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if not keep.any():
        raise DataError(
            path, None, f"no user keeps {need_user} interactions after filtering (min_item={min_item})"
        )
    n_users_in, n_items_in = len(unames), len(inames)
    users, items, times = users[keep], items[keep], times[keep]
    if not keep.all():
        log.warning(
            "%s: dropped %d of %d users (fewer than %d interactions) and %d of %d items (fewer than %d), "
            "%d interactions in all",
            path,
            n_users_in - len(np.unique(ucode[keep])),
            n_users_in,
            need_user,
            n_items_in - len(np.unique(icode[keep])),
            n_items_in,
            min_item,
            int((~keep).sum()),
        )

    # users: ids in order of first appearance in the file; history: by time, ties in file order
    ucode, unames = pd.factorize(users)
    order = np.argsort(times, kind="stable")
    order = order[np.argsort(ucode[order], kind="stable")]
    ucode, items = ucode[order], items[order]
    icode, inames = pd.factorize(items)  # first appearance over users in id order: P5's indexing
    lengths = np.bincount(ucode, minlength=len(unames))
    return Dataset(
        name=name or path.stem,
        offsets=np.concatenate([[0, 0], np.cumsum(lengths)]),
        items=icode + 1,
        n_items=len(inames),
        user_names=("",) + tuple(map(str, unames)),
        item_names=("",) + tuple(map(str, inames)),
    )


def load_table(
    path: str | Path,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str | None = "timestamp",
    sep: str | None = None,
    min_user: int = 0,
    min_item: int = 0,
    name: str | None = None,
) -> Dataset:
    """Interactions from a .csv (comma), .tsv (tab) or .parquet table, one row per interaction.

    Histories are ordered by ``time_col`` (ties keep file order; ``None`` keeps file order
    throughout). ``min_user`` / ``min_item`` apply k-core filtering to a fixed point; users left
    with fewer than 3 interactions are always dropped (and the count logged), since leave-one-out
    needs a training, a validation and a test item. Item ids follow P5's sequential indexing:
    use :func:`reindex` for random ids.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _DELIMITED and suffix not in _PARQUET:
        raise DataError(path, None, f"unknown file type {suffix!r}; expected .csv, .tsv or .parquet")
    if not path.is_file():
        raise DataError(path, None, "file not found")
    if suffix in _PARQUET:
        frame, has_lines = _read_parquet(path), False
    else:
        frame, has_lines = _read_delimited(path, sep or _DELIMITED[suffix]), True
    return _from_frame(frame, path, user_col, item_col, time_col or None, min_user, min_item, name, has_lines)


def load_recbole_inter(
    path: str | Path,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    min_user: int = 0,
    min_item: int = 0,
    name: str | None = None,
) -> Dataset:
    """A RecBole atomic ``.inter`` file: tab-separated, header fields ``name:type``
    (e.g. ``user_id:token  item_id:token  rating:float  timestamp:float``). See :func:`load_table`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "file not found")
    frame = _read_delimited(path, "\t")
    header = [str(c) for c in frame.columns]
    if not all(re.fullmatch(r"[^:\s]+:[a-z_]+", c) for c in header):
        raise DataError(
            path, 1, f"expected a RecBole header of 'name:type' fields (user_id:token, ...); found {header}"
        )
    frame.columns = [c.split(":")[0] for c in header]
    return _from_frame(frame, path, user_col, item_col, time_col or None, min_user, min_item, name, True)


FORMATS = ("auto", "p5", "table", "inter")


def load_dataset(
    path: str | Path,
    format: str = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = "timestamp",
    sep: str | None = None,
    min_user: int = 0,
    min_item: int = 0,
    name: str | None = None,
) -> Dataset:
    """Any supported input: a P5 directory, a .csv/.tsv/.parquet table or a RecBole .inter file.

    ``auto`` picks by what ``path`` is: a directory is P5, ``.inter`` is RecBole, else a table.
    Column names default to each format's convention (``user``/``item`` vs ``user_id``/``item_id``).
    """
    path = Path(path)
    if format == "auto":
        if path.is_dir():
            format = "p5"
        elif not path.exists():
            raise DataError(path, None, "not found; expected a P5 directory or an interaction file")
        else:
            format = "inter" if path.suffix.lower() == ".inter" else "table"
    if format == "p5":
        if min_user or min_item:
            raise DataError(path, None, "k-core filtering applies to tables and .inter files, not P5 dirs")
        return load_p5(path, name=name)
    if format == "inter":
        return load_recbole_inter(
            path, user_col or "user_id", item_col or "item_id", time_col, min_user, min_item, name
        )
    if format == "table":
        return load_table(
            path, user_col or "user", item_col or "item", time_col, sep, min_user, min_item, name
        )
    raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")


# --- transformations ---------------------------------------------------------------------------


def write_p5(
    dataset: Dataset, out_dir: str | Path, overwrite: bool = False, meta: dict | None = None
) -> Path:
    """Write ``dataset`` as a P5-format directory that :func:`load_p5` reads back unchanged.

    The directory appears whole or not at all (written beside ``out_dir``, then renamed); an
    existing non-empty ``out_dir`` is only replaced with ``overwrite``. ``meta`` (e.g. how the
    data was prepared) goes to ``prepare.json``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, None, "exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        message = "directory exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        raise DataError(out_dir, None, message)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        seq = "".join(f"{u} {' '.join(map(str, dataset.history(u).tolist()))}\n" for u in dataset.users)
        (tmp / "sequential.txt").write_text(seq, encoding="utf-8")
        if dataset.negatives is not None:
            neg = "".join(f"{u} {' '.join(map(str, dataset.negatives[u].tolist()))}\n" for u in dataset.users)
            (tmp / "negative.txt").write_text(neg, encoding="utf-8")
        user_names = dataset.user_names or ("",) + tuple(str(u) for u in dataset.users)
        item_names = dataset.item_names or ("",) + tuple(str(i) for i in range(1, dataset.n_items + 1))
        maps = {
            "user2id": {name: str(u) for u, name in enumerate(user_names) if u},
            "item2id": {name: str(i) for i, name in enumerate(item_names) if i},
            "id2user": {str(u): name for u, name in enumerate(user_names) if u},
            "id2item": {str(i): name for i, name in enumerate(item_names) if i},
        }
        (tmp / "datamaps.json").write_text(json.dumps(maps, ensure_ascii=False) + "\n", encoding="utf-8")
        if dataset.explanations:
            exp = {
                {"valid": "val"}.get(split, split): [
                    {"user": int(u), "item": int(i), "explanation": text} for u, i, text in rows
                ]
                for split, rows in dataset.explanations.items()
            }
            text = json.dumps(exp, ensure_ascii=False) + "\n"
            (tmp / "explanation.json").write_text(text, encoding="utf-8")
        if meta is not None:
            (tmp / "prepare.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir
