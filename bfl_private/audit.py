"""``bfl-private verify``: the full audit of a federation directory, trusting nobody.

It runs the ledger's integrity verifier (checks 1-7: storage, hash chain, Merkle roots,
signatures, quorum certificates, blob CIDs, contract replay with budgets and rewards) and
adds the semantic checks that need the protocols' and the accountant's maths:

    8   aggregates recomputed     every posted aggregate re-derived from the committed
                                  blobs and the round's public transcript (masking:
                                  re-summed masked vectors and revealed seeds; Paillier:
                                  homomorphic sum and verified decryption; CKKS: the sum
                                  ciphertext recomputed)
    9   model chain               every new model equals the previous model plus the
                                  averaged aggregate, bit for bit
    10  privacy claims            every cumulative ε recomputed from the raw DP-SGD
                                  parameters of the client's whole history (dp-accounting)
    11  anchored on chain         with ``--chain URL``: every block header final on the
                                  EVM contract with equal fields, on-chain ε, budgets and
                                  balances equal to the ledger's (bfl_private.chain_sync)

It reads only the directory it is given (never ``keys/``) and imports no torch. What a
ledger cannot prove is said in the report's notes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .ledger.entries import ATTESTATION, GENESIS
from .ledger.verify import BlockContext, VerificationReport, VerifierHook, run_checks
from .protocols.threshold_paillier import DEALER
from .round_checks import (
    PrivacyHistories,
    RoundView,
    check_round_aggregate,
    check_round_model,
    registered_client_keys,
)

CANNOT_PROVE = (
    ("The ledger proves the DP-SGD parameters each client declared (σ, q, steps, C, δ), "
    "not that the noise was actually drawn or the clipping applied on the client."),
    ("Quality attestations are the validators' own figures on their private held-out data; "
    "the verifier checks their signatures and the quorum rule, not the figures."),
)


class AggregateHook(VerifierHook):
    name = "aggregates recomputed"

    def check_block(self, context: BlockContext) -> None:
        view = RoundView.of(context.entries)
        if view is None:
            return
        check_round_aggregate(view, context.blobs, registered_keys=registered_client_keys(context.state_before),
                              validators=context.state_before.validators())
        threshold_key = view.opened.payload.get("protocol_params", {}).get("threshold_key")
        if isinstance(threshold_key, dict) and threshold_key.get("key_generation") == DEALER:
            context.note(f"round {view.round}: Paillier — decrypted by a quorum of validators with checked partial "
                         "decryptions; the shared key was made by a trusted dealer, which could have kept p and q")
        if view.opened.payload["protocol"] == "ckks":
            context.note(f"round {view.round}: CKKS — the sum ciphertext was recomputed; its decryption "
                         "cannot be proven (CKKS has no verifiable decryption)")


class ModelChainHook(VerifierHook):
    name = "model chain"

    def __init__(self) -> None:
        self.server_learning_rate: float | None = None

    def check_block(self, context: BlockContext) -> None:
        genesis = next((e for e in context.entries if e.type == GENESIS), None)
        if genesis is not None:
            self.server_learning_rate = float(genesis.payload["settings"]["training"]["server_learning_rate"])
            return
        view = RoundView.of(context.entries)
        if view is not None:
            assert self.server_learning_rate is not None
            check_round_model(view, context.blobs, server_learning_rate=self.server_learning_rate)


class PrivacyHook(VerifierHook):
    name = "privacy claims"

    def __init__(self) -> None:
        self.histories = PrivacyHistories()

    def check_block(self, context: BlockContext) -> None:
        self.histories.add(context.entries, first_index=context.block.first_entry)
        self.histories.check_claims(context.entries)


class AuditReport:
    """The ledger verifier's report plus the federation's summary tables."""

    def __init__(self, report: VerificationReport, summary: dict[str, Any]) -> None:
        self.report = report
        self.summary = summary

    @property
    def ok(self) -> bool:
        return self.report.ok

    def to_json(self) -> dict[str, Any]:
        return {**self.report.to_json(), "summary": self.summary}

    def print(self, console: Console) -> None:
        checks = Table(title=f"Verification of {self.report.directory}")
        for column in ("#", "check", "result", "detail"):
            checks.add_column(column)
        for c in self.report.checks:
            colour = {"passed": "green", "failed": "bold red"}.get(c.status, "dim")
            result = {"passed": "OK", "failed": "FAIL"}.get(c.status, "not run")
            checks.add_row(str(c.number), c.name, f"[{colour}]{result}[/]", c.detail)
        console.print(checks)
        if self.summary.get("clients"):
            table = Table(title=f"{self.summary['rounds']} rounds, {len(self.summary['clients'])} clients")
            for column in ("client", "cumulative ε", "budget", "balance"):
                table.add_column(column)
            for c in self.summary["clients"]:
                table.add_row(c["id"], f"{c['epsilon']:.4f}", f"{c['budget']:g}", str(c["balance"]))
            console.print(table)
        console.print("[bold]Cannot be proven from the ledger:[/]")
        for note in self.report.notes:
            console.print(f"  - {note}", highlight=False)
        if self.ok:
            console.print("[bold green]VERIFIED[/]: every check passed.")
        else:
            console.print(f"[bold red]FAILED[/]: {self.report.error}", highlight=False)


def _summary(directory: Path, report: VerificationReport) -> dict[str, Any]:
    """Rounds, clients' ε and balances from the verified head state (empty if it failed early)."""
    if not report.ok:
        return {}
    from .ledger.store import Ledger

    with Ledger.open(directory) as ledger:
        state = ledger.state
        attestations = sum(1 for e in ledger.entries() if e.type == ATTESTATION)
        return {
            "rounds": state.last_round,
            "attestations": attestations,
            "rounds_detail": state.rounds(),
            "clients": [
                {"id": c, "epsilon": float(v["epsilon_spent"]), "budget": float(v["epsilon_budget"]),
                 "balance": int(v["balance"])}
                for c, v in sorted(state.clients().items())
            ],
            "validators": {v: int(r["balance"]) for v, r in sorted(state.validators().items())},
        }


def audit(directory: Path | str, *, trusted_checkpoint: str | None = None,
          chain_url: str | None = None, contract: str | None = None) -> AuditReport:
    directory = Path(directory)
    hooks: list[VerifierHook] = [AggregateHook(), ModelChainHook(), PrivacyHook()]
    if chain_url is not None:
        from .chain_sync import chain_hook  # web3 lives behind this import (chain extra)

        hooks.append(chain_hook(directory, chain_url, contract))
    report = run_checks(directory, hooks=hooks, trusted_checkpoint=trusted_checkpoint)
    for note in CANNOT_PROVE:
        report.notes.append(note)
    return AuditReport(report, _summary(directory, report))
