"""The round engine: the server side of one private round, whatever carries its messages.

One engine, two transports. ``bfl-private round`` drives it over the in-process
:class:`~.loopback.LoopbackTransport` to the demo's hospitals
(:mod:`bfl_private.simulated_hospitals`); the Flower ServerApp drives it over Flower's grid
to SuperNodes. On the other side of either transport is the same participant code,
:class:`~.hospital.Hospital`. The round writes ``round_open`` and its beacon, each
survivor's ``submission`` (signed by the hospital itself), ``round_close`` with the
protocol's transcript, the validators' attestations and a block with their quorum
certificate — or an ``abort`` when too few hospitals remain — and ``bfl-private verify``
checks it.

Protocols: ``masking`` (five stages, :data:`~.stages.STAGES`; four, starting with
``join``, when every participant advertised its keys ahead in the previous round's
``unmask`` reply: pass :attr:`RoundEngine.advertised_ahead` to the next engine), and the one-shot
``paillier``, ``ckks`` and ``plain`` (one ``encrypt`` stage; an HE key holder stays on
this side, built by :func:`~bfl_private.protocol_setup.build_protocol`, and decrypts only
the sum, see :mod:`.one_shot`). Local DP (hospitals run DP-SGD) or distributed DP
(hospitals send Skellam shares; the server's optimiser steps on the noisy sum).

A hospital that does not answer a stage within the transport's timeout, answers with an
error, or answers with anything that fails a check (a named error is logged) is a dropout
from that stage on. One whose refusal names a participant check is named in the close.
One whose signed submission checks out but whose protected update does not (a masked
input that does not parse or fit, a ciphertext that does not decode, a plain payload out
of range) is *rejected*, recorded with the reason.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Protocol

import numpy as np

from ..coordinator import CommandPlan, Coordinator, RoundSummary, RunRefused
from ..fedavg import next_global_model
from ..ledger.beacon import RANDOMNESS_BEACON
from ..ledger.cid import cid_for
from ..ledger.entries import ROUND_OPEN, SUBMISSION, Entry
from ..ledger.errors import VerificationError
from ..ledger.identity import VerifyingKey
from ..primitives.errors import BflError
from ..privacy.accounting import SpendRecord, privacy_record_from_json
from ..participant_checks import parse_refusal
from ..privacy.errors import PrivacyError
from ..artifacts import get_server_state
from ..distributed_round import ServerState, model_after, records_of
from ..distributed_round import aggregate_violation as distributed_violation
from ..protocol_setup import ProtocolSetup, build_protocol, masking_parameters
from ..protocols.base import AggregationResult, decode_or_refuse
from ..protocols.errors import InvalidAggregate, ProtocolError, ReplayedMessage, RoundAbort
from ..protocols.masking import MaskingServer, encode_submission, transcript_with_codec
from ..protocols.masking_graph import MaskingParams
from ..protocols.masking_messages import KeyAdvertisement, MaskedInput
from ..protocols.quantize import Codec
from ..settings import DISTRIBUTED_PROTOCOLS
from . import one_shot
from ..round_records import RoundOpening
from ..round_checks import aggregate_rule_violation, charged_epsilon, registered_records, spend_rule_violation
from .errors import RefusedPrivacyRecord, StageMessageError
from .stages import JOIN, PROTOCOL_STAGES, check_reply, request


@dataclass(frozen=True)
class Failure:
    """A node's error reply: why it could not answer (Flower's error reason)."""

    reason: str


class Transport(Protocol):
    """Delivers one stage's requests to nodes and collects their replies."""

    def nodes(self) -> list[int]:
        """The nodes currently connected."""
        ...

    def exchange(self, stage: str, requests: Mapping[int, Mapping[str, Any]], *,
                 round_id: int) -> Mapping[int, Mapping[str, Any] | Failure]:
        """Send each node its request; return the replies that came back in time
        (a node absent from the result did not answer)."""
        ...


def _entry_failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


