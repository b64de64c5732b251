"""What a participant checks in a round opening before it answers or trains.

A hospital takes nothing that weakens its protection from the coordinator's say: the
signed ``round_open`` is only a proposal, judged against what genesis fixed and what the
hospital knows of the ledger and of its own past rounds. Each refusal is a named error
(a :class:`ParticipantRefusal` subclass) raised before anything is trained, so a refused
opening costs no privacy budget. It runs in the hospital
(:meth:`bfl_private.rounds.hospital.Hospital.handle`, over Flower and in the demo alike)
and in each validator before it signs a beacon.

The rules, all against genesis (``settings``), never against the round's own claims:

* protocol: one genesis allows (:func:`allowed_protocols`): in distributed DP only those
  whose sum is exact in the ring; in local DP any protected protocol, and ``plain`` (the
  server sees each update) only when genesis itself chose it (:class:`UnknownProtocol`).
* masking: the neighbour degree k at least genesis' (``neighbours``; None is the complete
  graph, k = N - 1), and a threshold t, when the opening names one, at least
  :func:`~bfl_private.protocols.masking_graph.default_threshold` of k (:class:`WeakParameters`).
* cohort: at least :func:`minimum_cohort` participants (:class:`TooSmallCohort`).
* Paillier: a key of exactly genesis' ``paillier_key_bits`` with its proof that the
  modulus is well formed (:class:`WeakParameters`).
* distributed DP: the plan's collusion threshold t at least genesis' (:class:`WeakParameters`).
* base model: the opening's ``base_model_cid`` is the ledger's current model, as far as the
  participant knows it (:class:`WrongBaseModel`).
* round: the next round of the ledger it knows, later than any round it already opened,
  and never one it submitted in (:class:`StaleRound`, :class:`AlreadySubmitted`): a
  closed round is not trained for again, and one round id never spends ε twice.
* beacon (hospitals): the validators' beacon must be for this very opening and give the
  seed under genesis' validator keys and quorum (:class:`BadBeacon`,
  :func:`bfl_private.ledger.beacon.round_seed`), in one-shot rounds too.

The hospital adds what needs its own state (:mod:`bfl_private.rounds.hospital`): the
distributed-DP plan as the verifier checks it, and the plan's dimension against the model
(:class:`WeakParameters`); its lifetime budget (:class:`OverBudget`); and in distributed
DP a survivor set of at least N - t before it helps unmask (:class:`TooFewSurvivors`).

Numpy-free, torch-free: the auditor and the hospital import it cheaply.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .rounds.errors import StageMessageError
from .ledger.entries import ROUND_OPEN, Entry
from .protocols.masking_graph import default_threshold
from .settings import DISTRIBUTED_PROTOCOLS, PROTOCOLS, FederationSettings

PROTECTED_PROTOCOLS = ("masking", "paillier", "ckks")
"""Protocols under which the aggregator sees only the sum."""

MIN_HE_COHORT = 2
MIN_MASKING_COHORT = 3


class ParticipantRefusal(StageMessageError):
    """A round opening a participant refuses before it answers or trains.

    The message always starts ``<participant> refuses round <r>: `` so a server that gets
    only the error's text (Flower's error reply) can name who refused what."""

    def __init__(self, participant: str, round_id: int, detail: str) -> None:
        super().__init__(f"{participant} refuses round {round_id}: {detail}")
        self.participant = participant
        self.round = round_id
        self.detail = detail


class UnknownProtocol(ParticipantRefusal):
    """A protocol genesis does not allow for this federation."""


class WeakParameters(ParticipantRefusal):
    """A neighbour degree, threshold, key size or collusion threshold below genesis'."""


class TooSmallCohort(ParticipantRefusal):
    """Fewer participants than the protocol's minimum cohort."""


class WrongBaseModel(ParticipantRefusal):
    """A base model that is not the ledger's current model."""


class StaleRound(ParticipantRefusal):
    """A round that is not the next one: closed, earlier, already opened here, or skipped."""


class AlreadySubmitted(StaleRound):
    """A round this participant already submitted in: no retraining, no second spend."""


