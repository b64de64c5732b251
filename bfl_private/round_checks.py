"""The checks of one round that validators run before they sign and auditors re-run later.

One implementation for both, so a validator's approval means exactly what the verifier
checks. Numpy, the protocols' public recomputation and the privacy accountant only:
no torch, no secret of any party.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import distributed_round
from .artifacts import get_aggregate, get_model, get_server_state
from .distributed_round import DistributedPlan, is_distributed_plan
from .fedavg import aggregate_violation, next_global_model, payload_weight
from .rounds.errors import StageMessageError
from .ledger.beacon import RANDOMNESS_BEACON, BeaconError, BeaconPolicy, beacon_after, round_seed
from .ledger.blobstore import BlobStore
from .ledger.contracts import LedgerState
from .ledger.entries import ABORT, GENESIS, ROUND_BEACON, ROUND_CLOSE, ROUND_OPEN, SUBMISSION, Entry
from .ledger.errors import MalformedRecord, SemanticCheckError
from .ledger.genesis import GenesisRecord
from .ledger.identity import VerifyingKey
from .ledger.store import Ledger
from .participant_checks import ParticipantView, check_opening
from .privacy.accounting import (
    HistorySummary,
    PrivacyRecord,
    SpendRecord,
    privacy_record_from_json,
    recorded_epsilon,
    verify_summary_claim,
)
from .privacy.errors import PrivacyError
from .protocols.base import Transcript, decoding_tolerance, parse_transcript, recompute_total
from .protocols.errors import ConfigurationError, ProtocolError
from .protocols.masking import MaskingTranscript
from .protocols.masking_graph import MaskingParams
from .protocols.quantize import IntegerRingCodec
from .round_records import RoundClosing, RoundOpening
from .settings import DISTRIBUTED_PROTOCOLS, FederationSettings


def check_aggregate(
    *,
    protocol: str,
    transcript: Mapping[str, Any],
    submissions: Mapping[str, bytes],
    claimed_total: np.ndarray,
    where: str,
) -> None:
    """Recompute the decoded total from the committed submissions; it must equal the claim bit for bit."""
    try:
        total = recompute_total(protocol, transcript, submissions)
    except ProtocolError as exc:
        raise SemanticCheckError(f"{where}: the {protocol} aggregate cannot be recomputed: {exc}") from exc
    total = np.asarray(total, dtype=np.float64)
    if total.shape != claimed_total.shape or not np.array_equal(total, claimed_total):
        if total.shape != claimed_total.shape:
            detail = f"shape {total.shape} recomputed, {claimed_total.shape} claimed"
        else:
            index = int(np.flatnonzero(total != claimed_total)[0])
            detail = f"coordinate {index}: recomputed {total[index]!r}, claimed {claimed_total[index]!r}"
        raise SemanticCheckError(f"{where}: aggregate differs from the recomputed sum ({detail})")


def check_model(
    *, base: np.ndarray, total: np.ndarray, new: np.ndarray, server_learning_rate: float, where: str
) -> None:
    """The new model must be exactly ``base + η · FedAvg(total)``."""
    try:
        expected = next_global_model(base, total, server_learning_rate=server_learning_rate)
    except ValueError as exc:
        raise SemanticCheckError(f"{where}: the model cannot be derived from the aggregate: {exc}") from exc
    if expected.shape != new.shape or not np.array_equal(expected, new):
        raise SemanticCheckError(f"{where}: the new model is not the previous model plus the averaged aggregate")


def check_epsilon_claims(
    histories: Mapping[str, Sequence[PrivacyRecord]], claims: Mapping[str, Any], *, where: str
) -> None:
    """Every claimed cumulative ε must equal the recomputation over the client's whole history."""
    _check_summary_claims({c: HistorySummary.of(histories.get(c, ())) for c in claims}, claims, where=where)


def _check_summary_claims(summaries: Mapping[str, HistorySummary], claims: Mapping[str, Any], *, where: str) -> None:
    """:func:`check_epsilon_claims` over histories folded into summaries (O(1) per claim)."""
    for client, claimed in sorted(claims.items()):
        summary = summaries.get(client)
        if summary is None or summary.last is None:
            if claimed != 0:
                raise SemanticCheckError(f"{where}: client {client!r} claims ε={claimed!r} with no recorded training")
            continue
        try:
            verify_summary_claim(summary, claimed, where=f"{where}, client {client!r}")
        except PrivacyError as exc:
            raise SemanticCheckError(str(exc)) from exc


