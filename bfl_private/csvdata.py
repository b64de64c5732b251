"""The user's own data from CSV files, split the way :mod:`bfl_private.data` splits the
bundled datasets, with the same guarantees:

* features are standardised with constants from a **public reference sample** (a CSV file
  with the same columns, held by no hospital), never from hospital records;
* the validators' quality hold-outs and the reported test set come from that public
  sample too, so no hospital record is used outside its owner's DP-SGD;
* genesis publishes a :class:`~bfl_private.settings.CsvDescription`: the feature columns,
  the classes (taken from the public sample only), each hospital's source, the public
  file's SHA-256 and a keyed commitment to each private file, and every later opening
  re-derives it and refuses files that changed.

Every error names the file, the line and the column.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import (
    ClientData,
    DataError,
    FederatedDataset,
    Split,
    _client_data,
    _public_normaliser,
    client_ids,
)
from .settings import CsvDescription, CsvSource

MIN_RECORDS = 10
"""Records a hospital needs (train + validation), as for the bundled datasets."""
VALIDATION_FRACTION = 0.2
TEST_FRACTION = 0.5
"""Share of the public sample that is the reported test set; the rest are validator hold-outs."""


@dataclass(frozen=True)
class _Table:
    path: Path
    header: tuple[str, ...]
    rows: list[tuple[int, dict[str, str]]]
    """(line number, row) for every record."""
    raw: bytes


@dataclass(frozen=True)
class LoadedCsv:
    dataset: FederatedDataset
    description: CsvDescription
    """With empty ``commitments``: those need the federation's secret key (:func:`commitments`)."""


def _read(path_text: str) -> _Table:
    path = Path(path_text)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read CSV {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"CSV {path} is not UTF-8 text: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))  # quoted fields may hold newlines
    try:
        header = tuple(next(reader))
    except StopIteration:
        raise DataError(f"CSV {path} is empty: it needs a header row") from None
    except csv.Error as exc:
        raise DataError(f"CSV {path}:1: {exc}") from None
    if len(set(header)) != len(header) or "" in header:
        raise DataError(f"CSV {path}:1: column names must be non-empty and distinct, got {list(header)}")
    rows = []
    while True:
        line = reader.line_num + 1  # where the record starts (a quoted field may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"CSV {path}:{line}: {exc}") from None
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"CSV {path}:{line}: {len(row)} fields, the header has {len(header)}")
        rows.append((line, dict(zip(header, row))))
    return _Table(path, header, rows, raw)


def _features(table: _Table, columns: Sequence[str]) -> np.ndarray:
    out = np.empty((len(table.rows), len(columns)), dtype=np.float64)
    for i, (line, row) in enumerate(table.rows):
        for j, column in enumerate(columns):
            text = row[column].strip()
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(f"CSV {table.path}:{line}: column {column!r} is {text!r}, not a finite number")
            out[i, j] = value
    return out


def _labels(table: _Table, label: str, classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(table.rows), dtype=np.int64)
    for i, (line, row) in enumerate(table.rows):
        value = row[label].strip()
        if value not in index:
            raise DataError(f"CSV {table.path}:{line}: label {value!r} is not among the public sample's "
                            f"classes {list(classes)}")
        out[i] = index[value]
    return out


def _class_order(values: set[str]) -> tuple[str, ...]:
    """Numeric labels in numeric order, others after them in text order."""
    def key(value: str) -> tuple[int, float, str]:
        try:
            return (0, float(value), value)
        except ValueError:
            return (1, 0.0, value)
    return tuple(sorted(values, key=key))


def _require_columns(table: _Table, columns: Sequence[str], what: str) -> None:
    """``table`` has exactly ``columns`` (in any order): a column the public sample lacks
    would otherwise be dropped without a word."""
    missing = [c for c in columns if c not in table.header]
    if missing:
        raise DataError(f"CSV {table.path}: no {what} column {', '.join(map(repr, missing))}; "
                        f"columns are {list(table.header)}")
    extra = [c for c in table.header if c not in columns]
    if extra:
        raise DataError(f"CSV {table.path}: column(s) {', '.join(map(repr, extra))} are not in the public sample")


