"""A federation on its ledger: genesis, privacy planning and rounds, step by step.

:class:`Coordinator` is the coordinator's side: it plans each command's privacy spend,
opens each round (the validators' beacon gives its seed), records the round's result and
every protected update, and asks the validators to check the round and attest the new
model's quality before they co-sign the block. :class:`Federation` adds the in-process
demo: the dataset and its hospitals (:mod:`bfl_private.simulated_hospitals`), reached by
the round engine (:mod:`bfl_private.rounds.engine`) over the loopback transport in
:meth:`Federation.run_round`, as a Flower ServerApp reaches SuperNodes. Everything an
auditor needs is in the ledger directory; every party's private keys stay in its own
folder under ``parties/`` (see :mod:`bfl_private.parties`): the hospitals, validators and
key holders act from their folders, which this object never reads itself.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from . import distributed_round
from .artifacts import get_model, put_aggregate, put_model
from .csvdata import check_unchanged, load_csv
from .csvdata import commitments as csv_commitments
from .data import DataError, FederatedDataset, federation_data
from .distributed_round import DistributedPlan, ServerState
from .federation import Client, accuracy
from .keyring import Keyring, KeyringError
from .ledger.beacon import RANDOMNESS_BEACON, BeaconError, BeaconPolicy, RoundBeacon, opening_digest, round_seed
from .ledger.contracts import min_quorum
from .ledger.entries import ABORT, GENESIS, ROUND_BEACON, ROUND_CLOSE, ROUND_OPEN, SUBMISSION, Entry
from .ledger.genesis import GenesisRecord, RegisteredClient, RegisteredParty, Rewards
from .parties import (
    COORDINATOR,
    CSV_COMMITMENT_KEY_FILE,
    CkksKeyHolderParty,
    LocalHospital,
    PaillierDealer,
    SigningParty,
    check_layout,
    enrol,
    party_folder,
)
from .ledger.store import DATABASE, Ledger, ProposedBlock
from .models import build_model, flatten_parameters
from .primitives.errors import BflError
from .privacy.accounting import SpendRecord, privacy_record_from_json
from .privacy.budget import split_by_budget, validate_delta
from .privacy.errors import PrivacyError
from .privacy.planner import plan_noise_multiplier
from .protocol_setup import RoundParties
from .protocols.base import STAGES, AggregationResult, ForgedInput, Stage
from .round_records import RoundAbortRecord, RoundClosing, with_refusals
from .round_checks import (
    PrivacyHistories,
    charged_epsilon,
    planned_record,
    registered_records,
)
from .settings import FederationSettings, validator_ids
from .validator import Validator
from .validator_service import LoopbackValidator, QuorumNotReached, RemoteValidator, ValidatorPanel

PENDING_OPENING = "round-opening.pending"
"""In the coordinator's folder: the opening it asked the validators to sign a beacon for,
until its round is on the ledger (see :meth:`Coordinator.settle_interrupted_round`)."""
PENDING_BLOCK = "block.pending"
"""In the coordinator's folder: the block it asked the validators to cosign, until it is written."""
PENDING_ROUND = "round.pending"
"""In the coordinator's folder: a round's entries from the moment they carry signed
submissions (and its close or abort) until its block is written."""
INTERRUPTED = ("the coordinator stopped after the validators were asked for this opening's beacon; "
               "they sign one opening per round id, so the round is ended here, unrun")
INTERRUPTED_RUNNING = ("the coordinator stopped while the round ran, after these clients' protected updates "
                       "had left them: the round is ended here, charging each of them")


@dataclass(frozen=True)
class KeptEntries:
    """Entries the coordinator keeps in its folder until they are on the ledger: a round
    whose clients have signed their submissions (its spend must be recorded), or a proposed
    block, with its height and header time (the proposer's choice) from which the header follows."""

    entries: tuple[Entry, ...]
    height: int | None = None
    time: int | None = None

    def to_bytes(self) -> bytes:
        return json.dumps({"height": self.height, "time": self.time,
                           "entries": [base64.b64encode(e.to_bytes()).decode("ascii") for e in self.entries]}).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str) -> KeptEntries:
        try:
            record = json.loads(data)
            entries = tuple(Entry.from_bytes(base64.b64decode(e, validate=True), where=f"{where} entry {i}")
                            for i, e in enumerate(record["entries"]))
            height, time_ = record["height"], record["time"]
            return cls(entries, None if height is None else int(height), None if time_ is None else int(time_))
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"{where}: unreadable kept entries: {exc}") from None