@dataclass(frozen=True)
class RoundView:
    """A closed round's entries: the opening, the survivors' signed submissions and the close.

    Rejected clients' submissions are in the block too (they sent, so they are charged),
    but only the survivors' enter the aggregate.
    """

    round: int
    opened: Entry
    submissions: Mapping[str, Entry]
    """The survivors' submissions: exactly what the aggregate sums."""
    close: Entry
    opening: RoundOpening
    """``opened``'s payload, typed."""
    closing: RoundClosing
    """``close``'s payload, typed."""

    @classmethod
    def of(cls, entries: Sequence[Entry]) -> RoundView | None:
        """The closed round among ``entries`` (one block's worth), or None if none closes."""
        close = next((e for e in entries if e.type == ROUND_CLOSE), None)
        if close is None:
            return None
        opened = next((e for e in entries if e.type == ROUND_OPEN and e.round == close.round), None)
        if opened is None:
            raise SemanticCheckError(f"round {close.round}: closed in a block that does not open it")
        try:
            opening = RoundOpening.from_json(opened.payload, where=f"round {close.round} opening")
            closing = RoundClosing.from_json(close.payload, where=f"round {close.round} close")
        except MalformedRecord as exc:
            raise SemanticCheckError(str(exc)) from None
        submitted = {e.payload["client"]: e for e in entries if e.type == SUBMISSION and e.round == close.round}
        missing = sorted(set(closing.survivors) - set(submitted))
        if missing:
            raise SemanticCheckError(f"round {close.round}: survivors {missing} have no submission")
        unexplained = sorted(set(submitted) - set(closing.survivors) - set(closing.rejected))
        if unexplained:
            raise SemanticCheckError(f"round {close.round}: {unexplained} submitted but are neither survivors nor rejected")
        return cls(close.round, opened, {c: submitted[c] for c in closing.survivors}, close, opening, closing)


def check_round_randomness(entries: Sequence[Entry], *, genesis: GenesisRecord, blobs: BlobStore, where: str) -> None:
    """Under the ``validator-beacon-v1`` rule, every round opened among ``entries`` (one
    block) is followed by its beacon, the beacon gives the seed (:func:`round_seed`: a quorum
    of valid genesis-validator signatures on exactly this opening), the opening keeps
    genesis' protocol rules (SecAgg+ k and t never below them, the participant's own check
    :func:`check_opening`), and a masking round closed here ran with that seed and the
    opening's participants, k and t. Nothing is checked for a genesis without the rule
    (the audit notes that its seeds could be chosen by the coordinator)."""
    settings = FederationSettings.from_json(genesis.settings)
    if settings.round_randomness != RANDOMNESS_BEACON:
        return
    policy = BeaconPolicy.from_genesis(genesis)
    for index, entry in enumerate(entries):
        at = f"{where}, round {entry.round}"
        if entry.type == ROUND_BEACON and (index == 0 or entries[index - 1].type != ROUND_OPEN):
            raise BeaconError(f"{at}: a round_beacon entry that does not follow its round's opening")
        if entry.type != ROUND_OPEN:
            continue
        seed = round_seed(beacon_after(entries, index, where=at), opening=entry, policy=policy, where=at)
        try:
            check_opening(entry, settings=settings, participant="the round check", view=ParticipantView())
        except StageMessageError as exc:
            raise SemanticCheckError(f"{at}: the opening breaks genesis' rules: {type(exc).__name__}: {exc}") from exc
        close = next((e for e in entries if e.type == ROUND_CLOSE and e.round == entry.round), None)
        if close is not None and entry.payload["protocol"] == "masking":
            cid = close.payload["transcript_cid"]
            if cid is None:
                raise SemanticCheckError(f"{at}: a masking round closed without its transcript")
            _check_masking_transcript(entry, blobs.get_json(cid), seed, where=at)


