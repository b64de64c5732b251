"""Inspection: summary tables and portable proof records checkable without the ledger."""
from __future__ import annotations

import io
import json

import pytest
from ledger_fixtures import build_ledger
from rich.console import Console

from bfl_private.ledger.checkpoint import open_note
from bfl_private.ledger.errors import ConsistencyProofError, InclusionProofError, RootMismatch
from bfl_private.ledger.inspect import (
    ConsistencyRecord,
    InclusionRecord,
    consistency_proof_record,
    inclusion_proof_record,
    main,
    print_summary,
)


def check_inclusion_record(obj: dict) -> None:
    InclusionRecord.from_json(obj).check()


def check_consistency_record(obj: dict) -> None:
    ConsistencyRecord.from_json(obj).check()
from bfl_private.ledger.store import Ledger


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("inspect") / "ledger"
    return directory, build_ledger(directory, rounds=3)


def test_summary_shows_rounds_budgets_and_balances(built) -> None:
    directory, federation = built
    out = io.StringIO()
    with Ledger.open(directory) as ledger:
        print_summary(ledger, Console(file=out, width=200))
        balances = ledger.state.balances()
    text = out.getvalue()
    for name in [*federation.clients, *federation.validators]:
        assert name in text
    assert str(balances["client-2"]) in text
    assert "accepted" in text and "1.5" in text  # three rounds of 0.5 epsilon each


def test_every_inclusion_record_checks_and_tampering_is_caught(built) -> None:
    directory, federation = built
    verifiers = [v.public for v in federation.validators.values()]
    with Ledger.open(directory) as ledger:
        for block in ledger.blocks():
            for index in range(block.header.size):
                record = json.loads(json.dumps(
                    inclusion_proof_record(ledger, index, height=block.height)))
                check_inclusion_record(record)
                open_note(record["checkpoint"], verifiers=verifiers, quorum=3)
    record["entry"] = record["entry"].replace('"round":', '"round": ')
    with pytest.raises(InclusionProofError):
        check_inclusion_record(record)
    with Ledger.open(directory) as ledger:
        record = inclusion_proof_record(ledger, 3, height=1)
    record["tree_size"] += 1
    with pytest.raises(RootMismatch, match="tree size"):
        check_inclusion_record(record)


def test_consistency_records_between_all_checkpoints(built) -> None:
    directory, _ = built
    with Ledger.open(directory) as ledger:
        for old in range(4):
            for new in range(old, 4):
                check_consistency_record(consistency_proof_record(ledger, old, new))
        record = consistency_proof_record(ledger, 1, 3)
    record["proof"][0] = "00" * 32
    with pytest.raises(ConsistencyProofError):
        check_consistency_record(record)


def test_command_line(built, capsys) -> None:
    directory, _ = built
    assert main([str(directory), "inclusion", "5", "--height", "2"]) == 0
    check_inclusion_record(json.loads(capsys.readouterr().out))
    assert main([str(directory), "consistency", "0", "3"]) == 0
    check_consistency_record(json.loads(capsys.readouterr().out))
    assert main([str(directory), "summary"]) == 0
    assert "federation test-fed" in capsys.readouterr().out
