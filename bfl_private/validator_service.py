"""Validators as parties of their own: one request handler, two transports, the panel.

A validator answers three requests from the coordinator:

* ``beacon``: a round's opening. It signs the opening's beacon, which fixes the round's
  seed, if the opening is one a participant would accept for the ledger's next round and
  the only opening of that round it signs (:meth:`Validator.sign_beacon`).
* ``attest``: the entries of a round (opening, submissions, close). It re-checks the round
  against its own view of the ledger and its own hold-out data and returns its signed
  attestation entry (:meth:`Validator.attest`).
* ``cosign``: a proposed block header with the block's entries and the coordinator's
  signature proposing it. It returns its signature over the header only if the
  coordinator proposed it, the header is what the entries give, any round the block
  closes carries its own attestation of those entries, and it has cosigned no other
  header at that height (:meth:`Validator.cosign_header`).

:func:`answer` is the one handler. The in-process demo drives it through
:class:`LoopbackValidator` (requests and replies pass through their byte encoding, as they
would over the wire); ``bfl-private validator`` serves it over TCP (:func:`validator_server`), and the
coordinator reaches such a process through :class:`RemoteValidator`. Replies need no
authentication for the quorum to mean something: each is an entry or a signature under
the validator's registered key, checked before the block is written; a validator checks
every request itself before it signs (a cosign request must carry the coordinator's
proposal signature, since each height takes only one header).

:class:`ValidatorPanel` asks every validator and keeps going as long as a quorum can still
sign: a validator that is down, times out or refuses is named, and the block is written
only with a quorum of cosignatures (:class:`QuorumNotReached` otherwise, nothing written).
"""
from __future__ import annotations

import base64
import binascii
import json
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .ledger.beacon import beacon_message, opening_digest
from .ledger.blocks import BlockHeader
from .ledger.canonical import check_nesting
from .ledger.entries import ATTESTATION, ROUND_CLOSE, Entry
from .ledger.errors import MalformedRecord
from .ledger.genesis import GenesisRecord
from .ledger.identity import VerifyingKey
from .ledger.store import Ledger, ProposedBlock
from .primitives.errors import BflError
from .round_records import Attestation, RoundClosing, exact_fields
from .validator import Validator, proposal_message

BEACON = "beacon"
ATTEST = "attest"
COSIGN = "cosign"
REQUEST_KINDS = (BEACON, ATTEST, COSIGN)
MAX_MESSAGE_BYTES = 64 << 20
"""Largest request accepted on the wire (a round's entries are a few kB per client)."""
MAX_REPLY_BYTES = 1 << 20
"""Largest reply the coordinator reads: one entry, one signature or one refusal."""
DEFAULT_TIMEOUT_S = 120.0
"""How long the coordinator waits for a remote validator's reply (it re-checks the round)."""
READ_TIMEOUT_S = 30.0
"""How long a served validator waits for a whole request once a peer has connected."""
MAX_CONNECTIONS = 32
"""Connections a served validator reads at once; more are closed unread."""


class ValidatorUnavailable(BflError, RuntimeError):
    """A validator did not answer: unreachable, timed out, or sent bytes that are no reply."""


class UnknownValidator(BflError, ValueError):
    """No validator of that name is registered at genesis."""