class RunRefused(BflError, RuntimeError):
    """The command cannot run as asked (over budget, inconsistent flags); nothing was written."""


@dataclass(frozen=True)
class ClientPlan:
    noise_multiplier: float
    sample_rate: float


@dataclass(frozen=True)
class CommandPlan:
    """What one command may spend: σ per admitted client (local DP) or one share plan for
    all of them (distributed DP), and who was left out."""

    epsilon: float
    rounds: int
    clients: Mapping[str, ClientPlan | None]
    """Admitted clients; their local DP-SGD plan, None in distributed DP (see ``distributed``)."""
    left_out: Mapping[str, str]
    distributed: DistributedPlan | None = None

    def privacy_plan(self) -> dict[str, object]:
        """The ``privacy_plan`` a round opening states."""
        if self.distributed is not None:
            return self.distributed.to_json()
        return {"epsilon_this_command": self.epsilon, "rounds_this_command": self.rounds,
                "noise_multipliers": {c: p.noise_multiplier for c, p in self.clients.items() if p is not None}}


@dataclass(frozen=True)
class RoundSummary:
    round: int
    status: str
    """"accepted", "rejected" (quality gate: old model kept) or "aborted"."""
    test_accuracy: float | None
    """The model in force after the round on the demo's test split (None where the
    coordinator holds no test data, as a Flower ServerApp)."""
    survivors: tuple[str, ...]
    dropouts: tuple[str, ...]
    rejected: Mapping[str, str]
    seconds: float


def checked_data(settings: FederationSettings) -> FederatedDataset:
    """The federation's data split, refused (DataError, PrivacyError) where genesis would be
    invalid: too few records for the clients, or δ not below 1/n for some client."""
    data = federation_data(settings)
    if len(data.clients) != settings.n_clients:
        raise DataError(f"the CSV data gives {len(data.clients)} hospitals, but n_clients is {settings.n_clients}: "
                        f"set n_clients = {len(data.clients)} in [federation] or with --clients")
    for client in data.clients:
        validate_delta(settings.privacy.delta, n_records=len(client.train), client_id=client.client_id)
    return data


def plan_command(
    settings: FederationSettings,
    histories: Mapping[str, list[SpendRecord]],
    budgets: Mapping[str, float],
    *,
    epsilon: float,
    rounds: int,
    skip_exhausted: bool,
    records: Mapping[str, int],
    dimension: int,
) -> CommandPlan:
    """σ per client (local DP) or the shares (distributed DP) so that this command's rounds
    spend at most ``epsilon`` per record, within lifetime budgets. ``records``: each client's
    record count; ``dimension``: the model's parameter count.

    Refuses (RunRefused) before anything is trained or written when a client's lifetime
    budget cannot afford the command, unless ``skip_exhausted``. Pure: a new federation is
    planned from its settings (empty histories, full budgets) before its directory exists.
    """
    if settings.privacy.mode == "distributed":
        return _plan_distributed(settings, histories, budgets, epsilon=epsilon, rounds=rounds,
                                 skip_exhausted=skip_exhausted, records=records, dimension=dimension)
    privacy = settings.privacy
    try:
        sigma = plan_noise_multiplier(
            target_epsilon=epsilon, delta=privacy.delta, sample_rate=privacy.sample_rate,
            steps_per_round=settings.training.local_steps, rounds=rounds, accountant=privacy.accountant,
            neighboring_relation=privacy.neighboring_relation,
        )
    except PrivacyError as exc:
        raise RunRefused(f"cannot plan ε={epsilon} over {rounds} rounds: {exc}") from exc
    client_plan = ClientPlan(sigma, privacy.sample_rate)
    planned = {c: [planned_record(settings, noise_multiplier=sigma)] * rounds for c in budgets}
    admitted, left_out = split_by_budget(planned, histories=dict(histories), budgets=dict(budgets))
    if left_out and not skip_exhausted:
        first, *others = left_out.values()
        raise RunRefused(f"{first.error(tuple(s.client_id for s in others))}; nothing was run "
                         f"(use --skip-exhausted to leave such clients out)")
    if len(admitted) < 2:
        raise RunRefused(f"only {len(admitted)} client(s) can afford ε={epsilon} more; a round needs 2. "
                         f"Every other client's lifetime budget is exhausted")
    return CommandPlan(epsilon, rounds, {c: client_plan for c in sorted(admitted)}, _reasons(left_out))