def _check_masking_transcript(opening: Entry, transcript: Any, seed: bytes, *, where: str) -> None:
    """The masking round ran on the parameters its opening and beacon fix: round, seed,
    participants in order, k and t (a transcript's length is the protocol's own)."""
    try:
        record = MaskingTranscript.from_json(transcript, where=where)
    except ProtocolError as exc:
        raise SemanticCheckError(f"{where}: the masking transcript does not parse: {exc}") from exc
    public = opening.payload["protocol_params"]
    try:
        expected = MaskingParams.create(round_id=opening.round, round_seed=seed,
                                        clients=opening.payload["participants"], length=record.length,
                                        neighbours=public.get("neighbours"), threshold=public.get("threshold"))
    except (ConfigurationError, TypeError) as exc:
        raise SemanticCheckError(f"{where}: the opening's masking parameters: {exc}") from exc
    written = record.to_json()  # compared in the encoding both sides share (neighbours None for SecAgg)
    for name, value in expected.to_json().items():
        if written[name] != value:
            raise SemanticCheckError(f"{where}: the transcript's {name} {written[name]!r:.80} is not "
                                     f"{value!r:.80}, which the opening and its beacon fix")


def planned_record(settings: FederationSettings, *, noise_multiplier: float) -> PrivacyRecord:
    """The one privacy record a participant may write for one round: the plan's σ, and
    everything else as genesis fixes it (q, steps, C, δ, relation, accountant)."""
    privacy = settings.privacy
    return PrivacyRecord(
        noise_multiplier=noise_multiplier, sample_rate=privacy.sample_rate, steps=settings.training.local_steps,
        clipping_norm=privacy.clipping_norm, delta=privacy.delta, accountant=privacy.accountant,
        neighboring_relation=privacy.neighboring_relation,
    )


def privacy_rule_violation(record: SpendRecord, *, planned_sigma: Any, settings: FederationSettings) -> str | None:
    """Why ``record`` is not the record a local-DP round's plan and genesis allow, or None.

    Each field must be what the plan and genesis fix: a larger σ, a smaller q, fewer steps,
    a larger δ... would all lower the ε the ledger composes for the same training.
    """
    if isinstance(planned_sigma, bool) or not isinstance(planned_sigma, (int, float)):
        return f"the round's privacy plan has no noise multiplier for this client (got {planned_sigma!r})"
    return spend_rule_violation(record, planned=planned_record(settings, noise_multiplier=float(planned_sigma)))


def spend_rule_violation(record: SpendRecord, *, planned: SpendRecord) -> str | None:
    """Why ``record`` is not the ``planned`` one (local DP: the plan's σ with genesis' other
    parameters; distributed DP: the round's one Skellam record), field for field, or None."""
    if type(record) is not type(planned):
        return f"a {record.mechanism} record in a round planned for {planned.mechanism}"
    differences = record.differences(planned)  # type: ignore[arg-type]
    if not differences:
        return None
    return "privacy record breaks the round's rules: " + "; ".join(
        f"{name} {got!r} recorded, {want!r} required" for name, got, want in differences)


def check_transcript_identities(
    transcript: Transcript, registered: Mapping[str, bytes] | Callable[[], Mapping[str, bytes]], *,
    where: str,
) -> None:
    """Identity keys a transcript vouches with (masking's signed advertisements and seed
    commitments) must be the clients' keys registered at genesis, or a server could sign
    its own substitutes. ``registered`` may be a function giving them, called only when
    the transcript names keys (parsing every client's key is not free)."""
    if not isinstance(transcript, MaskingTranscript):  # only masking's transcript vouches with identity keys
        return
    if callable(registered):
        registered = registered()
    for client, key in sorted(transcript.identity_keys.items()):
        if client not in registered:
            raise SemanticCheckError(f"{where}: transcript names {client!r}, who is not a registered client")
        if key != registered[client]:
            raise SemanticCheckError(f"{where}: transcript identity key of {client!r} is not its registered key")


def registered_records(state: LedgerState) -> dict[str, int]:
    """Client id -> its record count, public and fixed at genesis (its FedAvg weight)."""
    return {c: int(w) for c, w in state.data_weights().items()}