class QuorumNotReached(BflError, RuntimeError):
    """Fewer than a quorum of validators cosigned a block: nothing of it was written."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, *, where: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedRecord(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise MalformedRecord(f"{where}: not base64") from None


@dataclass(frozen=True)
class ValidatorRequest:
    """What the coordinator asks a validator: sign a round opening's beacon (``entries`` is
    the opening alone), attest a round, or cosign a block."""

    kind: str
    federation_id: str
    entries: tuple[Entry, ...]
    header: BlockHeader | None = None
    """The proposed header (``cosign`` only)."""
    proposer_signature: bytes | None = None
    """The coordinator's signature of :func:`~bfl_private.validator.proposal_message` of the
    header (``cosign`` only): a validator signs one header per height, so it spends that
    height only on a header the coordinator proposed, never on one a network peer re-timed."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "federation_id": self.federation_id,
                "entries": [_b64(e.to_bytes()) for e in self.entries],
                "header": None if self.header is None else _b64(self.header.signing_bytes()),
                "proposer_signature": None if self.proposer_signature is None else _b64(self.proposer_signature)}

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> ValidatorRequest:
        data = exact_fields(data, {"kind", "federation_id", "entries", "header", "proposer_signature"},
                            what="validator request", where=where)
        kind, federation_id, entries = data["kind"], data["federation_id"], data["entries"]
        if kind not in REQUEST_KINDS:
            raise MalformedRecord(f"{where}: kind must be one of {REQUEST_KINDS}, got {kind!r}")
        if not isinstance(federation_id, str) or not isinstance(entries, list) or not entries:
            raise MalformedRecord(f"{where}: federation_id must be a string and entries a non-empty list")
        if kind == BEACON and len(entries) != 1:
            raise MalformedRecord(f"{where}: a beacon request carries exactly the round opening")
        parsed = tuple(Entry.from_bytes(_unb64(e, where=f"{where} entry {i}"), where=f"{where} entry {i}")
                       for i, e in enumerate(entries))
        header = signature = None
        if kind == COSIGN:
            header = BlockHeader.from_bytes(_unb64(data["header"], where=f"{where} header"), where=f"{where} header")
            signature = _unb64(data["proposer_signature"], where=f"{where} proposer_signature")
        elif data["header"] is not None or data["proposer_signature"] is not None:
            raise MalformedRecord(f"{where}: only a cosign request carries a header")
        return cls(kind, federation_id, parsed, header, signature)


@dataclass(frozen=True)
class ValidatorReply:
    """Exactly one of: the attestation entry, the header signature, or why it refused."""

    attestation: Entry | None = None
    signature: bytes | None = None
    refusal: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"attestation": None if self.attestation is None else _b64(self.attestation.to_bytes()),
                "signature": None if self.signature is None else _b64(self.signature),
                "refusal": self.refusal}

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> ValidatorReply:
        data = exact_fields(data, {"attestation", "signature", "refusal"}, what="validator reply", where=where)
        given = [name for name, value in data.items() if value is not None]
        if len(given) != 1:
            raise MalformedRecord(f"{where}: a reply holds exactly one of attestation, signature, refusal; got {given}")
        if data["refusal"] is not None:
            if not isinstance(data["refusal"], str):
                raise MalformedRecord(f"{where}: refusal must be a string")
            return cls(refusal=data["refusal"])
        if data["signature"] is not None:
            return cls(signature=_unb64(data["signature"], where=f"{where} signature"))
        raw = _unb64(data["attestation"], where=f"{where} attestation")
        return cls(attestation=Entry.from_bytes(raw, where=f"{where} attestation"))


def encode_message(record: ValidatorRequest | ValidatorReply) -> bytes:
    return json.dumps(record.to_json(), separators=(",", ":")).encode("utf-8")


def decode_message(data: bytes, *, where: str) -> Any:
    """The JSON value of one message; MalformedRecord naming ``where`` if it is none."""
    check_nesting(data, where=where)
    try:
        return json.loads(data)
    except ValueError as exc:  # not UTF-8 or JSON, or an integer too long to convert
        raise MalformedRecord(f"{where}: not JSON: {exc}") from None


def answer(validator: Validator, ledger: Ledger, request: ValidatorRequest) -> ValidatorReply:
    """The one handler of a validator, whatever carried the request."""
    # Before genesis the block to certify is the genesis block itself, which names the federation.
    try:
        federation_id = ledger.state.federation_id if ledger.size else GenesisRecord.of(request.entries[0]).federation_id
    except MalformedRecord as exc:
        return ValidatorReply(refusal=f"{type(exc).__name__}: {exc}")
    if request.federation_id != federation_id:
        return ValidatorReply(refusal=f"request for federation {request.federation_id!r}; "
                                      f"this validator's ledger is {federation_id!r}")
    try:
        if request.kind == BEACON:
            return ValidatorReply(signature=validator.sign_beacon(request.entries[0], ledger))
        if request.kind == ATTEST:
            return ValidatorReply(attestation=validator.attest(request.entries, ledger))
        assert request.header is not None and request.proposer_signature is not None  # as from_json makes them
        return ValidatorReply(signature=validator.cosign_header(request.header, request.entries, ledger,
                                                                proposer_signature=request.proposer_signature))
    except BflError as exc:
        return ValidatorReply(refusal=f"{type(exc).__name__}: {exc}")