def _reasons(left_out: Mapping[str, Any]) -> dict[str, str]:
    return {c: f"ε {s.spent:.4g} + this command would reach {s.projected:.4g} > budget {s.budget:g}"
            for c, s in left_out.items()}


def _plan_distributed(settings: FederationSettings, histories: Mapping[str, list[SpendRecord]],
                      budgets: Mapping[str, float], *, epsilon: float, rounds: int, skip_exhausted: bool,
                      records: Mapping[str, int], dimension: int) -> CommandPlan:
    """One share plan for the clients that can afford it. The shares depend on who takes part
    (N, and the grid on their records), so leaving a client out re-plans the others."""
    admitted, left_out = sorted(budgets), {}
    while True:
        if len(admitted) - settings.privacy.collusion_threshold < 2:
            raise RunRefused(f"only {len(admitted)} client(s) can afford ε={epsilon} more; a round needs "
                             f"{settings.privacy.collusion_threshold + 2} (distributed DP with t = "
                             f"{settings.privacy.collusion_threshold})")
        try:
            plan = distributed_round.plan_round(settings, records=distributed_round.records_of(records, admitted),
                                                dimension=dimension, epsilon=epsilon, rounds=rounds)
        except PrivacyError as exc:
            raise RunRefused(f"cannot plan distributed DP at ε={epsilon} over {rounds} rounds: {exc}") from exc
        record = distributed_round.planned_record(settings, plan, participants=len(admitted))
        affordable, over = split_by_budget({c: [record] * rounds for c in admitted},
                                           histories=dict(histories), budgets=dict(budgets))
        if not over:
            return CommandPlan(epsilon, rounds, {c: None for c in admitted}, _reasons(left_out), plan)
        if not skip_exhausted:
            first, *others = over.values()
            raise RunRefused(f"{first.error(tuple(s.client_id for s in others))}; nothing was run "
                             f"(use --skip-exhausted to leave such clients out)")
        left_out.update(over)
        admitted = sorted(affordable)


