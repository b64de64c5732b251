"""The same anchor on a real node: anvil on 127.0.0.1 (CI starts it and sets BFL_CHAIN_URL;
otherwise the fixture starts an anvil binary, or the tests skip saying how to get one).

On a real node a revert reaches web3 as ContractLogicError, not eth-tester's
TransactionFailed; both must come out as ChainRevert with the contract's reason.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from bfl_private.ledger.chain import AnchorContract, Settlement, connect, epsilon_fixed
from bfl_private.ledger.errors import ChainRevert
from bfl_private.ledger.store import Ledger
from click.testing import CliRunner

from bfl_private.chain_sync import read_chain_file, sync, validator_keys
from bfl_private.cli import EXIT_VERIFICATION_FAILED, main

pytest_plugins = ("chain_fixtures",)

def _verify(directory: Path, url: str, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = CliRunner().invoke(main, ["verify", str(directory), "--json", "--chain", url, *extra])
    return result.exit_code, json.loads(result.output)


def test_round_command_anchors_and_verify_checks_the_chain(anvil_url: str,
                                                          tmp_path: Path) -> None:
    directory = tmp_path / "federation"
    result = CliRunner().invoke(main, [
        "round", "--epsilon", "1.0", "--clients", "3", "--rounds", "2", "--protocol", "plain",
        "--seed", "1", "--dir", str(directory), "--chain", anvil_url, "--json"])
    assert result.exit_code == 0, result.output
    chain = json.loads(result.output)["chain"]
    assert chain["deployed"] and chain["anchored"] == [0, 1, 2] and chain["settled"] == [1, 2]
    code, report = _verify(directory, anvil_url, "--contract", chain["contract"])
    assert code == 0, report["failure"]
    assert report["checks"][-1]["name"] == "anchored on chain"
    assert report["checks"][-1]["status"] == "passed"
    anchor = AnchorContract.at(connect(anvil_url), chain["contract"])
    record = read_chain_file(directory)
    assert record is not None
    with Ledger.open(directory) as ledger:
        balances = ledger.state.balances()
    assert {n: anchor.balance_of(a) for n, a in {**record["clients"],
                                                 **record["validators"]}.items()} == balances


def test_below_quorum_and_reverts_on_a_real_node(anvil_url: str,
                                                 federation: Path) -> None:
    report = sync(federation, anvil_url)
    w3 = connect(anvil_url)
    anchor = AnchorContract.at(w3, report.contract)
    with Ledger.open(federation) as ledger:
        head = ledger.block(ledger.height)  # type: ignore[arg-type]
        client = min(ledger.state.clients())
        budget = ledger.state.clients()[client]["epsilon_budget"]
    record = read_chain_file(federation)
    assert record is not None
    over = Settlement(round=anchor.last_round() + 1, closed=False,
                      epsilon={record["clients"][client]: epsilon_fixed(budget) + 1})
    with pytest.raises(ChainRevert, match="exceeds the lifetime budget"):
        anchor.settle_round(head.header, over, sender=anchor.owner())
    keys = validator_keys(federation, sorted(record["validators"]), create=False)
    with pytest.raises(ChainRevert, match="already approved"):
        anchor.approve_header(head.header, validator=keys["validator-0"])
    # a second contract where block 0 has quorum - 1 approvals: verify names it
    (federation / "chain.json").unlink()
    fresh = AnchorContract.deploy(w3, deployer=w3.eth.accounts[0], quorum=anchor.quorum(),
                                  validators=anchor.validators(),
                                  rewards={"reward_per_round": 1000, "penalty_invalid": 100,
                                           "penalty_dropout": 10, "validator_reward": 10})
    with Ledger.open(federation) as ledger:
        genesis = ledger.block(0).header
    fresh.propose_header(genesis, sender=w3.eth.accounts[0])
    for name in sorted(keys)[:anchor.quorum() - 1]:
        fresh.approve_header(genesis, validator=keys[name])
    code, result = _verify(federation, anvil_url, "--contract", fresh.address)
    assert code == EXIT_VERIFICATION_FAILED
    failure = result["failure"]
    assert failure["name"] == "anchored on chain" and failure["block"] == 0
    assert f"{anchor.quorum() - 1} approvals, quorum {anchor.quorum()}" in failure["detail"]