class ValidatorEndpoint(Protocol):
    """How the coordinator reaches one validator."""

    name: str

    def call(self, request: ValidatorRequest) -> ValidatorReply:
        """The validator's reply; ValidatorUnavailable when none came."""
        ...


class LoopbackValidator:
    """A validator in this process, driven through the same handler and byte encoding as a
    remote one (the demo's validators)."""

    def __init__(self, validator: Validator, ledger: Ledger) -> None:
        self.name = validator.identity.name
        self.validator = validator
        self._ledger = ledger

    def call(self, request: ValidatorRequest) -> ValidatorReply:
        where = f"request to {self.name}"
        received = ValidatorRequest.from_json(decode_message(encode_message(request), where=where), where=where)
        reply = answer(self.validator, self._ledger, received)
        where = f"reply of {self.name}"
        return ValidatorReply.from_json(decode_message(encode_message(reply), where=where), where=where)


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack(">I", len(data)) + data)


def _receive_exactly(sock: socket.socket, size: int, *, deadline: float, where: str) -> bytes:
    chunks, remaining = [], size
    while remaining:
        # One deadline for the whole message: a peer dripping a byte at a time must not
        # hold a single-threaded validator or the coordinator past it.
        left = deadline - time.monotonic()
        if left <= 0:
            raise MalformedRecord(f"{where}: {size - remaining} of {size} bytes arrived before the deadline")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(remaining, 1 << 20))
        except TimeoutError:
            raise MalformedRecord(f"{where}: {size - remaining} of {size} bytes arrived before the deadline") from None
        if not chunk:
            raise MalformedRecord(f"{where}: connection closed after {size - remaining} of {size} bytes")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _receive_frame(sock: socket.socket, *, limit: int, seconds: float, where: str) -> bytes:
    """One length-prefixed message of at most ``limit`` bytes, all of it within ``seconds``."""
    deadline = time.monotonic() + seconds
    (size,) = struct.unpack(">I", _receive_exactly(sock, 4, deadline=deadline, where=where))
    if size > limit:
        raise MalformedRecord(f"{where}: a {size}-byte message is over the {limit}-byte limit")
    return _receive_exactly(sock, size, deadline=deadline, where=where)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` as a socket address; ValueError naming it otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"validator address {address!r} is not HOST:PORT")
    return host, int(port)


class RemoteValidator:
    """A validator running as its own process (``bfl-private validator``), over TCP."""

    def __init__(self, name: str, address: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.name = name
        self.address = parse_address(address)
        self.timeout = timeout

    def call(self, request: ValidatorRequest) -> ValidatorReply:
        where = f"validator {self.name} at {self.address[0]}:{self.address[1]}"
        try:
            with socket.create_connection(self.address, timeout=self.timeout) as sock:
                _send_frame(sock, encode_message(request))
                data = _receive_frame(sock, limit=MAX_REPLY_BYTES, seconds=self.timeout, where=where)
            return ValidatorReply.from_json(decode_message(data, where=where), where=where)
        except OSError as exc:
            raise ValidatorUnavailable(f"{where}: {exc.strerror or exc}") from None
        except MalformedRecord as exc:
            raise ValidatorUnavailable(f"{where} sent no valid reply: {exc}") from None


def validator_server(directory: Path, validator: Validator, *, host: str, port: int,
                     on_request: Callable[[ValidatorRequest, ValidatorReply], None] = lambda request, reply: None,
                     ) -> socketserver.TCPServer:
    """A TCP server bound to ``host:port`` (its ``server_address`` says which port, for 0)
    that answers one request per connection, reading requests concurrently and checking
    them one at a time, each against the ledger in ``directory`` as it is then: opened
    afresh per request and only read (the validator proposes nothing). Run it with
    ``serve_forever``; a malformed request gets a refusal and the server keeps serving."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            where = f"request from {self.client_address[0]}:{self.client_address[1]}"
            # Requests are read concurrently, each within one deadline, so peers that connect
            # and send slowly or nothing hold only their own thread; beyond MAX_CONNECTIONS
            # at once a connection is closed unread. Checking and signing go one at a time.
            if not connections.acquire(blocking=False):
                return
            try:
                try:
                    data = _receive_frame(self.request, limit=MAX_MESSAGE_BYTES, seconds=READ_TIMEOUT_S, where=where)
                except (OSError, MalformedRecord):
                    return  # nothing usable arrived; there is no one to answer
                self._answer(data, where)
            finally:
                connections.release()

        def _answer(self, data: bytes, where: str) -> None:
            try:
                request = ValidatorRequest.from_json(decode_message(data, where=where), where=where)
            except MalformedRecord as exc:
                reply = ValidatorReply(refusal=f"malformed request: {exc}")
            else:
                try:
                    with checking, Ledger.open(directory) as ledger:
                        reply = answer(validator, ledger, request)
                        on_request(request, reply)
                except Exception as exc:  # noqa: BLE001 - the transport boundary: refuse, keep serving
                    reply = ValidatorReply(refusal=f"could not check the request: {type(exc).__name__}: {exc}")
            try:
                _send_frame(self.request, encode_message(reply))
            except OSError:
                pass  # the coordinator has gone; it will count this validator as unavailable

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
    checking = threading.Lock()
    return Server((host, port), Handler)


def _reasons(refusals: Mapping[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in refusals.items())


class ValidatorPanel:
    """The federation's validators as the coordinator reaches them."""

    def __init__(self, endpoints: Sequence[ValidatorEndpoint], *, keys: Mapping[str, VerifyingKey],
                 quorum: int, federation_id: str, sign_proposal: Callable[[bytes], bytes]) -> None:
        """``sign_proposal``: the coordinator's signature, with which it proposes each block."""
        self.sign_proposal = sign_proposal
        self.endpoints = list(endpoints)
        self.keys = dict(keys)
        self.quorum = quorum
        self.federation_id = federation_id

    def _ask(self, endpoint: ValidatorEndpoint, request: ValidatorRequest) -> ValidatorReply:
        try:
            return endpoint.call(request)
        except ValidatorUnavailable as exc:
            return ValidatorReply(refusal=f"unavailable: {exc}")
        except BflError as exc:  # whatever one validator answers, the others are still asked
            return ValidatorReply(refusal=f"{type(exc).__name__}: {exc}")

    def _ask_all(self, request: ValidatorRequest) -> list[tuple[ValidatorEndpoint, ValidatorReply]]:
        """Every validator's reply, in genesis order. Validators in their own processes are
        asked at once, so a slow one costs a round its timeout once, not once per slow
        validator; those in this process share its ledger and go one after another."""
        remote = [e for e in self.endpoints if isinstance(e, RemoteValidator)]
        if not remote:  # the demo: no thread pool for every request
            return [(e, self._ask(e, request)) for e in self.endpoints]
        with ThreadPoolExecutor(max_workers=max(1, len(remote))) as pool:
            pending = {e.name: pool.submit(self._ask, e, request) for e in remote}
            replies = {e.name: self._ask(e, request) for e in self.endpoints if e.name not in pending}
            replies.update({name: future.result() for name, future in pending.items()})
        return [(e, replies[e.name]) for e in self.endpoints]

    def beacon(self, opening: Entry) -> tuple[dict[str, bytes], dict[str, str]]:
        """Each validator's beacon signature on ``opening``, by name, and why the others
        gave none. A signature that does not verify is left out here, so one faulty
        validator cannot sink a round a quorum would seed (:func:`round_seed` needs a quorum)."""
        request = ValidatorRequest(BEACON, self.federation_id, (opening,))
        message = beacon_message(self.federation_id, opening.round, opening_digest(opening))
        signatures, refusals = {}, {}
        for endpoint, reply in self._ask_all(request):
            if reply.signature is None:
                refusals[endpoint.name] = reply.refusal or "replied without a signature"
                continue
            try:
                self.keys[endpoint.name].verify(reply.signature, message)
            except BflError as exc:
                refusals[endpoint.name] = str(exc)
                continue
            signatures[endpoint.name] = reply.signature
        return signatures, refusals

    def attest(self, entries: Sequence[Entry]) -> list[Entry]:
        """Each validator's attestation of the round in ``entries`` (the ledger checks each
        one's author, signature and round when the block is proposed); QuorumNotReached
        when fewer than a quorum attest, since no quorum could then cosign the block."""
        request = ValidatorRequest(ATTEST, self.federation_id, tuple(entries))
        close = next((e for e in entries if e.type == ROUND_CLOSE), None)
        attestations, refusals = [], {}
        for endpoint, reply in self._ask_all(request):
            if reply.attestation is None:
                refusals[endpoint.name] = reply.refusal or "replied without an attestation"
            elif (problem := self._attestation_problem(endpoint.name, reply.attestation, close)) is not None:
                # Proposing it would fail the whole block: one faulty validator must not
                # stop a round that a quorum can certify.
                refusals[endpoint.name] = problem
            else:
                attestations.append(reply.attestation)
        if len(attestations) < self.quorum:
            raise QuorumNotReached(f"round {entries[0].round}: {len(attestations)} of {len(self.endpoints)} "
                                   f"validators attested, the quorum is {self.quorum}; nothing of it was written "
                                   f"({_reasons(refusals)})")
        return attestations

    def _attestation_problem(self, name: str, attestation: Entry, close: Entry | None) -> str | None:
        """Why ``attestation`` is not ``name``'s signed attestation of this round's model, or None."""
        try:
            attestation.verify(self.keys[name], where=f"attestation of {name}")
        except BflError as exc:
            return str(exc)
        if attestation.type != ATTESTATION:
            return f"replied with a {attestation.type} entry, not an attestation"
        record = Attestation.from_json(attestation.payload, where=f"attestation of {name}")
        if record.validator != name:
            return f"replied with the attestation of {record.validator!r}, not its own"
        if close is None or attestation.round != close.round or \
                record.model_cid != RoundClosing.from_json(close.payload, where="round close").new_model_cid:
            return "attested another round or model than the one it was asked about"
        return None

    def certify(self, proposed: ProposedBlock) -> dict[str, bytes]:
        """A quorum of cosignatures over ``proposed``'s header, keyed by signer key id;
        QuorumNotReached naming every validator that did not sign, and why."""
        request = ValidatorRequest(COSIGN, self.federation_id, proposed.entries, proposed.header,
                                   self.sign_proposal(proposal_message(proposed.header)))
        message = proposed.header.signing_bytes()
        signatures, refusals = {}, {}
        for endpoint, reply in self._ask_all(request):
            key = self.keys[endpoint.name]
            if reply.signature is None:
                refusals[endpoint.name] = reply.refusal or "replied without a signature"
                continue
            try:
                key.verify(reply.signature, message)
            except BflError as exc:
                refusals[endpoint.name] = str(exc)
                continue
            signatures[key.key_id_hex] = reply.signature
        if len(signatures) < self.quorum:
            raise QuorumNotReached(f"block {proposed.header.height}: {len(signatures)} of {len(self.endpoints)} "
                                   f"validators cosigned, the quorum is {self.quorum}; nothing of it was written "
                                   f"({_reasons(refusals)})")
        return signatures


def open_validator(directory: Path, name: str) -> Validator:
    """Validator ``name`` of the federation in ``directory``, built from its own folder
    (``parties/<name>/``) with its share of the hold-out data (the genesis data split),
    for ``bfl-private validator``."""
    from .data import federation_data
    from .parties import check_layout
    from .settings import FederationSettings

    check_layout(directory)
    with Ledger.open(directory) as ledger:
        genesis = GenesisRecord.of(ledger.genesis())
    names = [v.id for v in genesis.validators]
    if name not in names:
        raise UnknownValidator(f"{directory}: no validator named {name!r} (its validators: {', '.join(names)})")
    settings = FederationSettings.from_json(genesis.settings)
    data = federation_data(settings)
    validator = Validator(directory, name, data.validators[names.index(name)], settings=settings,
                          n_features=data.n_features, n_classes=data.n_classes)
    validator.identity  # noqa: B018 - load its key now: a missing or exposed key stops the start, not a request
    return validator


def describe(request: ValidatorRequest, reply: ValidatorReply) -> str:
    """One log line for a served request."""
    if reply.refusal is not None:
        return f"{request.kind}: refused: {reply.refusal}"
    if reply.attestation is not None:
        payload = reply.attestation.payload
        return (f"round {reply.attestation.round}: attested {payload['verdict']} "
                f"(hold-out accuracy {payload['quality_ppm'] / 1e6:.4f})")
    if request.kind == BEACON:
        return f"round {request.entries[0].round}: beacon signed"
    assert request.header is not None
    return f"block {request.header.height}: cosigned"