class BadBeacon(ParticipantRefusal):
    """A round beacon that does not give the seed: not for this opening or round, a bad or
    unregistered validator signature, fewer than the quorum (:mod:`bfl_private.ledger.beacon`)."""


class OverBudget(ParticipantRefusal):
    """The round's planned privacy record would take the participant past its lifetime budget."""


class TooFewSurvivors(ParticipantRefusal):
    """A distributed-DP survivor set smaller than N - t: its sum would carry less noise than
    every participant's record claims, so the participant helps no one unmask it."""


REFUSALS: tuple[type[ParticipantRefusal], ...] = (
    UnknownProtocol, WeakParameters, TooSmallCohort, WrongBaseModel, StaleRound, AlreadySubmitted, BadBeacon,
    OverBudget, TooFewSurvivors)
_REFUSAL = re.compile(r"^(?P<error>" + "|".join(c.__name__ for c in REFUSALS) +
                      r"): (?P<client>\S+) refuses round (?P<round>\d+): ")


def refusal_reason(exc: ParticipantRefusal) -> str:
    """The text a round record names a refusal by (error class and message)."""
    return f"refused the round opening: {type(exc).__name__}: {exc}"


def parse_refusal(reason: str) -> tuple[str, str] | None:
    """(error name, participant) of an error reply's ``Name: message`` text, if it is a refusal."""
    match = _REFUSAL.match(reason)
    return None if match is None else (match["error"], match["client"])


@dataclass(frozen=True)
class ParticipantView:
    """What the participant knows beyond genesis: the ledger it syncs (None where it has
    none) and its own persistent record of rounds."""

    model_cid: str | None = None
    """The ledger's current model CID (state.model_cid), as the participant verified it."""
    last_round: int | None = None
    """The last round the ledger has opened and ended (closed or aborted)."""
    opened: frozenset[int] = field(default_factory=frozenset)
    """Rounds this participant accepted an opening of."""
    submitted: frozenset[int] = field(default_factory=frozenset)
    """Rounds this participant sent a protected update in."""


def allowed_protocols(settings: FederationSettings) -> tuple[str, ...]:
    """The protocols genesis allows a round to use (each command may choose one of them)."""
    if settings.privacy.mode == "distributed":
        return DISTRIBUTED_PROTOCOLS
    if settings.protocol.name == "plain":
        return PROTOCOLS
    return PROTECTED_PROTOCOLS


def effective_neighbours(neighbours: int | None, participants: int) -> int:
    """k as the masking graph uses it: None, or k >= N - 1, is the complete graph."""
    return participants - 1 if neighbours is None or neighbours >= participants - 1 else int(neighbours)


def minimum_cohort(settings: FederationSettings, protocol: str) -> int:
    """The fewest participants a round of ``protocol`` may have under this genesis.

    Masking: max(3, t + 1) with t the threshold of genesis' k (3 for the complete graph):
    a neighbourhood must survive t. HE: 2. Distributed DP: also N - t >= 2 (t the genesis
    collusion threshold), else the honest shares' noise is below what the records claim."""
    if protocol == "masking":
        k = settings.protocol.neighbours
        smallest = MIN_MASKING_COHORT if k is None else max(MIN_MASKING_COHORT, default_threshold(k) + 1)
    else:
        smallest = MIN_HE_COHORT
    if settings.privacy.mode == "distributed":
        smallest = max(smallest, settings.privacy.collusion_threshold + 2)
    return smallest