class _RoundAborted(BflError):
    """Too few hospitals remain, a share holder cheated, or the decoded sum is not one of
    valid inputs: the round records an abort."""

    def __init__(self, cause: RoundAbort, survivors: list[str]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.survivors = survivors


class RoundEngine:
    """One round over a transport; :meth:`run` returns the same summary as the coordinator."""

    def __init__(self, federation: Coordinator, plan: CommandPlan, transport: Transport, *,
                 protocol: str = "masking", log: Callable[[str], None] = lambda line: None,
                 ahead: Mapping[str, tuple[int, bytes]] | None = None) -> None:
        """``ahead``: the previous round's :attr:`advertised_ahead` (over the same transport);
        when it covers every participant with a valid advertisement for this round, the
        masking round starts with ``join`` instead of ``advertise`` (four exchanges)."""
        if protocol not in PROTOCOL_STAGES:
            raise RunRefused(f"unknown protocol {protocol!r}; rounds run {', '.join(PROTOCOL_STAGES)}")
        if protocol == "masking" and federation.settings.round_randomness != RANDOMNESS_BEACON:
            raise RunRefused(f"this federation's genesis predates the validator beacon (round_randomness "
                             f"{federation.settings.round_randomness!r}): hospitals take no round seed from the "
                             f"server, so it runs no more masking rounds (paillier and ckks rounds need no seed)")
        if plan.distributed is not None and protocol not in DISTRIBUTED_PROTOCOLS:
            raise RunRefused(f"distributed DP needs a secure sum exact in the integer ring "
                             f"({', '.join(DISTRIBUTED_PROTOCOLS)}), not --protocol {protocol}")
        self.federation = federation
        self.plan = plan
        self.transport = transport
        self.protocol = protocol
        self.log = log
        federation.settle_interrupted_round()
        self.round_id = federation.ledger.state.last_round + 1
        self.participants = sorted(plan.clients)
        self.planned = federation.planned_records(plan, self.participants)
        """The one privacy record each participant may sign (:func:`~bfl_private.round_checks.spend_rule_violation`)."""
        self.node_of: dict[str, int] = {}
        self.failures: dict[str, str] = {}
        """Why each hospital (or unnamed node) stopped counting: its error or our refusal."""
        self.submissions: dict[str, Entry] = {}
        """Each hospital's signed submission entry, once it passed the checks: its update has
        left it, so it is posted and charged whatever follows (the spending rule)."""
        self.records: dict[str, SpendRecord] = {}
        self.blobs: dict[str, bytes] = {}
        """What each of them sent (masked input or ciphertexts), as the ledger commits it."""
        self.refused: dict[str, str] = {}
        """Hospitals whose submission was refused on receipt, with the reason (rejected)."""
        self.opened: list[Entry] = []
        """The round's opening and, under the beacon rule, its beacon entry (:meth:`Coordinator.open_round`)."""
        self.ahead = dict(ahead or {})
        self.advertised_ahead: dict[str, tuple[int, bytes]] = {}
        """Each hospital's node and its signed advertisement of keys for the next round, from
        its ``unmask`` reply: hand it to the next round's engine (checked there)."""
        self.declined: dict[str, str] = {}
        """Hospitals that refused the round (a named :mod:`~bfl_private.participant_checks`
        error in their error reply), with it: named in the close's ``rejected`` or the abort."""

    # --- exchanges --------------------------------------------------------------------

    def _send(self, stage: str, requests: Mapping[int, Mapping[str, Any]],
              label: Mapping[int, str]) -> dict[int, dict[str, Any]]:
        """One exchange with the nodes in ``requests``; the well-formed replies by node."""
        sent = time.perf_counter()
        replies = self.transport.exchange(stage, requests, round_id=self.round_id)
        waited = time.perf_counter() - sent
        good: dict[int, dict[str, Any]] = {}
        for node, reply in replies.items():
            if node not in requests:
                continue
            who = label[node]
            if isinstance(reply, Failure):
                self.failures[who] = f"{stage}: {reply.reason}"
                self.log(f"round {self.round_id}: {who} failed at stage {stage}: {reply.reason}")
                self._note_refusal(stage, who, reply.reason)
                continue
            try:
                good[node] = check_reply(stage, reply, where=f"{stage} reply of {who}")
            except StageMessageError as exc:
                self.failures[who] = f"{stage}: {exc}"
                self.log(f"round {self.round_id}: refused the {stage} reply of {who}: {exc}")
        self.log(f"round {self.round_id}: stage {stage} answered by {len(good)} of {len(requests)} in {waited:.2f} s")
        return good

    def _note_refusal(self, stage: str, who: str, reason: str) -> None:
        """Keep a participant's named refusal of the round. At the first stage the node has
        not claimed a seat yet, so the name is the one its (unsigned) error text gives."""
        refusal = parse_refusal(reason)
        if refusal is None or refusal[1] not in self.participants:
            return
        client = refusal[1]
        if who == client:
            self.declined[client] = f"refused the round at stage {stage}: {reason}"
        elif who.startswith("node ") and client not in self.node_of and client not in self.declined:
            self.declined[client] = f"refused the round at stage {stage} ({who}'s unsigned error reply): {reason}"

    def _declined(self, excluded: set[str]) -> dict[str, str]:
        """The refusals of participants that are not otherwise accounted for."""
        return {c: r for c, r in sorted(self.declined.items()) if c not in excluded}

    def _exchange(self, stage: str, requests: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Send each client (by name) its request; return the well-formed replies by name."""
        client_of = {n: c for c, n in self.node_of.items()}
        replies = self._send(stage, {self.node_of[c]: r for c, r in requests.items()}, client_of)
        return {client_of[node]: reply for node, reply in replies.items()}

    def _receive(self, stage: str, client: str, receive: Callable[[], None]) -> None:
        try:
            receive()
        except (ProtocolError, VerificationError, PrivacyError) as exc:
            self.failures[client] = f"{stage}: {_entry_failure(exc)}"
            self.log(f"round {self.round_id}: refused the {stage} message of {client}: {_entry_failure(exc)}")

    # --- the round --------------------------------------------------------------------

    def run(self) -> RoundSummary:
        started = time.perf_counter()
        fed = self.federation
        settings = fed.settings
        state = fed.ledger.state
        base_cid = state.model_cid
        base = fed.current_model()
        # Local DP: the update and its weight (see fedavg.weighted_payload); distributed DP:
        # an integer share of the model's dimension.
        length = base.shape[0] + (1 if self.plan.distributed is None else 0)
        setup: ProtocolSetup | None = None
        if self.protocol == "masking":  # the hospitals hold their own keys: only the public parameters here
            codec, neighbours = masking_parameters(settings, participants=len(self.participants))
            public: dict[str, Any] = {"codec": codec.to_json(), "neighbours": neighbours}
        else:  # the federation's key holder, exactly as in-process; hospitals get its public key only
            setup = build_protocol(self.protocol, settings, fed.round_parties, participants=self.participants)
            public = setup.public_parameters()
        coordinator = fed.coordinator.identity
        opened = Entry.create(coordinator, ROUND_OPEN, self.round_id, RoundOpening(
            participants=tuple(self.participants), protocol=self.protocol, protocol_params=public,
            base_model_cid=base_cid, privacy_plan=self.plan.privacy_plan()).to_json())
        # The validators' beacon on the opening gives the seed; the hospitals check and derive it themselves.
        self.opened, seed = fed.open_round(opened)
        try:
            if setup is None:
                result = self._masking(opened, seed, codec, neighbours, length)
            else:
                result = self._one_shot(opened, setup, length)
            self._check_aggregate(result)
        except _RoundAborted as aborted:
            exc = aborted.cause
            stage = exc.stage
            entries, claims = self._charged(opened)
            declined = self._declined(set())  # every named refusal, a survivor's (TooFewSurvivors) too
            fed.record_abort(entries, round_id=self.round_id, stage=stage, reason=str(exc), declined=declined,
                             survivors=aborted.survivors, claims=claims)
            self.log(f"round {self.round_id}: aborted at stage {stage}: {exc}")
            gone = tuple(sorted(set(self.participants) - set(aborted.survivors)))
            return RoundSummary(self.round_id, "aborted", fed.test_accuracy(base), (), gone, declined,
                                time.perf_counter() - started)
        return self._close(opened, base, result, started)

    def _close(self, opened: Entry, base: np.ndarray, result: AggregationResult, started: float) -> RoundSummary:
        """Commit the included hospitals' own signed submissions, the new model and the close."""
        fed = self.federation
        dp_plan = self.plan.distributed
        server_state: ServerState | None = None
        if dp_plan is None:
            new_params = next_global_model(base, result.total,
                                           server_learning_rate=fed.settings.training.server_learning_rate)
        else:  # the server optimiser steps on the noisy sum of the included shares
            new_params, server_state = model_after(
                base, get_server_state(fed.ledger.blobs, opened.payload["base_model_cid"]), result.total, dp_plan,
                settings=fed.settings, included_records=records_of(self._registered, result.included))
        entries, claims = self._charged(opened)
        rejected = {**result.rejected, **self.refused}
        rejected.update(self._declined(set(result.included) | set(rejected)))
        accepted, dropouts = fed.record_close(entries, round_id=self.round_id, result=result, new_params=new_params,
                                              server_state=server_state, rejected=rejected, participants=self.participants,
                                              claims=claims)
        named = f", rejected {sorted(rejected)}" if rejected else ""
        self.log(f"round {self.round_id}: closed with {len(result.included)} survivors, dropouts {dropouts}{named}")
        return RoundSummary(self.round_id, "accepted" if accepted else "rejected",
                            fed.test_accuracy(new_params if accepted else base), tuple(result.included),
                            tuple(dropouts), rejected, time.perf_counter() - started)

    @cached_property
    def _registered(self) -> dict[str, int]:
        """Every hospital's registered record count (genesis, public)."""
        return registered_records(self.federation.ledger.state)

    def _check_aggregate(self, result: AggregationResult) -> None:
        """The aggregate rule the validators and the verifier apply too: a decoded sum that
        cannot be the included hospitals' payloads (local DP) or the plan's noisy sum
        (distributed DP) is refused."""
        fed = self.federation
        if self.plan.distributed is None:
            violation = aggregate_rule_violation(
                result.total, protocol=result.protocol, transcript=result.transcript, included=result.included,
                records=self._registered, bound=fed.settings.training.update_bound)
        else:
            violation = distributed_violation(result.total, self.plan.distributed, participants=len(self.participants),
                                              included_records=records_of(self._registered, result.included))
        if violation is not None:
            refused = InvalidAggregate(f"round {self.round_id}: {violation}", stage="decode")
            raise _RoundAborted(refused, list(result.included)) from refused

    def _charged(self, opened: Entry) -> tuple[list[Entry], dict[str, float]]:
        """The opening, every checked submission and each submitter's cumulative ε: whoever
        sent an update is charged, whatever the round's outcome."""
        claims = charged_epsilon(self.federation.histories(), self.records)
        return self._received(), claims

    def _received(self) -> list[Entry]:
        """The round's opening (and beacon) and every checked submission, in client order."""
        return [*self.opened, *(self.submissions[c] for c in sorted(self.submissions))]

    def _keep_received(self) -> None:
        """After a stage that brought submissions: kept, so that a stop from here on ends the
        round charging their senders (:meth:`Coordinator.settle_interrupted_round`)."""
        if self.submissions:
            self.federation.keep_running_round(self._received())

    def _masking(self, opened: Entry, seed: bytes, codec: Codec, neighbours: int | None,
                 length: int) -> AggregationResult:
        """The masking stages (five, or four when every participant advertised ahead: ``join``
        stands for ``advertise`` and ``share``); the unmasked total of the survivors."""
        fed = self.federation
        params = MaskingParams.create(round_id=self.round_id, round_seed=seed, clients=self.participants,
                                      length=length, neighbours=neighbours)
        registry = fed.ledger.state.clients()
        keys = {c: VerifyingKey.from_vkey(registry[c]["vkey"]) for c in self.participants}
        identity_keys = [keys[c].public_bytes() for c in self.participants]
        joined = self._advertised_ahead(params, identity_keys)
        server = joined if joined is not None else MaskingServer(params, identity_keys=identity_keys)
        # The beacon the ledger records after the opening (none: each hospital refuses, BadBeacon).
        beacon = self.opened[1].to_bytes() if len(self.opened) > 1 else b""
        opening = {"round_open": opened.to_bytes(), "round_beacon": beacon, "length": params.length,
                   "model": fed.ledger.blobs.get(opened.payload["base_model_cid"])}
        names = params.clients
        try:
            if joined is None:
                # A claim takes a seat once the server has verified and received its advertisement.
                self._claim("advertise", self._request("advertise", **opening),
                            lambda client, reply: self._check_advertisement(server, reply))
                adverts = server.close_advertise()
                self.log(f"round {self.round_id}: stage advertise closed")
                first = "share"
                requests = {names[i]: self._request("share", advertisements=a) for i, a in adverts.items()}
            else:  # every participant advertised ahead: one exchange opens the round and shares
                adverts = server.close_advertise()
                first = JOIN
                requests = {names[i]: self._request(JOIN, **opening, advertisements=a) for i, a in adverts.items()}
            for client, reply in self._exchange(first, requests).items():
                self._receive(first, client, partial(server.receive_shares, reply["shares"]))
            deliveries = server.close_share()
            self.log(f"round {self.round_id}: stage share closed")
            replies = self._exchange("mask", {names[i]: self._request("mask", delivery=d)
                                              for i, d in deliveries.items()})
            for client, reply in replies.items():
                def receive(client: str = client, reply: dict[str, Any] = reply) -> None:
                    try:
                        blob = encode_submission(MaskedInput.from_bytes(reply["masked-input"]).vector)
                    except ProtocolError as exc:  # no masked input to sum or commit: named, not charged
                        self.refused[client] = f"masked input refused: {_entry_failure(exc)}"
                        raise
                    self._accept_submission(client, reply, blob, keys[client], registry[client])
                    try:
                        server.receive_masked_input(reply["masked-input"], sender=self.participants.index(client))
                    except ProtocolError as exc:  # signed and sent, so charged, but not summed
                        self.refused[client] = f"masked input refused: {_entry_failure(exc)}"
                        raise
                self._receive("mask", client, receive)
            self._keep_received()
            announcement = server.close_mask()
            self.log(f"round {self.round_id}: stage mask closed")
            replies = self._exchange("acknowledge", {names[i]: self._request("acknowledge", survivors=announcement)
                                                     for i in sorted(server.survivors)})
            for client, reply in replies.items():
                self._receive("acknowledge", client, partial(server.receive_acknowledgement, reply["acknowledgement"]))
            signatures = server.close_acknowledge()
            self.log(f"round {self.round_id}: stage acknowledge closed")
            replies = self._exchange("unmask", {names[i]: self._request("unmask", signatures=signatures)
                                                for i in sorted(server.acknowledged)})
            for client, reply in replies.items():
                self._receive("unmask", client, partial(server.receive_unmask, reply["unmask"]))
                self.advertised_ahead[client] = (self.node_of[client], reply["advertisement-ahead"])
            outcome = server.finish()
            included = tuple(params.clients[i] for i in outcome.included)
            total = decode_or_refuse(lambda: codec.decode_sum(outcome.total, len(included)),
                                     round_id=self.round_id, received=self.blobs)
        except RoundAbort as exc:
            dropped = server.dropped()
            raise _RoundAborted(exc, [c for i, c in enumerate(params.clients) if i not in dropped]) from exc
        return AggregationResult(
            protocol=self.protocol, total=total, included=included,
            submissions={c: self.blobs[c] for c in included},
            transcript=transcript_with_codec(outcome.transcript, codec))

    def _one_shot(self, opened: Entry, setup: ProtocolSetup, length: int) -> AggregationResult:
        """The ``encrypt`` stage of a Paillier or CKKS round, then the key holder's decryption."""
        fed = self.federation
        registry = fed.ledger.state.clients()
        # The beacon too: each hospital checks the validators beaconed this very opening.
        beacon = self.opened[1].to_bytes() if len(self.opened) > 1 else b""
        request = self._request("encrypt", round_open=opened.to_bytes(), round_beacon=beacon,
                                public_key=one_shot.public_key_material(setup),
                                model=fed.ledger.blobs.get(opened.payload["base_model_cid"]))
        def signed_by(client: str, reply: Mapping[str, Any]) -> None:
            Entry.from_bytes(reply["submission"], where=f"submission claimed for {client}").verify(
                VerifyingKey.from_vkey(registry[client]["vkey"]), where=f"submission claimed for {client}")

        for client, reply in self._claim("encrypt", request, signed_by).items():
            def receive(client: str = client, reply: dict[str, Any] = reply) -> None:
                blob = reply["ciphertext"]
                first = next((c for c, b in self.blobs.items() if b == blob), None)
                if first is not None:  # a copy of another's update, not this hospital's: named, uncharged
                    self.refused[client] = f"ciphertext refused: the ciphertext of {client} repeats that of {first}"
                    raise ReplayedMessage(self.refused[client])
                self._accept_submission(client, reply, blob, VerifyingKey.from_vkey(registry[client]["vkey"]),
                                        registry[client])
            self._receive("encrypt", client, receive)
        self._keep_received()
        self.log(f"round {self.round_id}: stage encrypt closed")
        dropped = {c: "mask" for c in self.participants if c not in self.blobs and c not in self.refused}
        try:
            return one_shot.finish(setup, self.blobs, round_id=self.round_id, length=length, dropped=dropped)
        except RoundAbort as exc:
            raise _RoundAborted(exc, sorted(self.blobs)) from exc

    def _claim(self, stage: str, request: Mapping[str, Any],
               signed_by: Callable[[str, Mapping[str, Any]], None]) -> dict[str, dict[str, Any]]:
        """Ask every connected node (the round's first stage); each answers with its
        hospital's name and a message signed with that hospital's key.

        The name is only a claim: a seat goes to a node only once ``signed_by(client,
        reply)`` has verified the signed message under that hospital's registered key (a
        node sending garbage in another's name takes nothing). Two nodes with valid claims
        to one seat (one replays the other's message): the node that carried the hospital's
        last ``unmask`` keeps it, else the first; the other is refused.
        """
        nodes = self.transport.nodes()
        replies = self._send(stage, {n: request for n in nodes}, {n: f"node {n}" for n in nodes})
        def carried_its_last_unmask(item: tuple[int, Mapping[str, Any]]) -> bool:
            node, reply = item
            return self.ahead.get(reply["client"], (None, b""))[0] == node

        claimed: dict[str, dict[str, Any]] = {}
        for node, reply in sorted(replies.items(), key=lambda item: not carried_its_last_unmask(item)):
            client = reply["client"]
            if client not in self.participants or client in claimed:
                self.failures[f"node {node}"] = f"{stage}: claims {client!r}, not an open seat of the round"
                self.log(f"round {self.round_id}: node {node} claims {client!r}, which is not an open seat of the round")
                continue
            try:
                signed_by(client, reply)
            except (ProtocolError, VerificationError, StageMessageError) as exc:
                self.failures[f"node {node}"] = f"{stage}: claims {client!r} with a message {client} did not sign: " \
                                                f"{_entry_failure(exc)}"
                self.log(f"round {self.round_id}: node {node} claims {client!r} with a message {client} did not "
                         f"sign ({_entry_failure(exc)}); the seat stays open")
                continue
            claimed[client] = reply
            self.node_of[client] = node
        return claimed

    def _advertised_ahead(self, params: MaskingParams, identity_keys: list[bytes]) -> MaskingServer | None:
        """A masking server holding every participant's advertisement made ahead for this
        round, each verified as ``advertise`` verifies it, on the node that sent it; None
        (the round starts with ``advertise``) if any is missing, invalid or its node gone."""
        if set(self.ahead) != set(self.participants):
            return None
        connected = set(self.transport.nodes())
        server = MaskingServer(params, identity_keys=identity_keys)
        for client in self.participants:
            node, advertisement = self.ahead[client]
            try:
                if node not in connected:
                    raise StageMessageError(f"its node {node} is gone")
                self._check_advertisement(server, {"client": client, "advertisement": advertisement})
            except (ProtocolError, StageMessageError) as exc:
                self.log(f"round {self.round_id}: the advertisement {client} made ahead is not usable "
                         f"({_entry_failure(exc)}): the round starts with advertise")
                return None
        self.node_of.update({c: self.ahead[c][0] for c in self.participants})
        self.log(f"round {self.round_id}: every participant advertised ahead: the round starts with join")
        return server

    def _check_advertisement(self, server: MaskingServer, reply: Mapping[str, Any]) -> None:
        client = reply["client"]
        advert = KeyAdvertisement.from_bytes(reply["advertisement"])
        if advert.sender != self.participants.index(client):
            raise StageMessageError(f"{client} sent the advertisement of party {advert.sender}, "
                                    f"its party number is {self.participants.index(client)}")
        server.receive_advertisement(reply["advertisement"])

    def _accept_submission(self, client: str, reply: Mapping[str, Any], blob: bytes, key: VerifyingKey,
                           registered: Mapping[str, Any]) -> None:
        """Check the hospital's signed submission; once it passes, its update has left it:
        keep the entry, its record and its blob, to post and charge whatever follows. A
        privacy record that breaks the round's rules is refused and the hospital rejected."""
        try:
            entry, record = self._check_submission(client, reply, blob, key, registered)
        except RefusedPrivacyRecord as exc:
            self.refused[client] = str(exc)
            raise
        self.federation.ledger.blobs.put(blob)  # stored now: a round that stops from here is recorded with it
        self.submissions[client], self.records[client], self.blobs[client] = entry, record, blob

    def _check_submission(self, client: str, reply: Mapping[str, Any], blob: bytes, key: VerifyingKey,
                          registered: Mapping[str, Any]) -> tuple[Entry, SpendRecord]:
        """The hospital's signed submission must name ``blob`` (what the ledger will commit:
        its masked input or its ciphertexts) and the record the plan and genesis allow."""
        where = f"submission of {client} in round {self.round_id}"
        entry = Entry.from_bytes(reply["submission"], where=where)
        entry.verify(key, where=where)
        if entry.type != SUBMISSION or entry.round != self.round_id or entry.payload["client"] != client:
            raise StageMessageError(f"{where}: a {entry.type} entry of round {entry.round} for {entry.payload.get('client')!r}")
        if entry.payload["blob_cid"] != cid_for(blob):
            what = "masked input" if self.protocol == "masking" else "ciphertext"
            raise StageMessageError(f"{where}: blob_cid does not name the {what} that came with it")
        if entry.payload["data_weight"] != int(registered["data_weight"]):
            raise StageMessageError(f"{where}: data weight {entry.payload['data_weight']} is not the registered "
                                    f"{registered['data_weight']} (record counts are public and fixed at genesis)")
        record = privacy_record_from_json(entry.payload["privacy"], where=where)
        violation = spend_rule_violation(record, planned=self.planned[client])
        if violation is not None:
            raise RefusedPrivacyRecord(f"{where}: {violation}")
        return entry, record

    def _request(self, stage: str, **fields: Any) -> dict[str, Any]:
        return request(stage, federation=self.federation.ledger.state.federation_id,
                       round_id=self.round_id, **fields)
