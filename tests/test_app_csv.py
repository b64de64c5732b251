"""A federation on the user's own CSV data, through the same `round` command: one file per
hospital or one file with a split column, a public reference sample for normalisation,
hold-outs and test set, a genesis that describes the data and commits to the files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from bfl_private.ledger.store import Ledger
from click.testing import CliRunner
from sklearn.datasets import load_breast_cancer

from bfl_private.audit import audit
from bfl_private.cli import EXIT_USAGE, main
from bfl_private.csvdata import load_csv
from bfl_private.settings import CsvSource

SITES = ("north", "south", "east")


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """breast_cancer as a researcher would hold it: a public sample, three hospitals' files,
    and the same hospitals in one file with a site column."""
    directory = tmp_path_factory.mktemp("csv")
    bunch = load_breast_cancer()
    header = [name.replace(" ", "_") for name in bunch.feature_names] + ["diagnosis"]
    order = np.random.default_rng(0).permutation(len(bunch.target))
    rows = [[f"{v:.6g}" for v in bunch.data[i]] + [("malignant", "benign")[bunch.target[i]]] for i in order]
    write_csv(directory / "public.csv", header, rows[:60])
    for h in range(3):
        write_csv(directory / f"hospital-{h}.csv", header, rows[60 + 150 * h: 60 + 150 * (h + 1)])
    write_csv(directory / "all.csv", [*header, "site"],
              [[*row, SITES[i // 150]] for i, row in enumerate(rows[60:510])])
    (directory / "run.toml").write_text(
        '[csv]\nlabel = "diagnosis"\npublic = "public.csv"\n'
        'hospitals = ["hospital-0.csv", "hospital-1.csv", "hospital-2.csv"]\n'
        '[protocol]\nname = "plain"\n[run]\nepsilon = 1.0\nrounds = 2\n')
    (directory / "split.toml").write_text(
        '[federation]\nn_clients = 3\n[csv]\nlabel = "diagnosis"\npublic = "public.csv"\nfile = "all.csv"\n'
        'split_column = "site"\n[protocol]\nname = "plain"\n[run]\nepsilon = 1.0\nrounds = 1\n')
    return directory


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def genesis_payload(directory: Path) -> dict:
    with Ledger.open(directory) as ledger:
        return ledger.genesis().payload


def test_one_file_per_hospital_runs_verifies_and_describes_the_data(data_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    result = invoke("round", "--config", str(data_dir / "run.toml"), "--dir", str(directory), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["rounds"]) == 2 and all(r["test_accuracy"] > 0.7 for r in report["rounds"])
    assert audit(directory).ok
    genesis = genesis_payload(directory)
    settings = genesis["settings"]
    description = settings["csv_description"]
    assert settings["dataset"] == "csv" and settings["n_clients"] == 3
    assert description["classes"] == ["benign", "malignant"] and len(description["features"]) == 30
    assert description["sources"] == [str(data_dir / f"hospital-{h}.csv") for h in range(3)]
    assert len(description["commitments"]) == 3 and len(set(description["commitments"])) == 3
    # The commitments are keyed: no plain hash of a private file is published.
    import hashlib
    plain = {hashlib.sha256((data_dir / f"hospital-{h}.csv").read_bytes()).hexdigest() for h in range(3)}
    assert not plain & set(description["commitments"]) and plain.isdisjoint(json.dumps(genesis))
    # Normalisation comes from the public file alone, and genesis names it with its hash.
    public = load_csv(CsvSource(**settings["csv"]), seed=0, n_validators=4)
    assert genesis["normalisation"] == public.dataset.normaliser.to_json()
    assert description["public_sha256"] in genesis["normalisation"]["source"]
    with (data_dir / "public.csv").open() as handle:
        public_rows = list(csv.DictReader(handle))
    radius = np.array([float(r["mean_radius"]) for r in public_rows])
    assert genesis["normalisation"]["mean"][0] == pytest.approx(radius.mean())
    assert [c["data_weight"] for c in genesis["clients"]] == [len(c.train) for c in public.dataset.clients]


def test_a_split_column_gives_one_hospital_per_value(data_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    result = invoke("round", "--config", str(data_dir / "split.toml"), "--dir", str(directory), "--json")
    assert result.exit_code == 0, result.output
    description = genesis_payload(directory)["settings"]["csv_description"]
    assert description["sources"] == sorted(SITES) and len(description["commitments"]) == 1
    assert audit(directory).ok
    wrong_count = data_dir / "split-count.toml"
    wrong_count.write_text((data_dir / "split.toml").read_text().replace("n_clients = 3", "n_clients = 5"))
    bad = invoke("round", "--config", str(wrong_count), "--dir", str(tmp_path / "other"))
    assert bad.exit_code == EXIT_USAGE and "gives 3 hospitals, but n_clients is 5" in bad.stderr
    assert not (tmp_path / "other").exists()


def test_a_changed_hospital_file_is_refused_and_nothing_is_written(data_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    directory = tmp_path / "fed"
    assert invoke("round", "--config", str(copy / "run.toml"), "--dir", str(directory)).exit_code == 0
    with Ledger.open(directory) as ledger:
        height = ledger.height
    original = (copy / "hospital-1.csv").read_bytes()
    (copy / "hospital-1.csv").write_bytes(original.replace(b"benign", b"malignant", 1))
    result = invoke("round", "--epsilon", "0.5", "--rounds", "1", "--dir", str(directory))
    assert result.exit_code == EXIT_USAGE
    assert f"{copy / 'hospital-1.csv'} is not the file genesis committed to" in result.stderr
    with Ledger.open(directory) as ledger:
        assert ledger.height == height
    (copy / "hospital-1.csv").write_bytes(original)  # restored: the federation continues
    assert invoke("round", "--epsilon", "0.5", "--rounds", "1", "--dir", str(directory)).exit_code == 0


@pytest.mark.parametrize(("edit", "message"), [
    (lambda rows: rows[5].__setitem__(3, "n/a"), "hospital-0.csv:6: column 'mean_area' is 'n/a', not a finite number"),
    (lambda rows: rows[2].__setitem__(3, "inf"), "hospital-0.csv:3: column 'mean_area' is 'inf'"),
    (lambda rows: rows[4].__setitem__(30, "maybe"), "hospital-0.csv:5: label 'maybe' is not among the public sample's"),
    (lambda rows: rows[3].pop(), "hospital-0.csv:4: 30 fields, the header has 31"),
    (lambda rows: rows.__delitem__(slice(9, None)), "hospital-0.csv: 8 records; each hospital needs at least 10"),
    (lambda rows: rows[0].__setitem__(30, "label"), "hospital-0.csv: no feature or label column 'diagnosis'"),
    (lambda rows: [row.append("x") for row in rows], "hospital-0.csv: column(s) 'x' are not in the public sample"),
    (lambda rows: rows[3].__setitem__(0, "1\n2"), "hospital-0.csv:4: column 'mean_radius' is '1\\n2'"),
])
def test_bad_rows_are_named_by_file_line_and_column(data_dir: Path, tmp_path: Path, edit, message: str) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    with (copy / "hospital-0.csv").open() as handle:
        rows = list(csv.reader(handle))
    edit(rows)
    write_csv(copy / "hospital-0.csv", rows[0], rows[1:])
    result = invoke("round", "--config", str(copy / "run.toml"), "--dir", str(tmp_path / "fed"))
    assert result.exit_code == EXIT_USAGE and message in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "fed").exists()


@pytest.mark.parametrize(("table", "message"), [
    ('label = "outcome"\npublic = "public.csv"\nhospitals = ["hospital-0.csv", "hospital-1.csv"]',
     "public.csv: no label column 'outcome'"),
    ('label = "diagnosis"\npublic = "nope.csv"\nhospitals = ["hospital-0.csv", "hospital-1.csv"]',
     "cannot read CSV"),
    ('label = "diagnosis"\npublic = "public.csv"\nhospitals = ["hospital-0.csv"]', "a federation needs at least 2 clients, got 1"),
    ('label = "diagnosis"\npublic = "public.csv"\nfile = "all.csv"', "needs split_column"),
    ('label = "diagnosis"\npublic = "public.csv"\nhospitals = "hospital-0.csv"', "is not a list of strings"),
    ('label = "diagnosis"\nhospitals = ["hospital-0.csv", "hospital-1.csv"]', "missing 1 required"),
])
def test_bad_csv_tables_are_usage_errors(data_dir: Path, tmp_path: Path, table: str, message: str) -> None:
    config = data_dir / f"{tmp_path.name}.toml"  # beside the data its paths name
    config.write_text(f"[csv]\n{table}\n[run]\nepsilon = 1.0\nrounds = 1\n")
    result = invoke("round", "--config", str(config), "--dir", str(tmp_path / "fed"))
    assert result.exit_code == EXIT_USAGE and message in result.stderr, result.stderr
    assert not (tmp_path / "fed").exists()