def aggregate_rule_violation(
    total: np.ndarray, *, protocol: str, transcript: Mapping[str, Any], included: Sequence[str],
    records: Mapping[str, int], bound: float,
) -> str | None:
    """Why a round's decoded ``total`` cannot be the sum of its ``included`` clients' payloads
    (:func:`~bfl_private.fedavg.aggregate_violation`), or None. ``records`` are the registered
    record counts. The engine refuses such a round; validators and the verifier fail a
    close that carries one."""
    unknown = sorted(set(included) - set(records))
    if unknown:
        return f"included clients {unknown} are not registered"
    try:
        tolerance = decoding_tolerance(protocol, transcript)
    except ProtocolError as exc:
        return f"the transcript gives no encoding error bound: {exc}"
    max_records = max(records.values())
    weights = [payload_weight(records[c], max_records=max_records) for c in included]
    return aggregate_violation(total, weights=weights, bound=bound, tolerance=tolerance)


def check_threshold_key(transcript: Mapping[str, Any], protocol_params: Any, validators: Collection[str], *,
                        where: str) -> None:
    """A round decrypted by a quorum must use the threshold key its opening announced to
    the clients, shared among exactly the registered validators, or a coordinator could
    decrypt with a key of its own making."""
    record = transcript.get("threshold_decryption")
    announced = protocol_params.get("threshold_key") if isinstance(protocol_params, Mapping) else None
    if record is None and announced is None:
        return
    if record is None:
        raise SemanticCheckError(f"{where}: the round opening announced a threshold key, but the transcript "
                                 f"holds no threshold decryption")
    if not isinstance(record, Mapping) or announced is None or record.get("public_key") != announced:
        raise SemanticCheckError(f"{where}: the transcript's threshold key is not the one the round opening announced")
    parties = announced.get("parties") if isinstance(announced, Mapping) else None
    if not isinstance(parties, list) or sorted(map(str, parties)) != sorted(validators):
        raise SemanticCheckError(f"{where}: the threshold key is shared among {parties!r}, "
                                 f"not the registered validators {sorted(validators)}")


def check_paillier_key(opened: Entry, settings: FederationSettings, *, pinned: int | None, where: str) -> int | None:
    """A Paillier round announces the federation's one key with the proof that its modulus is
    well formed, at the size genesis fixes; the first such round pins it, every later one must
    announce the same. Returns the round's modulus (None for other protocols)."""
    from .protocols.paillier import PublishedKey  # phe loads only when a Paillier round is checked

    if opened.payload["protocol"] != "paillier":
        return None
    params = opened.payload.get("protocol_params")
    try:
        published = PublishedKey.from_json(params, key_bits=settings.protocol.paillier_key_bits)
    except ProtocolError as exc:
        raise SemanticCheckError(f"{where}: the announced Paillier key is not sound: {exc}") from exc
    n = published.public_key.n
    if pinned is not None and n != pinned:
        raise SemanticCheckError(f"{where}: the Paillier round announces another key than the federation's "
                                 "(pinned by its first Paillier round)")
    threshold = params.get("threshold_key") if isinstance(params, Mapping) else None
    if isinstance(threshold, Mapping) and threshold.get("n") != format(n, "x"):
        raise SemanticCheckError(f"{where}: the threshold key's modulus is not the announced public key's")
    return n


