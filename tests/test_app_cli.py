"""The command line's boundary: creation only after every refusal check, one writer per
directory, one-line errors with documented exit codes (JSON under --json), Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bfl_private.ledger.store import DATABASE, Ledger
from click.testing import CliRunner

from bfl_private.audit import audit
from bfl_private.cli import (
    EXIT_ALL_ABORTED,
    EXIT_CHAIN,
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    EXIT_USAGE,
    EXIT_VERIFICATION_FAILED,
    main,
)
from bfl_private.dirlock import exclusive_writer

SMALL = ["--clients", "4", "--seed", "1", "--protocol", "plain"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_error(result) -> str:
    """The error a failed command printed: exactly one line, nothing else, no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--epsilon", "1e9", "--rounds", "2"], EXIT_REFUSED, "would exceed its lifetime privacy budget"),
    (["--epsilon", "inf"], EXIT_USAGE, "must be a finite number > 0, got inf"),
    (["--epsilon", "nan"], EXIT_USAGE, "must be a finite number > 0, got nan"),
    (["--epsilon", "1", "--malicious", "10"], EXIT_REFUSED, "--malicious 10 leaves no honest client among 10"),
    (["--epsilon", "1", "--clients", "1000"], EXIT_USAGE, "at most 38 clients can get 10 records each"),
    (["--epsilon", "1", "--budget", "inf"], EXIT_USAGE, "--budget"),
    (["--epsilon", "1", "--dp", "distributed", "--protocol", "ckks"], EXIT_USAGE,
     "distributed DP needs a secure sum that is exact in the integer ring"),
    (["--epsilon", "1", "--dp", "distributed", "--clients", "3"], EXIT_USAGE,
     "collusion_threshold 2 leaves fewer than 2 honest hospitals' noise among 3"),
])
def test_a_refused_first_command_creates_nothing(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    directory = tmp_path / "parent" / "fed"
    result = invoke("round", *args, "--dir", str(directory))
    assert result.exit_code == code
    assert message in one_line_error(result)
    assert not (tmp_path / "parent").exists()  # not the directory, not even its parent
    # The retry with what the refusal asked for is not a genesis conflict: there is no genesis.
    retry = invoke("round", "--epsilon", "1", "--rounds", "1", *SMALL, "--dir", str(directory), "--json")
    assert retry.exit_code == 0, retry.output
    assert json.loads(retry.stdout)["created"] is True


def test_errors_are_json_on_stdout_under_json(tmp_path: Path) -> None:
    result = invoke("round", "--epsilon", "1", "--malicious", "10", "--dir", str(tmp_path / "d"), "--json")
    assert result.exit_code == EXIT_REFUSED and result.stderr == ""
    assert json.loads(result.stdout) == {"error": "--malicious 10 leaves no honest client among 10",
                                         "exit_code": EXIT_REFUSED}
    usage = invoke("round", "--rounds", "0", "--epsilon", "1", "--json")
    assert usage.exit_code == EXIT_USAGE and "0 is not in the range" in json.loads(usage.stdout)["error"]


def test_unusable_directories_are_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    for directory, message in [(afile, "is not a directory"), (afile / "sub", f"({afile} is a file)"),
                               (Path("/proc/bfl-private-test"), "cannot use --dir /proc/bfl-private-test")]:
        result = invoke("round", "--epsilon", "1", "--rounds", "1", *SMALL, "--dir", str(directory))
        assert result.exit_code == EXIT_USAGE and message in one_line_error(result), result.stderr
    # A read-only filesystem (access(2) answers EROFS): the check runs before any write.
    # Tests run as root here, where permission bits do not stop writes, so the answer is staged.
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == readonly else real_access(path, mode))
    result = invoke("round", "--epsilon", "1", "--rounds", "1", *SMALL, "--dir", str(readonly / "fed"))
    assert result.exit_code == EXIT_USAGE and "is not writable" in one_line_error(result)
    assert list(readonly.iterdir()) == []


