"""``bfl-private verify``: the full audit of a federation directory, trusting nobody.

It runs the ledger's integrity verifier (checks 1-7: storage, hash chain, Merkle roots,
signatures, quorum certificates, blob CIDs, contract replay with budgets and rewards) and
adds the semantic checks that need the protocols' and the accountant's maths:

    8   aggregates recomputed     every posted aggregate re-derived from the committed
                                  blobs and the round's public transcript (masking:
                                  re-summed masked vectors and revealed seeds; Paillier:
                                  homomorphic sum and verified decryption; CKKS: the sum
                                  ciphertext recomputed); its weight must be the
                                  survivors' registered weights and each coordinate
                                  within what their clipped updates reach
    9   model chain               every new model equals the previous model plus the
                                  averaged aggregate, bit for bit
    10  privacy claims            every cumulative ε recomputed from the raw DP-SGD
                                  parameters of the client's whole history (dp-accounting)
    11  round randomness          every round's SecAgg+ seed recomputed from its validator
                                  beacon (a quorum of genesis-validator signatures on
                                  exactly its opening, right after it), the transcript's
                                  seed, participants, k and t equal to it and the opening,
                                  k and t never below genesis' (ledgers whose genesis
                                  predates the rule: a note that the coordinator could
                                  choose their seeds)
    12  anchored on chain         with ``--chain URL``: every block header final on the
                                  EVM contract with equal fields, on-chain ε, budgets and
                                  balances equal to the ledger's (bfl_private.chain_sync)

It reads only the directory it is given (never ``parties/``, the parties' secrets) and imports no torch. What a
ledger cannot prove is said in the report's notes.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .distributed_round import is_distributed_plan
from .ledger.contracts import LedgerState
from .ledger.entries import ABORT, ATTESTATION, GENESIS, ROUND_CLOSE, ROUND_OPEN, Entry
from .ledger.genesis import GenesisRecord
from .ledger.verify import (
    BlockContext,
    VerificationReport,
    VerifierHook,
    default_workers,
    run_checks,
)
from .privacy.accounting import finish_epsilons, start_epsilons
from .round_checks import (
    PrivacyHistories,
    RoundView,
    PaillierKeyPin,
    check_paillier_key,
    check_round_aggregate,
    check_round_model,
    check_round_randomness,
    registered_records,
)
from .ledger.beacon import RANDOMNESS_BEACON
from .settings import FederationSettings

CANNOT_PROVE = (
    ("The ledger proves the DP-SGD parameters each client declared (σ, q, steps, C, δ), "
    "not that the noise was actually drawn or the clipping applied on the client."),
    ("Quality attestations are the validators' own figures on their private held-out data; "
    "the verifier checks their signatures and the quorum rule, not the figures."),
    ("Each client's record count (data_weight) is public and self-declared: it weights the "
     "average and the rewards and enters the privacy accounting as declared; nothing on the "
     "ledger proves the client holds that many records."),
)
HE_KEY_HOLDER = {
    "paillier": ("Paillier: rounds are decrypted by a quorum of validators, each partial "
                 "decryption proven and re-checked here, under the federation's one key (its "
                 "modulus proven well formed, its size the genesis policy). That key was made by a "
                 "trusted dealer (the paillier-dealer party, run by the federation's operator for the "
                 "first Paillier round), which could have kept p and q and so decrypt any single "
                 "submission the blob store publishes."),
    "ckks": ("CKKS: the federation's key holder (a party apart from the aggregator, whose "
             "secret key stays in its own party folder) can decrypt any single client's "
             "submission, which the blob store publishes; the sum ciphertext was recomputed but "
             "its decryption cannot be proven (CKKS has no verifiable decryption); the published "
             "total is rounded to a grid at least 1024x its error bound, which hides most but not "
             "all of the decryption error (values near a rounding midpoint leak one bit); and a CKKS "
             "submission is not bound to its round or sender, so a re-randomised copy of an earlier "
             "one is not caught (exact copies are)."),
}

LEGACY_RANDOMNESS = ("Round randomness: this federation's genesis predates the validator beacon "
                     "(round_randomness legacy-head-hash); each round's SecAgg+ graph seed was SHA-256 of the "
                     "previous block's hash and the round id, which the coordinator could steer through the block "
                     "time and its choice of participants, so the seeds could have been chosen by the coordinator.")

DISTRIBUTED_DP = ("Distributed DP: each recorded ε holds if the secure sum hid every single share and at most "
                  "t participants (the plan's collusion_threshold) dropped out or colluded with the aggregator; "
                  "the ledger proves the Skellam share parameters each participant declared, not that its "
                  "share was drawn or its records clipped.")


class AggregateHook(VerifierHook):
    name = "aggregates recomputed"

    def __init__(self) -> None:
        self.genesis: GenesisRecord | None = None
        self.paillier_key = PaillierKeyPin()

    def check_block(self, context: BlockContext) -> None:
        genesis = next((e for e in context.entries if e.type == GENESIS), None)
        if genesis is not None:
            self.genesis = GenesisRecord.of(genesis)
            return
        assert self.genesis is not None
        view = RoundView.of(context.entries)
        if view is None:
            # An aborted round's clients still encrypted under the key its opening announced.
            for opened in (e for e in context.entries if e.type == ROUND_OPEN):
                check_paillier_key(opened, FederationSettings.from_json(self.genesis.settings),
                                   pinned=self.paillier_key.n, where=f"round {opened.round}")
            self.paillier_key.add(context.entries)
            return
        check_round_aggregate(view, context.blobs, state=context.state_before, genesis=self.genesis,
                              paillier_key=self.paillier_key.n)
        self.paillier_key.add(context.entries)
        protocol = view.opening.protocol
        if protocol in HE_KEY_HOLDER:
            context.note(HE_KEY_HOLDER[protocol], round=view.round)
        if is_distributed_plan(view.opening.privacy_plan):
            context.note(DISTRIBUTED_DP, round=view.round)


class ModelChainHook(VerifierHook):
    name = "model chain"

    def __init__(self) -> None:
        self.settings: FederationSettings | None = None

    def check_block(self, context: BlockContext) -> None:
        genesis = next((e for e in context.entries if e.type == GENESIS), None)
        if genesis is not None:
            self.settings = FederationSettings.from_json(GenesisRecord.of(genesis).settings)
            return
        view = RoundView.of(context.entries)
        if view is not None:
            assert self.settings is not None
            check_round_model(view, context.blobs, settings=self.settings,
                              records=registered_records(context.state_before))


class PrivacyHook(VerifierHook):
    name = "privacy claims"

    def __init__(self) -> None:
        self.histories = PrivacyHistories()
        self.started: list[Any] = []

    def begin(self, entries: Sequence[Entry], executor: Executor | None) -> None:
        """Start every distinct ε recomputation the claims will need in the other process,
        from a trial pass over the (not yet verified) entries: the checks themselves come
        later and recompute nothing that was not asked for here, they only find it done."""
        if executor is None:
            return
        trial, keys = PrivacyHistories(), []
        try:
            for index, entry in enumerate(entries):
                trial.add((entry,), first_index=index)
                keys.extend(trial.claim_keys((entry,)))
        except Exception:  # noqa: BLE001, S110 - a bad entry: check_block names it later
            pass
        self.started = start_epsilons(keys, executor)

    def end(self) -> None:
        self.started = []

    def check_block(self, context: BlockContext) -> None:
        if self.started:
            finish_epsilons(self.started)
            self.started = []
        self.histories.add(context.entries, first_index=context.block.first_entry)
        self.histories.check_claims(context.entries)


class RoundRandomnessHook(VerifierHook):
    name = "round randomness"

    def __init__(self) -> None:
        self.genesis: GenesisRecord | None = None

    def check_block(self, context: BlockContext) -> None:
        genesis = next((e for e in context.entries if e.type == GENESIS), None)
        if genesis is not None:
            self.genesis = GenesisRecord.of(genesis)
            if FederationSettings.from_json(self.genesis.settings).round_randomness != RANDOMNESS_BEACON:
                context.note(LEGACY_RANDOMNESS)
            return
        assert self.genesis is not None
        check_round_randomness(context.entries, genesis=self.genesis, blobs=context.blobs,
                               where=f"block {context.block.height}")


@dataclass(frozen=True)
class ClientSummary:
    """One client at the verified head: cumulative ε against its budget, tokens, weight."""

    id: str
    epsilon: float
    budget: float
    balance: int
    data_weight: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "epsilon": self.epsilon, "budget": self.budget,
                "balance": self.balance, "data_weight": self.data_weight}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ClientSummary:
        return cls(str(obj["id"]), float(obj["epsilon"]), float(obj["budget"]),
                   int(obj["balance"]), int(obj["data_weight"]))


@dataclass(frozen=True)
class Attestation:
    """One validator's verdict on a round's new model and its quality figure (ppm)."""

    validator: str
    verdict: str
    quality_ppm: int

    def to_json(self) -> dict[str, Any]:
        return {"validator": self.validator, "verdict": self.verdict,
                "quality_ppm": self.quality_ppm}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Attestation:
        return cls(str(obj["validator"]), str(obj["verdict"]), int(obj["quality_ppm"]))


@dataclass(frozen=True)
class RoundSummary:
    """One finished round as the verified log records it."""

    round: int
    protocol: str
    outcome: str
    """``accepted``, ``rejected`` (by the validators) or ``aborted``."""
    participants: tuple[str, ...]
    survivors: tuple[str, ...]
    dropouts: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]
    """(client, reason) of every submission the coordinator refused."""
    abort: str | None
    """``stage: reason`` of an aborted round."""
    epsilon: tuple[tuple[str, float], ...]
    """(client, cumulative ε after this round) of every client it charged."""
    attestations: tuple[Attestation, ...]
    quality_ppm: int | None
    """The accepted model's quality (median accepting figure); None unless accepted."""
    base_model_cid: str | None
    new_model_cid: str | None
    """The model the round proposed (None when aborted)."""
    model_cid: str | None
    """The federation's model after the round (the new one only if accepted)."""
    minted: int

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "protocol": self.protocol, "outcome": self.outcome,
                "participants": list(self.participants), "survivors": list(self.survivors),
                "dropouts": list(self.dropouts), "rejected": dict(self.rejected),
                "abort": self.abort, "epsilon": dict(self.epsilon),
                "attestations": [a.to_json() for a in self.attestations],
                "quality_ppm": self.quality_ppm, "base_model_cid": self.base_model_cid,
                "new_model_cid": self.new_model_cid, "model_cid": self.model_cid,
                "minted": self.minted}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RoundSummary:
        return cls(int(obj["round"]), str(obj["protocol"]), str(obj["outcome"]),
                   tuple(obj["participants"]), tuple(obj["survivors"]), tuple(obj["dropouts"]),
                   tuple(sorted(obj["rejected"].items())), obj["abort"],
                   tuple(sorted((c, float(e)) for c, e in obj["epsilon"].items())),
                   tuple(Attestation.from_json(a) for a in obj["attestations"]),
                   obj["quality_ppm"], obj["base_model_cid"], obj["new_model_cid"],
                   obj["model_cid"], int(obj["minted"]))