def load_csv(source: CsvSource, *, seed: int, n_validators: int) -> LoadedCsv:
    """Read, check and split the files ``source`` names (deterministic for ``seed``)."""
    public = _read(source.public)
    if source.label not in public.header:
        raise DataError(f"CSV {public.path}: no label column {source.label!r}; columns are {list(public.header)}")
    features = tuple(c for c in public.header if c not in (source.label, source.split_column))
    if not features:
        raise DataError(f"CSV {public.path}: no feature columns besides the label {source.label!r}")
    classes = _class_order({row[source.label].strip() for _, row in public.rows})
    if len(classes) < 2:
        raise DataError(f"CSV {public.path}: the public sample has {len(classes)} class(es); a classifier needs 2")
    if len(public.rows) < 2 * n_validators:
        raise DataError(f"CSV {public.path}: {len(public.rows)} public records; the test set and "
                        f"{n_validators} validator hold-outs need at least {2 * n_validators}")

    private: list[_Table] = []
    hospitals: list[tuple[str, np.ndarray, np.ndarray, str]] = []  # (source, x, y, where)
    if source.hospitals:
        for path in source.hospitals:
            table = _read(path)
            _require_columns(table, [*features, source.label], "feature or label")
            private.append(table)
            hospitals.append((str(table.path), _features(table, features), _labels(table, source.label, classes),
                              str(table.path)))
    else:
        table = _read(source.file)  # type: ignore[arg-type]
        _require_columns(table, [*features, source.label, source.split_column], "feature, label or split")  # type: ignore[list-item]
        private.append(table)
        x, y = _features(table, features), _labels(table, source.label, classes)
        groups = np.array([row[source.split_column].strip() for _, row in table.rows])  # type: ignore[index]
        for value in sorted(set(groups.tolist())):
            mask = groups == value
            hospitals.append((value, x[mask], y[mask], f"{table.path} ({source.split_column} = {value!r})"))
    if len(hospitals) < 2:
        raise DataError(f"CSV data gives {len(hospitals)} hospital(s); a federation needs at least 2")
    for _, _, labels, where in hospitals:
        if labels.size < MIN_RECORDS:
            raise DataError(f"{where}: {labels.size} records; each hospital needs at least {MIN_RECORDS}")

    public_x = _features(public, features)
    public_y = _labels(public, source.label, classes)
    public_sha256 = hashlib.sha256(public.raw).hexdigest()
    normaliser = _public_normaliser(
        public_x, f"public reference sample {public.path} (sha256 {public_sha256}), held by no client")
    rng = np.random.default_rng(seed)
    order = rng.permutation(public_y.size)
    n_test = max(1, round(TEST_FRACTION * order.size))
    test_idx, holdout_idx = order[:n_test], order[n_test:]
    clients: list[ClientData] = [
        _client_data(cid, x, y, normaliser, VALIDATION_FRACTION, rng)
        for cid, (_, x, y, _) in zip(client_ids(len(hospitals)), hospitals)
    ]
    dataset = FederatedDataset(
        name="csv",
        n_features=len(features),
        n_classes=len(classes),
        clients=tuple(clients),
        validators=tuple(Split(normaliser.apply(public_x[p]), public_y[p])
                         for p in np.array_split(holdout_idx, n_validators)),
        test=Split(normaliser.apply(public_x[test_idx]), public_y[test_idx]),
        public=Split(normaliser.apply(public_x), public_y),
        normaliser=normaliser,
    )
    description = CsvDescription(features=features, classes=classes, sources=tuple(h[0] for h in hospitals),
                                 public_sha256=public_sha256, commitments=())
    return LoadedCsv(dataset, description)


def commitments(source: CsvSource, key: bytes) -> tuple[str, ...]:
    """HMAC-SHA256 under ``key`` of each private file's bytes, in ``source`` order."""
    paths = source.hospitals or (source.file,)
    return tuple(hmac.new(key, _read(path).raw, hashlib.sha256).hexdigest() for path in paths)  # type: ignore[arg-type]


def check_unchanged(source: CsvSource, recorded: CsvDescription, *, seed: int, n_validators: int,
                    key: bytes) -> None:
    """DataError naming what differs if the files no longer give what genesis recorded."""
    derived = load_csv(source, seed=seed, n_validators=n_validators).description
    for name in ("features", "classes", "sources", "public_sha256"):
        if getattr(derived, name) != getattr(recorded, name):
            raise DataError(f"the CSV data changed since genesis: {name} is now {getattr(derived, name)!r}, "
                            f"genesis recorded {getattr(recorded, name)!r}")
    for path, now, then in zip(source.hospitals or (source.file,), commitments(source, key), recorded.commitments):
        if not hmac.compare_digest(now, then):
            raise DataError(f"the CSV data changed since genesis: {path} is not the file genesis committed to")