class Coordinator:
    """The coordinator's side of a federation directory: its ledger, the coordinator's own
    keys, the validators as it reaches them, privacy planning, round openings and their
    beacons, and block certification.

    It holds no hospital's data. A Flower ServerApp is this object; with every validator
    running as its own process (``remote_validators``) it loads no dataset at all, and
    otherwise the genesis data split for the in-process validators' hold-out data (which
    reads every hospital's records too: the bundled data, or the CSV files). :class:`Federation` adds the
    in-process demo: simulated hospitals, their data and the round engine."""

    def __init__(self, directory: Path, ledger: Ledger, settings: FederationSettings, *,
                 remote_validators: Mapping[str, str] | None = None, genesis: GenesisRecord | None = None) -> None:
        """``remote_validators``: validator name -> ``HOST:PORT`` of a validator running as
        its own process (``bfl-private validator``); the others run in this process.
        ``genesis``: the genesis record, while it is not yet on the ledger (at creation)."""
        self.directory = directory
        self.ledger = ledger
        self.settings = settings
        self.coordinator = SigningParty(directory, COORDINATOR)
        """The coordinator's own party: the one folder this object reads."""
        self._histories = PrivacyHistories()
        genesis = genesis if genesis is not None else GenesisRecord.of(ledger.genesis())
        names = [v.id for v in genesis.validators]
        remote = dict(remote_validators or {})
        if unknown := sorted(set(remote) - set(names)):
            raise RunRefused(f"no validator named {', '.join(unknown)} in this federation (its validators: "
                             f"{', '.join(names)})")
        # The validators of this process, each built from its own folder with its share of
        # the hold-out split; the others are reached where they run.
        local: dict[str, Validator] = {}
        if any(name not in remote for name in names):
            data = self._validator_data()
            local = {name: Validator(directory, name, holdout, settings=settings, n_features=data.n_features,
                                     n_classes=data.n_classes)
                     for name, holdout in zip(names, data.validators) if name not in remote}
        self.validators = ValidatorPanel(
            [RemoteValidator(name, remote[name]) if name in remote else LoopbackValidator(local[name], ledger)
             for name in names],
            keys={v.id: v.key() for v in genesis.validators},
            quorum=BeaconPolicy.from_genesis(genesis).quorum, federation_id=genesis.federation_id,
            sign_proposal=lambda message: self.coordinator.identity.sign(message))
        self.round_parties = RoundParties(list(local.values()), PaillierDealer(directory),
                                          CkksKeyHolderParty(directory))

    def _validator_data(self) -> FederatedDataset:
        """The genesis data split, for the in-process validators' hold-out data."""
        return federation_data(self.settings)

    @classmethod
    def exists(cls, directory: Path) -> bool:
        return (Path(directory) / DATABASE).exists()

    @classmethod
    def open(cls, directory: Path, *, remote_validators: Mapping[str, str] | None = None) -> Self:
        """The federation in ``directory``; LegacyKeyLayout if it still keeps one ``keys/``
        folder (its message says how to migrate)."""
        check_layout(directory)
        ledger = Ledger.open(directory)
        try:
            settings = FederationSettings.from_json(GenesisRecord.of(ledger.genesis()).settings)
            return cls(Path(directory), ledger, settings, remote_validators=remote_validators)
        except BaseException:
            ledger.close()
            raise

    def close(self) -> None:
        self.ledger.close()

    # --- what the ledger says ---------------------------------------------------------

    def histories(self) -> dict[str, list[SpendRecord]]:
        """Each client's privacy records, in log order, from its signed submissions."""
        self._histories.sync(self.ledger)
        return {c: list(self._histories.records.get(c, [])) for c in self.ledger.state.clients()}

    def budgets(self) -> dict[str, float]:
        return {c: float(v["epsilon_budget"]) for c, v in self.ledger.state.clients().items()}

    def current_model(self) -> np.ndarray:
        return get_model(self.ledger.blobs, self.ledger.state.model_cid)

    def test_accuracy(self, params: np.ndarray) -> float | None:
        """The model's accuracy on the federation's test split, where this process holds one
        (the in-process demo); None here."""
        return None

    # --- planning ---------------------------------------------------------------------

    def plan(self, *, epsilon: float, rounds: int, skip_exhausted: bool) -> CommandPlan:
        """σ per client so that this command's rounds spend at most ``epsilon`` (see :func:`plan_command`).
        Record counts are the public ones genesis registers."""
        return plan_command(self.settings, self.histories(), self.budgets(), epsilon=epsilon, rounds=rounds,
                            skip_exhausted=skip_exhausted, records=registered_records(self.ledger.state),
                            dimension=int(self.current_model().shape[0]))

    # --- one round --------------------------------------------------------------------

    def open_round(self, opening: Entry) -> tuple[list[Entry], bytes]:
        """The round's first entries and its public seed (SecAgg+'s graph).

        Under the beacon rule (:mod:`bfl_private.ledger.beacon`) every validator is asked to
        sign the beacon of ``opening``; the signatures are recorded in a ``round_beacon``
        entry after it and give the seed. Fewer than a quorum of signatures: QuorumNotReached,
        nothing written. A legacy federation (genesis without the rule) keeps its old seed,
        SHA-256(head hash, round id), which the coordinator can steer (the audit says so)."""
        if self.settings.round_randomness != RANDOMNESS_BEACON:
            return [opening], hashlib.sha256(self.ledger.head.hash() + opening.round.to_bytes(8, "big")).digest()
        # Kept before any validator sees it: after a crash the round id is bound to this opening.
        self.coordinator.keep(PENDING_OPENING, opening.to_bytes())
        signatures, refusals = self.validators.beacon(opening)
        beacon = RoundBeacon(opening_digest(opening), signatures)
        try:
            seed = round_seed(beacon, opening=opening, policy=self.beacon_policy(), where=f"round {opening.round}")
        except BeaconError as exc:  # too few validators signed: no quorum to seed the round
            raise QuorumNotReached(f"{exc}; nothing was written" +
                                   "".join(f"; {name}: {why}" for name, why in refusals.items())) from exc
        return [opening, self.coordinator.entry(ROUND_BEACON, opening.round, beacon.to_json())], seed

    def settle_interrupted_round(self) -> None:
        """Record what an earlier command left unwritten (it stopped, or too few validators
        answered), before anything else, in this order:

        1. a block proposed but not written, exactly as proposed: some validators may have
           signed its header, and they sign no other at its height;
        2. a round whose clients had signed their submissions: as it ended (its close
           attested anew, or its abort), so their spend is recorded;
        3. a round opened but not run: the validators sign a beacon for one opening per
           round id, so it is recorded with its beacon and an abort charging no one (no
           update of it left a client), and the next round follows. Such aborts are visible.

        QuorumNotReached while the validators still do not answer: nothing is skipped."""
        block = self.coordinator.kept(PENDING_BLOCK)
        if block is not None:
            pending = KeptEntries.from_bytes(block, where=f"{COORDINATOR}'s {PENDING_BLOCK}")
            if pending.height == (0 if self.ledger.height is None else self.ledger.height + 1):
                self._certify_and_commit(self.ledger.propose(pending.entries, time=pending.time))
            self.coordinator.forget(PENDING_BLOCK)  # written, or stale (written before the note was removed)
        kept_round = self.coordinator.kept(PENDING_ROUND)
        if kept_round is not None:
            # Its clients signed their submissions: the round is recorded as it ended (its
            # close attested anew, or its abort), or, stopped while it ran, as an abort
            # charging them; never as an unrun abort.
            entries = list(KeptEntries.from_bytes(kept_round, where=f"{COORDINATOR}'s {PENDING_ROUND}").entries)
            if entries[0].round == self.ledger.state.last_round + 1:
                if entries[-1].type in (ROUND_CLOSE, ABORT):
                    self._attest_and_commit(entries)
                else:
                    self._abort_running(entries)
            self.coordinator.forget(PENDING_ROUND)
        kept = self.coordinator.kept(PENDING_OPENING)
        if kept is None:
            return
        opening = Entry.from_bytes(kept, where=f"{COORDINATOR}'s {PENDING_OPENING}")
        state = self.ledger.state
        if opening.round == state.last_round + 1 and state.open_round is None:
            opened, _ = self.open_round(opening)
            self.record_abort(opened, round_id=opening.round, stage="open", reason=INTERRUPTED, declined={},
                              survivors=(), claims={})
        self.coordinator.forget(PENDING_OPENING)

    def _abort_running(self, entries: list[Entry]) -> None:
        """End a round that stopped while it ran: its opening, beacon and the submissions
        received, and an abort charging each submitter (its update had left it)."""
        records = {e.payload["client"]: privacy_record_from_json(e.payload["privacy"], where=f"kept {e.type}")
                   for e in entries if e.type == SUBMISSION}
        self.record_abort(entries, round_id=entries[0].round, stage="interrupted", reason=INTERRUPTED_RUNNING,
                          declined={}, survivors=sorted(records), claims=charged_epsilon(self.histories(), records))

    def keep_running_round(self, entries: Sequence[Entry]) -> None:
        """Keep a running round's opening, beacon and the submissions received so far: from
        the first one, a stop must end the round charging them (:meth:`settle_interrupted_round`)."""
        self.coordinator.keep(PENDING_ROUND, KeptEntries(tuple(entries)).to_bytes())

    def planned_records(self, plan: CommandPlan, participants: list[str]) -> dict[str, SpendRecord]:
        """The record each participant may sign this round: the plan's σ (local DP) or the
        round's one Skellam record (distributed DP)."""
        if plan.distributed is not None:
            record = distributed_round.planned_record(self.settings, plan.distributed, participants=len(participants))
            return {c: record for c in participants}
        sigmas = {c: p.noise_multiplier for c, p in plan.clients.items() if p is not None}
        return {c: planned_record(self.settings, noise_multiplier=sigmas[c]) for c in participants}

    def beacon_policy(self) -> BeaconPolicy:
        return BeaconPolicy.from_genesis(GenesisRecord.of(self.ledger.genesis()))

    def record_close(self, entries: list[Entry], *, round_id: int, result: AggregationResult,
                     new_params: np.ndarray, server_state: ServerState | None, rejected: Mapping[str, str],
                     participants: Sequence[str], claims: Mapping[str, float]) -> tuple[bool, list[str]]:
        """Record a closed round, as both round engines do: its aggregate, new model and
        transcript as blobs, the close, the validators' attestations, the block. Returns
        whether the model advanced (a quorum accepted it) and the round's dropouts."""
        model_cid = put_model(self.ledger.blobs, new_params, server_state)
        dropouts = sorted(set(participants) - set(result.included) - set(rejected))
        entries.append(self.coordinator.entry(ROUND_CLOSE, round_id, RoundClosing(
            aggregate_cid=put_aggregate(self.ledger.blobs, result.total), new_model_cid=model_cid,
            transcript_cid=self.ledger.blobs.put_json(dict(result.transcript)), survivors=tuple(result.included),
            dropouts=tuple(dropouts), rejected=dict(rejected), cumulative_epsilon=dict(claims)).to_json()))
        self._attest_and_commit(entries)
        return self.ledger.state.model_cid == model_cid, dropouts

    def record_abort(self, entries: list[Entry], *, round_id: int, stage: str | None, reason: str,
                     declined: Mapping[str, str], survivors: Sequence[str], claims: Mapping[str, float]) -> None:
        """Record an aborted round, as both round engines do: the reason (and who refused the
        opening), who was still there, the spend of everyone whose update had left it."""
        entries.append(self.coordinator.entry(ABORT, round_id, RoundAbortRecord(
            stage=stage or "unknown", reason=with_refusals(reason, declined), survivors=tuple(survivors),
            cumulative_epsilon=dict(claims)).to_json()))
        self._attest_and_commit(entries)

    def _attest_and_commit(self, entries: list[Entry]) -> None:
        """Keep the round's entries (its clients' spend is in them), have a closed round
        attested, and commit its block; a round cut short here is settled next command."""
        self.coordinator.keep(PENDING_ROUND, KeptEntries(tuple(entries)).to_bytes())
        if any(e.type == ROUND_CLOSE for e in entries):
            entries = [*entries, *self.validators.attest(entries)]
        self.commit_block(entries)

    def commit_block(self, entries: list[Entry]) -> None:
        """Propose the round's block; each validator co-signs only after re-checking it.

        The block is kept in the coordinator's folder until it is written: a validator signs
        one header per height, so once any has signed, that height can only take this block.
        When fewer than a quorum sign (QuorumNotReached), the next command proposes it again
        (:meth:`settle_interrupted_round`) instead of a block they would all refuse."""
        head_time = self.ledger.head.time if self.ledger.head else 0
        self._certify_and_commit(self.ledger.propose(entries, time=max(int(time.time()), head_time)))

    def _certify_and_commit(self, proposed: ProposedBlock) -> None:
        self.coordinator.keep(PENDING_BLOCK, KeptEntries(proposed.entries, proposed.header.height,
                                                         proposed.header.time).to_bytes())
        self.ledger.commit(proposed, self.validators.certify(proposed))
        self.coordinator.forget(PENDING_BLOCK)
        if any(e.type == ROUND_OPEN for e in proposed.entries):  # its round is on the ledger: nothing left pending
            self.coordinator.forget(PENDING_ROUND)
            self.coordinator.forget(PENDING_OPENING)