def check_opening(opening: Entry, *, settings: FederationSettings, participant: str,
                  view: ParticipantView) -> None:
    """Refuse, by a named :class:`ParticipantRefusal`, an opening this participant must not
    answer. ``opening`` is a ``round_open`` whose signature the caller already verified."""
    r = opening.round
    if opening.type != ROUND_OPEN:
        raise StageMessageError(f"{participant}: a {opening.type} entry, not a round opening")
    p = opening.payload
    protocol = p.get("protocol")
    check_protocol(participant, r, protocol, settings)
    check_round(participant, r, view)
    participants = p.get("participants")
    if not isinstance(participants, list):
        raise StageMessageError(f"round {r} opening sent to {participant}: participants is not a list")
    n = len(participants)
    smallest = minimum_cohort(settings, protocol)
    if n < smallest:
        raise TooSmallCohort(participant, r, f"{n} participants; a {protocol} round of this federation "
                                             f"needs at least {smallest}")
    params = p.get("protocol_params")
    if not isinstance(params, Mapping):
        raise StageMessageError(f"round {r} opening sent to {participant}: protocol_params is not an object")
    if protocol == "masking":
        _check_masking(participant, r, params, settings, n)
    elif protocol == "paillier":
        _check_paillier(participant, r, params, settings)
    if settings.privacy.mode == "distributed":
        t = (p.get("privacy_plan") or {}).get("collusion_threshold")
        genesis_t = settings.privacy.collusion_threshold
        if isinstance(t, bool) or not isinstance(t, int) or t < genesis_t:
            raise WeakParameters(participant, r, f"collusion threshold t = {t!r} in the privacy plan; genesis "
                                                 f"fixes t = {genesis_t} (never less)")
    if view.model_cid is not None and p.get("base_model_cid") != view.model_cid:
        raise WrongBaseModel(participant, r, f"base model {p.get('base_model_cid')} is not the ledger's "
                                             f"current model {view.model_cid}")


def check_protocol(participant: str, round_id: int, protocol: Any, settings: FederationSettings) -> None:
    allowed = allowed_protocols(settings)
    if protocol not in allowed:
        raise UnknownProtocol(participant, round_id, f"protocol {protocol!r} is not one genesis allows "
                                                     f"({', '.join(allowed)}; privacy mode {settings.privacy.mode})")


def check_round(participant: str, round_id: int, view: ParticipantView) -> None:
    """The round must be the next one: not one already submitted in, opened, or ended."""
    if round_id in view.submitted:
        raise AlreadySubmitted(participant, round_id, f"{participant} already submitted in round {round_id}: "
                                                      f"no retraining and no second spend for one round id")
    seen = max(view.opened, default=0)
    if round_id <= seen:
        raise StaleRound(participant, round_id, f"{participant} already took part in round {seen}")
    if view.last_round is not None and round_id != view.last_round + 1:
        what = "is closed" if round_id <= view.last_round else "is not the next round"
        raise StaleRound(participant, round_id, f"round {round_id} {what}: the ledger's last round is "
                                                f"{view.last_round}, the next is {view.last_round + 1}")


def _check_masking(participant: str, r: int, params: Mapping[str, Any], settings: FederationSettings,
                   n: int) -> None:
    k = params.get("neighbours")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise StageMessageError(f"round {r} opening sent to {participant}: neighbours {k!r} is not an integer")
    floor = effective_neighbours(settings.protocol.neighbours, n)
    offered = effective_neighbours(k, n)
    if offered < floor:
        said = "the complete graph" if settings.protocol.neighbours is None else f"k = {settings.protocol.neighbours}"
        raise WeakParameters(participant, r, f"SecAgg+ neighbour degree k = {k} among {n} participants; genesis "
                                             f"fixes {said}, so k >= {floor}")
    t = params.get("threshold")
    if t is not None:
        least = default_threshold(offered)
        if isinstance(t, bool) or not isinstance(t, int) or t < least:
            raise WeakParameters(participant, r, f"threshold t = {t!r} for k = {offered}; the masking graph's "
                                                 f"rule gives t >= {least}")


def _check_paillier(participant: str, r: int, params: Mapping[str, Any], settings: FederationSettings) -> None:
    from .protocols.errors import ProtocolError
    from .protocols.paillier import PublishedKey, public_key_from_json

    bits = settings.protocol.paillier_key_bits
    try:
        n = public_key_from_json(params.get("public_key")).n
    except (ProtocolError, TypeError, ValueError, AttributeError) as exc:
        raise StageMessageError(f"round {r} opening sent to {participant}: Paillier key: {exc}") from exc
    if n.bit_length() != bits:
        raise WeakParameters(participant, r, f"a {n.bit_length()}-bit Paillier key; genesis fixes {bits} bits")
    try:  # a modulus without its proof of being well formed could hide a factor the dealer kept
        PublishedKey.from_json(params, key_bits=bits)
    except ProtocolError as exc:
        raise WeakParameters(participant, r, f"the announced Paillier key is not sound: {exc}") from None