@dataclass(frozen=True)
class FederationSummary:
    """The federation as the verified log and replayed state show it; built only from a
    report in which every check passed (:func:`summarise`), never from a second read."""

    initial_model_cid: str | None
    rounds: tuple[RoundSummary, ...]
    clients: tuple[ClientSummary, ...]
    validator_balances: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"initial_model_cid": self.initial_model_cid,
                "last_round": self.rounds[-1].round if self.rounds else 0,
                "rounds": [r.to_json() for r in self.rounds],
                "clients": [c.to_json() for c in self.clients],
                "validators": dict(self.validator_balances)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FederationSummary:
        return cls(obj["initial_model_cid"],
                   tuple(RoundSummary.from_json(r) for r in obj["rounds"]),
                   tuple(ClientSummary.from_json(c) for c in obj["clients"]),
                   tuple(sorted((v, int(b)) for v, b in obj["validators"].items())))


def summarise(log: Sequence[Entry], state: LedgerState) -> FederationSummary:
    """What happened, from the verified entries and the replayed head state: each round's
    opening, close or abort and attestations, joined with the contracts' outcome, quality,
    model and minted tokens for it."""
    outcomes = {r["round"]: r for r in state.rounds()}
    opened: dict[int, Entry] = {}
    ended: dict[int, Entry] = {}
    attested: dict[int, list[Attestation]] = {}
    initial_model_cid = None
    for entry in log:
        if entry.type == GENESIS:
            initial_model_cid = GenesisRecord.of(entry).initial_model_cid
        elif entry.type == ROUND_OPEN:
            opened[entry.round] = entry
        elif entry.type in (ROUND_CLOSE, ABORT):
            ended[entry.round] = entry
        elif entry.type == ATTESTATION:
            p = entry.payload
            attested.setdefault(entry.round, []).append(
                Attestation(p["validator"], p["verdict"], p["quality_ppm"]))
    rounds = []
    for number in sorted(outcomes):
        outcome, start, end = outcomes[number], opened[number].payload, ended[number]
        participants = tuple(start["participants"])
        if end.type == ROUND_CLOSE:
            close = end.payload
            survivors, dropouts = tuple(close["survivors"]), tuple(close["dropouts"])
            rejected, abort, proposed = tuple(sorted(close["rejected"].items())), None, close["new_model_cid"]
        else:
            survivors = tuple(end.payload["survivors"])
            dropouts = tuple(c for c in participants if c not in survivors)
            rejected, proposed = (), None
            abort = f"{end.payload['stage']}: {end.payload['reason']}"
        rounds.append(RoundSummary(
            round=number, protocol=start["protocol"], outcome=outcome["outcome"],
            participants=participants, survivors=survivors, dropouts=dropouts,
            rejected=rejected, abort=abort,
            epsilon=tuple(sorted((c, float(e)) for c, e in end.payload["cumulative_epsilon"].items())),
            attestations=tuple(sorted(attested.get(number, ()), key=lambda a: a.validator)),
            quality_ppm=outcome.get("quality_ppm"), base_model_cid=start["base_model_cid"],
            new_model_cid=proposed, model_cid=outcome["model_cid"],
            minted=int(outcome.get("minted", 0))))
    return FederationSummary(
        initial_model_cid=initial_model_cid,
        rounds=tuple(rounds),
        clients=tuple(ClientSummary(c, float(v["epsilon_spent"]), float(v["epsilon_budget"]),
                                    int(v["balance"]), int(v["data_weight"]))
                      for c, v in sorted(state.clients().items())),
        validator_balances=tuple((v, int(r["balance"])) for v, r in sorted(state.validators().items())),
    )