class PaillierKeyPin:
    """The modulus the federation's first Paillier round announced, fed entry by entry."""

    def __init__(self) -> None:
        self.n: int | None = None
        self.size = 0

    def add(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            if self.n is None and entry.type == ROUND_OPEN and entry.payload["protocol"] == "paillier":
                key = entry.payload["protocol_params"].get("public_key", {})
                self.n = int(key["n"], 16) if isinstance(key, Mapping) and isinstance(key.get("n"), str) else None

    def sync(self, ledger: Ledger) -> PaillierKeyPin:
        """Add only the entries the ledger committed since the last sync."""
        if ledger.size > self.size:
            self.add(ledger.entries(self.size))
            self.size = ledger.size
        return self


def check_round_aggregate(view: RoundView, blobs: BlobStore, *, state: LedgerState, genesis: GenesisRecord,
                          paillier_key: int | None) -> np.ndarray:
    """The posted aggregate is the protocol's recomputation from the committed blobs, under
    the registered identities, the federation's Paillier key (``paillier_key``: pinned by
    its first Paillier round) and, for a threshold decryption, the announced key shared among
    the registered validators; and a possible sum of the survivors' payloads. Returns it."""
    total = get_aggregate(blobs, view.closing.aggregate_cid)
    transcript = blobs.get_json(view.closing.transcript_cid)
    protocol = view.opening.protocol
    settings = FederationSettings.from_json(genesis.settings)
    where = f"round {view.round}"
    try:
        record = parse_transcript(protocol, transcript, where=where)
    except ProtocolError as exc:
        raise SemanticCheckError(f"{where}: the {protocol} transcript does not parse: {exc}") from exc
    check_transcript_identities(record, lambda: registered_client_keys(state), where=where)
    check_paillier_key(view.opened, settings, pinned=paillier_key, where=where)
    check_threshold_key(transcript, view.opened.payload.get("protocol_params"), state.validators(), where=where)
    summed = list(record.summed)
    if sorted(summed) != sorted(view.submissions):
        raise SemanticCheckError(f"{where}: the transcript sums {summed!r:.200}, not the close's survivors "
                                 f"{sorted(view.submissions)}")
    check_aggregate(
        protocol=protocol,
        transcript=transcript,
        submissions={c: blobs.get(e.payload["blob_cid"]) for c, e in view.submissions.items()},
        claimed_total=total,
        where=where,
    )
    records = registered_records(state)
    plan = check_distributed_round(view.opened, settings, records)
    if plan is not None:
        # A distributed round is masking or Paillier, whose records carry the codec's JSON.
        if getattr(record, "codec", None) != view.opening.protocol_params["codec"]:
            raise SemanticCheckError(f"{where}: the transcript's codec is not the one the opening announced")
        violation = distributed_round.aggregate_violation(
            total, plan, participants=len(view.opening.participants),
            included_records=distributed_round.records_of(records, list(view.submissions)))
    else:
        violation = aggregate_rule_violation(total, protocol=protocol, transcript=transcript,
                                             included=list(view.submissions), records=records,
                                             bound=settings.training.update_bound)
    if violation is not None:
        raise SemanticCheckError(f"{where}: {violation}")
    return total


def check_round_model(view: RoundView, blobs: BlobStore, *, settings: FederationSettings,
                      records: Mapping[str, int]) -> np.ndarray:
    """The posted model is the base model plus the averaged aggregate (local DP), or the
    server optimiser's step from the base model and its state on the noisy sum (distributed
    DP, state included); returns it. ``records``: the registered record counts."""
    where = f"round {view.round}"
    new_cid, base_cid = view.closing.new_model_cid, view.opening.base_model_cid
    new = get_model(blobs, new_cid)
    total = get_aggregate(blobs, view.closing.aggregate_cid)
    plan = distributed_plan(view.opened)
    if plan is None:
        check_model(base=get_model(blobs, base_cid), total=total, new=new,
                    server_learning_rate=settings.training.server_learning_rate, where=where)
        return new
    try:
        expected, state = distributed_round.model_after(
            get_model(blobs, base_cid), get_server_state(blobs, base_cid), total, plan, settings=settings,
            included_records=distributed_round.records_of(records, list(view.submissions)))
    except (ValueError, KeyError) as exc:
        raise SemanticCheckError(f"{where}: the model cannot be derived from the aggregate: {exc}") from exc
    posted = get_server_state(blobs, new_cid)
    if expected.shape != new.shape or not np.array_equal(expected, new):
        raise SemanticCheckError(f"{where}: the new model is not the server optimiser's step on the noisy sum")
    if posted.steps != state.steps or not (np.array_equal(posted.first_moment, state.first_moment)
                                           and np.array_equal(posted.second_moment, state.second_moment)):
        raise SemanticCheckError(f"{where}: the new model's optimiser state is not the step's state")
    return new


def distributed_plan(opened: Entry) -> DistributedPlan | None:
    """A round opening's distributed-DP plan, or None for a local-DP round."""
    plan = opened.payload["privacy_plan"]
    if not is_distributed_plan(plan):
        return None
    try:
        return DistributedPlan.from_json(plan, where=f"round {opened.round} opening")
    except PrivacyError as exc:
        raise SemanticCheckError(str(exc)) from exc


def check_distributed_round(opened: Entry, settings: FederationSettings, records: Mapping[str, int]) -> DistributedPlan | None:
    """A round opening agrees with the federation's privacy mode; a distributed one states a
    plan genesis allows, over a protocol whose sum is exact in the ring, with the ring codec
    for its N participants. Returns the plan (None in local mode)."""
    where = f"round {opened.round}"
    plan = distributed_plan(opened)
    if (plan is not None) != (settings.privacy.mode == "distributed"):
        raise SemanticCheckError(f"{where}: the opening's privacy plan is not the federation's "
                                 f"{settings.privacy.mode!r} mode")
    if plan is None:
        return None
    participants = list(opened.payload["participants"])
    unknown = sorted(set(participants) - set(records))
    if unknown:
        raise SemanticCheckError(f"{where}: participants {unknown} are not registered")
    violation = distributed_round.plan_violation(plan, settings,
                                                 records=distributed_round.records_of(records, participants))
    if violation is not None:
        raise SemanticCheckError(f"{where}: {violation}")
    protocol = opened.payload["protocol"]
    codec = (opened.payload.get("protocol_params") or {}).get("codec")
    if protocol not in DISTRIBUTED_PROTOCOLS or codec != IntegerRingCodec(max_summands=len(participants)).to_json():
        raise SemanticCheckError(f"{where}: distributed DP runs over {', '.join(DISTRIBUTED_PROTOCOLS)} with the "
                                 f"integer_ring codec for {len(participants)} participants; the opening says "
                                 f"{protocol!r} with codec {codec!r:.120}")
    return plan


def charged_epsilon(histories: Mapping[str, Sequence[SpendRecord]],
                    records: Mapping[str, SpendRecord]) -> dict[str, float]:
    """Each sender's cumulative ε once the round's ``records`` are added to its history:
    the ``cumulative_epsilon`` a close or abort posts (the spending rule)."""
    return {c: recorded_epsilon([*histories.get(c, ()), record]) for c, record in sorted(records.items())}


class PrivacyHistories:
    """Each client's privacy records in log order, fed entry by entry from genesis.

    Every record is checked against the rules as it is added: genesis fixes the settings,
    each ``round_open`` the plan's σ per participant (:func:`privacy_rule_violation`).
    Identical records (every client of a round signs the same planned record) are parsed
    and checked once: both are pure functions of the record's JSON, the plan's σ and the
    genesis settings, and a record that fails is refused each time it appears.
    """

    def __init__(self) -> None:
        self.records: dict[str, list[SpendRecord]] = {}
        self.summaries: dict[str, HistorySummary] = {}
        """The same histories folded for ε (:class:`~bfl_private.privacy.accounting.HistorySummary`)."""
        self.size = 0
        """Log entries consumed by :meth:`sync`."""
        self.settings: FederationSettings | None = None
        self.registered: dict[str, int] = {}
        """Each client's registered record count (genesis)."""
        self.plan: dict[str, Any] = {}
        """The open round's planned σ per participant (local DP)."""
        self.planned: SpendRecord | None = None
        """The open round's one allowed record (distributed DP)."""
        self._parsed: dict[tuple[Any, ...], SpendRecord] = {}
        self._allowed: set[tuple[Any, ...]] = set()

    def add(self, entries: Sequence[Entry], *, first_index: int = 0) -> None:
        for offset, entry in enumerate(entries):
            if entry.type == GENESIS:
                genesis = GenesisRecord.of(entry)
                self.settings = FederationSettings.from_json(genesis.settings)
                self.registered = {c.id: c.data_weight for c in genesis.clients}
                self._allowed = set()
            elif entry.type == ROUND_OPEN:
                self._open(entry)
            elif entry.type == SUBMISSION:
                client = entry.payload["client"]
                where = f"entry {first_index + offset} (round {entry.round}, {client})"
                if self.settings is None:
                    raise SemanticCheckError(f"{where}: a submission before genesis")
                record = self._record(entry.payload["privacy"], where=where)
                self._check_rules(record, self.plan.get(client), where=where)
                self.records.setdefault(client, []).append(record)
                summary = self.summaries.get(client)
                if summary is None:
                    summary = self.summaries[client] = HistorySummary()
                summary.add(record)

    def _record(self, data: Any, *, where: str) -> SpendRecord:
        """``privacy_record_from_json(data)``, memoised on the exact JSON value (types included)."""
        key = _json_key(data)
        record = self._parsed.get(key) if key is not None else None
        if record is None:
            try:
                record = privacy_record_from_json(data, where=where)
            except PrivacyError as exc:
                raise SemanticCheckError(str(exc)) from exc
            if key is not None:
                self._parsed[key] = record
        return record

    def _check_rules(self, record: SpendRecord, planned_sigma: Any, *, where: str) -> None:
        """The open round's spend rule under the genesis settings (distributed DP: the plan's one
        record, :func:`spend_rule_violation`; local DP: the plan's σ for this client,
        :func:`privacy_rule_violation`), remembering what passed."""
        key = (record, self.planned if self.planned is not None else _json_key(planned_sigma))
        if key[1] is not None and key in self._allowed:
            return
        assert self.settings is not None
        violation = (spend_rule_violation(record, planned=self.planned) if self.planned is not None else
                     privacy_rule_violation(record, planned_sigma=planned_sigma, settings=self.settings))
        if violation is not None:
            raise SemanticCheckError(f"{where}: {violation}")
        if key[1] is not None:
            self._allowed.add(key)

    def _open(self, entry: Entry) -> None:
        if self.settings is None:
            raise SemanticCheckError(f"round {entry.round}: opened before genesis")
        plan = check_distributed_round(entry, self.settings, self.registered)
        if plan is not None:
            self.plan = {}
            self.planned = distributed_round.planned_record(self.settings, plan,
                                                            participants=len(entry.payload["participants"]))
            return
        sigmas = entry.payload["privacy_plan"].get("noise_multipliers")
        self.plan = dict(sigmas) if isinstance(sigmas, Mapping) else {}
        self.planned = None

    def sync(self, ledger: Ledger) -> PrivacyHistories:
        """Add only the entries the ledger committed since the last sync (no re-reading)."""
        if ledger.size > self.size:
            self.add(ledger.entries(self.size), first_index=self.size)
            self.size = ledger.size
        return self

    def extended(self, entries: Sequence[Entry]) -> PrivacyHistories:
        """A copy with ``entries`` (a proposed, uncommitted block) added."""
        copy = PrivacyHistories()
        copy.records = {c: list(r) for c, r in self.records.items()}
        copy.summaries = {c: s.copy() for c, s in self.summaries.items()}
        copy.size = self.size
        copy.settings = self.settings
        copy.registered = self.registered
        copy.plan = dict(self.plan)
        copy.planned = self.planned
        copy._parsed, copy._allowed = self._parsed, set(self._allowed)
        copy.add(entries, first_index=self.size)
        return copy

    def check_claims(self, entries: Sequence[Entry]) -> None:
        """Every ε claim of a close or abort among ``entries`` (already added) must recompute."""
        for entry in entries:
            if entry.type in (ROUND_CLOSE, ABORT):
                _check_summary_claims(self.summaries, entry.payload["cumulative_epsilon"], where=f"round {entry.round}")

    def claim_keys(self, entries: Sequence[Entry]) -> list[Any]:
        """The accountant calls :meth:`check_claims` would make for ``entries`` (already
        added), without checking anything: for computing them ahead of time."""
        keys = []
        for entry in entries:
            if entry.type in (ROUND_CLOSE, ABORT):
                for client in entry.payload["cumulative_epsilon"]:
                    summary = self.summaries.get(client)
                    if summary is not None and summary.last is not None:
                        keys.append(summary.epsilon_key())
        return keys


def _json_key(value: Any) -> tuple[Any, ...] | None:
    """A hashable key equal only for equal JSON values of equal types (``1`` is not ``1.0``
    nor ``True``; floats by their exact bits); None for anything but a flat object or a
    scalar."""
    if isinstance(value, Mapping):
        items = []
        for name, item in value.items():
            key = _json_key(item)
            if key is None or isinstance(item, Mapping):
                return None
            items.append((name, key))
        return ("object", tuple(items))
    kind = type(value)
    if kind is float:
        return (kind, value.hex())
    if kind in (int, bool, str) or value is None:
        return (kind, value)
    return None


def registered_client_keys(state: LedgerState) -> dict[str, bytes]:
    """Client id -> raw Ed25519 public key, as registered at genesis."""
    return {c: VerifyingKey.from_vkey(v["vkey"]).public_bytes() for c, v in state.clients().items()}