class Federation(Coordinator):
    """The in-process demo: a federation directory whose hospitals are simulated here, each
    a party built from its own folder with its share of the data, driven by the round engine
    (:meth:`run_round`); the coordinator's side is :class:`Coordinator`."""

    def __init__(self, directory: Path, ledger: Ledger, settings: FederationSettings, *,
                 remote_validators: Mapping[str, str] | None = None, genesis: GenesisRecord | None = None) -> None:
        if settings.csv is not None and settings.csv_description is not None:
            check_unchanged(settings.csv, settings.csv_description, seed=settings.data_seed,
                            n_validators=settings.n_validators,
                            key=Keyring(party_folder(directory, COORDINATOR)).load(CSV_COMMITMENT_KEY_FILE))
        self.data: FederatedDataset = federation_data(settings)
        self.clients = {
            c.client_id: Client(c, n_features=self.data.n_features, n_classes=self.data.n_classes)
            for c in self.data.clients
        }
        self.hospitals = {c: LocalHospital(directory, c) for c in self.clients}
        super().__init__(directory, ledger, settings, remote_validators=remote_validators, genesis=genesis)

    def _validator_data(self) -> FederatedDataset:
        return self.data

    def test_accuracy(self, params: np.ndarray) -> float:
        return accuracy(self.settings.training.model, params, self.data.test,
                        n_features=self.data.n_features, n_classes=self.data.n_classes)

    # --- creation ---------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, settings: FederationSettings, *, model_seed: int) -> Federation:
        """Have every party enrol in its own folder, write the genesis block from their
        public registrations, and return the new federation.

        A failure part-way removes what was created, so a directory never holds keys
        without a ledger or a ledger without its genesis block.
        """
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            raise RunRefused(f"{directory} is not empty and holds no federation ledger ({DATABASE})")
        created = not directory.exists()
        try:
            return cls._create(directory, settings, model_seed=model_seed)
        except BaseException:
            if created:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                for child in directory.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            raise

    @classmethod
    def _create(cls, directory: Path, settings: FederationSettings, *, model_seed: int) -> Federation:
        if settings.round_randomness != RANDOMNESS_BEACON:
            raise RunRefused(f"round_randomness {settings.round_randomness!r} is only read from old ledgers; "
                             f"a new federation uses {RANDOMNESS_BEACON!r}")
        data = checked_data(settings)
        if settings.csv is not None:
            # Genesis commits to the private files under a key only the coordinator holds.
            key = secrets.token_bytes(32)
            Keyring(party_folder(directory, COORDINATOR)).store(CSV_COMMITMENT_KEY_FILE, key)
            described = load_csv(settings.csv, seed=settings.data_seed, n_validators=settings.n_validators)
            settings = dataclasses.replace(settings, csv_description=dataclasses.replace(
                described.description, commitments=csv_commitments(settings.csv, key)))
        # Each party enrols in its own folder (as a remote party would) and hands over only
        # its public registration; genesis is written from these.
        registered = enrol(party_folder(directory, COORDINATOR), COORDINATOR, "coordinator")
        clients = [(c, enrol(party_folder(directory, c.client_id), c.client_id, "hospital")) for c in data.clients]
        validators = [enrol(party_folder(directory, name), name, "validator")
                      for name in validator_ids(settings.n_validators)]
        coordinator = SigningParty(directory, COORDINATOR)
        ledger = Ledger.create(directory)
        initial = flatten_parameters(build_model(settings.training.model, data.n_features, data.n_classes, seed=model_seed))
        genesis = GenesisRecord(
            federation_id=f"bfl-{secrets.token_hex(6)}",
            settings=settings.to_json(),
            quorum=min_quorum(len(validators)),
            rewards=Rewards(**dataclasses.asdict(settings.rewards)),
            coordinator=RegisteredParty(COORDINATOR, registered.vkey),
            clients=tuple(RegisteredClient(c.client_id, r.vkey, epsilon_budget=settings.privacy.lifetime_epsilon,
                                           delta=settings.privacy.delta, data_weight=len(c.train))
                          for c, r in clients),
            validators=tuple(RegisteredParty(v.party, v.vkey) for v in validators),
            initial_model_cid=put_model(ledger.blobs, initial),
            normalisation=data.normaliser,
        )
        entry = coordinator.entry(GENESIS, 0, genesis.to_json())
        federation = cls(directory, ledger, settings, genesis=genesis)
        federation.commit_block([entry])
        return federation

    # --- one round --------------------------------------------------------------------

    def run_round(
        self,
        plan: CommandPlan,
        *,
        protocol: str,
        dropout: float,
        malicious: int,
        rng: np.random.Generator,
        on_client: Callable[[str], None] = lambda client: None,
        forged: Mapping[str, ForgedInput] | None = None,
    ) -> RoundSummary:
        """One round among the plan's clients: the round engine a Flower deployment runs
        (:class:`~bfl_private.rounds.engine.RoundEngine`), over the loopback transport
        to the demo's hospitals (:mod:`bfl_private.simulated_hospitals`), each running the
        participant code a SuperNode runs from its own folder.

        Each client stops answering, with probability ``dropout``, from a stage drawn with
        ``rng``; ``malicious`` of the others (drawn with ``rng``) follow the encoding with
        garbage values; each client in ``forged`` skips the encoding and sends its
        :class:`ForgedInput` instead. Whatever they send, the round ends in a block: closed,
        or aborted with the reason and the spend of everyone whose input had left it.
        ``on_client`` is called as each hospital starts its local computation."""
        from .rounds.loopback import LoopbackTransport
        from .rounds.engine import RoundEngine
        from .simulated_hospitals import simulated_hospitals

        self.settle_interrupted_round()  # first: the hospitals' histories start from the settled ledger
        participants = sorted(plan.clients)
        drop: dict[str, Stage] = {c: STAGES[int(rng.integers(len(STAGES)))] for c in participants if rng.random() < dropout}
        forged = dict(forged or {})
        honest = [c for c in participants if c not in drop and c not in forged]
        faulty = set(rng.choice(honest, size=min(malicious, len(honest)), replace=False).tolist()) if malicious else set()
        hospitals = simulated_hospitals(self, participants, faulty=faulty, forged=forged, rng=rng, on_train=on_client)
        return RoundEngine(self, plan, LoopbackTransport(hospitals, drop=drop), protocol=protocol).run()