def test_init_creates_with_genesis_options_and_round_continues(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    created = invoke("init", "--dir", str(directory), "--clients", "3", "--budget", "7", "--seed", "4",
                     "--protocol", "plain", "--json")
    assert created.exit_code == 0, created.output
    summary = json.loads(created.stdout)
    with Ledger.open(directory) as ledger:
        genesis = ledger.genesis().payload
        assert ledger.state.last_round == 0
    assert summary["federation_id"] == genesis["federation_id"] and summary["clients"] == 3
    settings = genesis["settings"]
    assert (settings["n_clients"], settings["privacy"]["lifetime_epsilon"], settings["data_seed"],
            settings["protocol"]["name"]) == (3, 7.0, 4, "plain")
    refused = invoke("init", "--dir", str(tmp_path / "big" / "fed"), "--clients", "1000")
    assert refused.exit_code == EXIT_USAGE and "at most 38 clients" in one_line_error(refused)
    assert not (tmp_path / "big").exists()
    again = invoke("init", "--dir", str(directory))
    assert again.exit_code == EXIT_REFUSED and "already holds a federation" in one_line_error(again)
    conflict = invoke("round", "--epsilon", "1", "--dir", str(directory), "--budget", "8")
    assert conflict.exit_code == EXIT_REFUSED and "--budget 8.0 conflicts" in one_line_error(conflict)
    ran = invoke("round", "--epsilon", "1", "--rounds", "1", "--dir", str(directory), "--json")
    assert ran.exit_code == 0 and json.loads(ran.stdout)["created"] is False
    assert audit(directory).ok


def test_a_second_writer_is_refused_in_one_line(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    assert invoke("init", "--dir", str(directory), *SMALL).exit_code == 0
    before = (directory / DATABASE).read_bytes()
    with exclusive_writer(directory):  # what a running `round` holds
        busy = invoke("round", "--epsilon", "1", "--rounds", "1", "--dir", str(directory))
        init = invoke("init", "--dir", str(tmp_path / "fed"))
    assert busy.exit_code == EXIT_REFUSED and "being written by another bfl-private command" in one_line_error(busy)
    assert init.exit_code == EXIT_REFUSED
    assert (directory / DATABASE).read_bytes() == before
    assert invoke("round", "--epsilon", "1", "--rounds", "1", "--dir", str(directory)).exit_code == 0


def test_a_command_whose_every_round_aborted_exits_5(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    # Masking: every hospital gone at some stage leaves no one to unmask. (In a one-shot
    # protocol a hospital gone only after its encrypt stage has already submitted.)
    result = invoke("round", "--epsilon", "1", "--rounds", "2", "--clients", "4", "--seed", "1", "--protocol",
                    "masking", "--dropout", "1.0", "--dir", str(directory), "--json")
    assert result.exit_code == EXIT_ALL_ABORTED
    report = json.loads(result.stdout)
    assert [r["status"] for r in report["rounds"]] == ["aborted", "aborted"]
    assert report["exit_code"] == EXIT_ALL_ABORTED and "aborted" in report["error"]
    assert audit(directory).ok  # the aborts are recorded, and verify


def test_config_file_sets_genesis_and_run(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[federation]\nn_clients = 3\ndata_seed = 2\n[privacy]\ndelta = 1e-6\nclipping_norm = 0.5\n'
                      'sample_rate = 0.5\nlifetime_epsilon = 6\n[protocol]\nname = "plain"\n'
                      '[run]\nepsilon = 2.0\nrounds = 1\n')
    directory = tmp_path / "fed"
    result = invoke("round", "--config", str(config), "--dir", str(directory), "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["rounds"]) == 1
    with Ledger.open(directory) as ledger:
        settings = ledger.genesis().payload["settings"]
    assert (settings["n_clients"], settings["data_seed"], settings["privacy"]["delta"],
            settings["privacy"]["clipping_norm"], settings["privacy"]["sample_rate"],
            settings["privacy"]["lifetime_epsilon"]) == (3, 2, 1e-6, 0.5, 0.5, 6.0)
    # Flags win over the file; a flag that contradicts the genesis is refused.
    bad = invoke("round", "--config", str(config), "--dir", str(directory), "--clients", "4")
    assert bad.exit_code == EXIT_REFUSED and "--clients 4 conflicts" in one_line_error(bad)


@pytest.mark.parametrize(("text", "message"), [
    ("[privacy]\ndelta = 'small'\n", "[privacy]: delta = 'small' is not of type float"),
    ("[privacy]\ndelta = inf\n", "is not a finite number"),
    ("[privacy]\ndelta = 2.0\n", "delta must be a number in (0, 1), got 2.0"),
    ("[privacy]\nsample_rate = 0\n", "[privacy] sample_rate: PrivacySettings.sample_rate must be a positive number, got 0.0"),
    ("[privacy]\ndleta = 1e-6\n", "unknown key 'dleta'"),
    ("[privcy]\ndelta = 1e-6\n", "unknown table [privcy]"),
    ("privacy = 3\n", "privacy must be a table"),
    ("[run]\nepsilon = 1\nrounds = 1.5\n", "rounds = 1.5 is not of type int"),
    ("[run]\nepsilon = -1\n", "must be a finite number > 0"),
    ("[run\n", "is not valid TOML"),
])
def test_config_errors_name_file_table_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "run.toml"
    config.write_text(text)
    epsilon = [] if "[run]" in text else ["--epsilon", "1"]
    result = invoke("round", *epsilon, "--config", str(config), "--dir", str(tmp_path / "fed"))
    assert result.exit_code == EXIT_USAGE and message in one_line_error(result), result.stderr
    assert not (tmp_path / "fed").exists()
    missing = invoke("round", "--epsilon", "1", "--config", str(tmp_path / "nope.toml"))
    assert missing.exit_code == EXIT_USAGE and "cannot read config" in one_line_error(missing)


@pytest.mark.slow
def test_ctrl_c_says_how_many_rounds_were_committed_and_loses_none(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    assert invoke("init", "--dir", str(directory), *SMALL, "--budget", "1000").exit_code == 0
    command = [sys.executable, "-m", "bfl_private.cli", "round", "--epsilon", "500", "--rounds", "1000",
               "--dir", str(directory), "--json"]
    # Started with SIGINT ignored, as a non-interactive shell starts a background job: the
    # command must still take the interrupt.
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            db = sqlite3.connect(f"file:{directory / DATABASE}?mode=ro", uri=True)
            (height,) = db.execute("SELECT MAX(height) FROM blocks").fetchone()
            db.close()
            if height >= 3:
                break
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGINT)
        try:
            stdout, stderr = child.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
            pytest.fail(f"the interrupted command did not stop within 120 s; stderr: {stderr[-2000:]}")
    assert child.returncode == EXIT_INTERRUPTED, stderr
    error = json.loads(stdout)
    with Ledger.open(directory) as ledger:
        committed = ledger.state.last_round
    assert committed >= 2
    assert error == {"error": f"interrupted: {committed} round(s) committed; run again to continue",
                     "exit_code": EXIT_INTERRUPTED}
    assert audit(directory).ok
    assert invoke("round", "--epsilon", "1", "--rounds", "1", "--dir", str(directory)).exit_code == 0


# --- the researcher's commands on one small federation -----------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cli") / "fed"
    result = invoke("round", "--epsilon", "1", "--rounds", "2", *SMALL, "--dir", str(directory), "--json")
    assert result.exit_code == 0, result.output
    return directory


def test_inspect_json_matches_the_ledger_state(federation: Path) -> None:
    result = invoke("inspect", str(federation), "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    with Ledger.open(federation) as ledger:
        state = ledger.state
        assert (summary["federation_id"], summary["height"], summary["entries"], summary["model_cid"]) == \
            (state.federation_id, ledger.height, ledger.size, state.model_cid)
        assert summary["clients"] == state.clients() and summary["rounds"] == state.rounds()


def test_log_lists_every_entry_once_and_show_prints_it(federation: Path) -> None:
    lines = invoke("log", str(federation)).stdout.splitlines()
    records = [json.loads(line) for line in invoke("log", str(federation), "--json").stdout.splitlines()]
    with Ledger.open(federation) as ledger:
        entries = ledger.entries()
        assert [r["index"] for r in records] == list(range(ledger.size)) == list(range(len(lines)))
    assert [r["entry"] for r in records] == [json.loads(e.to_bytes()) for e in entries]
    assert records[0]["author"] == "coordinator" and records[0]["entry"]["type"] == "genesis"
    submissions = [r for r in records if r["entry"]["type"] == "submission"]
    assert all(r["author"] == r["entry"]["payload"]["client"] for r in submissions)
    filtered = invoke("log", str(federation), "--client", "hospital-02", "--round", "2", "--json").stdout
    (only,) = [json.loads(line) for line in filtered.splitlines()]
    assert (only["author"], only["entry"]["round"], only["entry"]["type"]) == ("hospital-02", 2, "submission")
    shown = invoke("show", str(federation), str(only["index"]))
    assert shown.exit_code == 0 and json.loads(shown.stdout) == only
    missing = invoke("show", str(federation), "100000")
    assert missing.exit_code == EXIT_USAGE and "no entry 100000" in one_line_error(missing)


def test_prove_finds_a_hospitals_submission_and_check_proof_accepts_it(federation: Path, tmp_path: Path) -> None:
    result = invoke("prove", str(federation), "--client", "hospital-01", "--round", "2")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    entry = json.loads(record["entry"])
    assert (entry["type"], entry["round"], entry["payload"]["client"]) == ("submission", 2, "hospital-01")
    proof = tmp_path / "proof.json"
    proof.write_text(result.stdout)
    assert invoke("check-proof", str(proof), "--dir", str(federation)).exit_code == 0
    for args, message in [(["--client", "hospital-09", "--round", "1"], "no client 'hospital-09'"),
                          (["--client", "hospital-01", "--round", "9"], "made no submission in round 9"),
                          (["--client", "hospital-01"], "--client and --round go together"),
                          (["--entry", "1", "--client", "hospital-01", "--round", "1"], "give exactly one of")]:
        bad = invoke("prove", str(federation), *args)
        assert bad.exit_code == EXIT_USAGE and message in one_line_error(bad), (args, bad.stderr)


def test_export_model_loads_in_torch_and_predicts_like_the_ledgers_model(federation: Path, tmp_path: Path) -> None:
    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from bfl_private.artifacts import get_model
    from bfl_private.models import build_model, load_flat

    for round_args, round_id in [([], None), (["--round", "1"], 1), (["--round", "0"], 0)]:
        output = tmp_path / f"model-{round_id}.safetensors"
        result = invoke("export-model", str(federation), "-o", str(output), *round_args)
        assert result.exit_code == 0, result.output
        with Ledger.open(federation) as ledger:
            state = ledger.state
            cid = {None: state.model_cid, 0: ledger.genesis().payload["initial_model_cid"],
                   1: state.rounds()[0]["model_cid"]}[round_id]
            reference = build_model("logreg", 30, 2)
            load_flat(reference, get_model(ledger.blobs, cid))
        with safe_open(str(output), "pt") as handle:
            metadata = handle.metadata()
        assert metadata["model_cid"] == cid and metadata["model"] == "logreg"
        # What the README says: build the model, load_state_dict, standardise with the metadata.
        model = build_model(metadata["model"], int(metadata["n_features"]), int(metadata["n_classes"]))
        model.load_state_dict(load_file(str(output)))
        x = torch.from_numpy(np.random.default_rng(0).normal(size=(16, 30)).astype(np.float32))
        assert torch.equal(model(x), reference(x))
    bad = invoke("export-model", str(federation), "-o", str(tmp_path / "x"), "--round", "7")
    assert bad.exit_code == EXIT_USAGE and "no round 7" in one_line_error(bad)


def test_piped_output_does_not_depend_on_the_terminal_width(federation: Path) -> None:
    outputs = {
        columns: subprocess.run([sys.executable, "-m", "bfl_private.cli", "inspect", str(federation)],
                                capture_output=True, text=True, env={**os.environ, "COLUMNS": columns},
                                check=True).stdout
        for columns in ("40", "300")
    }
    assert outputs["40"] == outputs["300"]
    with Ledger.open(federation) as ledger:
        assert ledger.state.model_cid in outputs["40"]  # not truncated with an ellipsis


def test_bad_keys_or_a_broken_ledger_are_one_line_errors(federation: Path, tmp_path: Path) -> None:
    import shutil

    exposed = tmp_path / "exposed"
    shutil.copytree(federation, exposed)
    (exposed / "parties" / "coordinator" / "identity.ed25519").chmod(0o644)
    result = invoke("round", "--epsilon", "0.5", "--rounds", "1", "--dir", str(exposed), "--json")
    assert result.exit_code == EXIT_USAGE and "must be 0600" in json.loads(result.stdout)["error"]
    broken = tmp_path / "broken"
    shutil.copytree(federation, broken)
    (broken / DATABASE).write_bytes(b"not a database")
    result = invoke("round", "--epsilon", "0.5", "--rounds", "1", "--dir", str(broken))
    assert result.exit_code == EXIT_VERIFICATION_FAILED
    assert "the ledger does not check out (StorageError" in one_line_error(result)
    assert (broken / DATABASE).read_bytes() == b"not a database"


def test_an_unreachable_chain_is_no_verdict_on_the_ledger(federation: Path) -> None:
    """verify --chain with no node at the URL exits 4 (the chain could not be asked),
    never 1: nothing was found wrong with the ledger."""
    pytest.importorskip("web3")
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    contract = "0x" + "00" * 19 + "01"
    result = invoke("verify", str(federation), "--chain", url, "--contract", contract)
    assert result.exit_code == EXIT_CHAIN
    line = one_line_error(result)
    assert f"could not reach the chain {url}: no Ethereum JSON-RPC node answers" in line
    assert "nothing was concluded about the ledger" in line and "FAILED" not in result.output
    as_json = invoke("verify", str(federation), "--chain", url, "--contract", contract, "--json")
    assert as_json.exit_code == EXIT_CHAIN
    assert json.loads(as_json.stdout)["exit_code"] == EXIT_CHAIN
    # Without chain.json and without --contract no contract is named: a usage error.
    unnamed = invoke("verify", str(federation), "--chain", url)
    assert unnamed.exit_code == EXIT_USAGE and "give --contract ADDRESS" in one_line_error(unnamed)