class AuditReport:
    """The ledger verifier's report plus, when every check passed, the federation's summary."""

    def __init__(self, report: VerificationReport, summary: FederationSummary | None) -> None:
        self.report = report
        self.summary = summary

    @property
    def ok(self) -> bool:
        return self.report.ok

    def to_json(self) -> dict[str, Any]:
        return {**self.report.to_json(),
                "summary": None if self.summary is None else self.summary.to_json()}

    def print(self, console: Console) -> None:
        anchor = self.report.anchor
        if anchor is not None:
            console.print("[bold]Checked against:[/]")
            for line in anchor.lines():
                console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
        checks = Table(title=escape(f"Verification of {self.report.directory}"))
        for column in ("#", "check", "result", "detail"):
            checks.add_column(column)
        for c in self.report.checks:
            colour = {"passed": "green", "failed": "bold red"}.get(c.status, "dim")
            result = {"passed": "OK", "failed": "FAIL"}.get(c.status, "not run")
            checks.add_row(str(c.number), c.name, f"[{colour}]{result}[/]", escape(c.detail))
        console.print(checks)
        if self.summary is not None and self.summary.clients:
            table = Table(title=f"{len(self.summary.rounds)} rounds, {len(self.summary.clients)} clients")
            for column in ("client", "cumulative ε", "budget", "balance"):
                table.add_column(column)
            for c in self.summary.clients:
                table.add_row(c.id, f"{c.epsilon:.4f}", f"{c.budget:g}", str(c.balance))
            console.print(table)
        console.print("[bold]Cannot be proven from the ledger:[/]")
        for note in self.report.notes:
            console.print(f"  - {escape(note)}", highlight=False)
        if self.ok:
            console.print("[bold green]VERIFIED[/]: every check passed.")
        else:
            console.print(f"[bold red]FAILED[/]: {escape(str(self.report.error))}", highlight=False)


def audit(directory: Path | str, *, trusted_checkpoint: str | None = None,
          expected_genesis: str | None = None, chain_url: str | None = None,
          contract: str | None = None, workers: int | None = None) -> AuditReport:
    """Every check of ``bfl-private verify`` on ``directory``, read-only (see the module
    docstring); ``trusted_checkpoint`` and ``expected_genesis`` pin what the auditor holds.
    ``workers``: processes to use (default: two where there are two cores); half the entry
    signatures and the distinct ε recomputations then run beside the other checks, with
    the same checks made and the same report."""
    directory = Path(directory)
    hooks: list[VerifierHook] = [AggregateHook(), ModelChainHook(), PrivacyHook(), RoundRandomnessHook()]
    if chain_url is not None:
        from .chain_sync import chain_hook  # web3 lives behind this import (chain extra)

        hooks.append(chain_hook(directory, chain_url, contract))
    report = run_checks(directory, hooks=hooks, trusted_checkpoint=trusted_checkpoint,
                        expected_genesis=expected_genesis,
                        workers=default_workers() if workers is None else workers)
    report.notes.extend(CANNOT_PROVE)
    summary = summarise(report.log, report.state) if report.ok and report.state is not None else None
    return AuditReport(report, summary)
