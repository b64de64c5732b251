"""One hospital's side of the round: its identity key, its data, its privacy history.

A SuperNode is started with a node config naming the hospital's folder (see
:mod:`.setup` for how an operator exports one per hospital)::

    hospital-dir   folder with identity.ed25519 (0600, raw 32-byte Ed25519 seed),
                   genesis.json (the federation's signed genesis entry), the
                   hospital's privacy-history.json (created on first training) and
                   its participation.json (rounds opened and submitted in, and every
                   round opening it refused, with the named error)
    ledger-dir     optional: the hospital's synced copy of the federation's ledger; the
                   round opening's base model and round number are checked against it
                   (without it: against genesis' initial model in round 1, and against
                   the hospital's own participation record)
    data-path      optional: the hospital's records, .npz or .csv (default:
                   hospital-dir/data.npz)
    partition-id, num-partitions
                   optional, demos: use this partition of the federation's bundled
                   dataset instead of a data file

Data files. NPZ: ``features`` (n, d) float and ``labels`` (n,) integer, loaded without
pickle. CSV: a header row, d feature columns, the last column the integer label. Features
must be standardised with the federation's agreed statistics (as :mod:`bfl_private.data`
does for the bundled datasets); labels must lie in the federation's label space.

Each handler takes the stage's fields and this hospital's saved round state and returns
the reply fields and the new state; nothing here imports ``flwr``. A hospital trains in
the stage that opens its round (``advertise`` or ``join``, or ``encrypt`` in a one-shot round), the
one stage that needs Torch, Opacus, scikit-learn and the accountant: every later stage of
a masking round is cryptography only, and its ClientApp process (Flower starts one per
message) imports none of them. The trained, encoded input waits in the round state, with
the hospital's other round secrets, until the ``mask`` stage masks it and signs the
submission: ε is counted as spent only then, when the update leaves, and the budget is
checked again then if the privacy history changed since the opening (another Flower run
of this hospital spent in between), under a lock on the hospital's records. The HE
libraries are imported only when a round uses them.

The stage that opens a round (``advertise`` or ``join``, or ``encrypt``) carries the round opening
and the validators' beacon on it; the hospital checks the opening (participant checks,
the distributed-DP plan against genesis, its own budget: each refusal named and kept in
``participation.json``) and the beacon's signatures against genesis' validator keys and
quorum, refusing by name (``BadBeacon``) a beacon that is not for this very opening. In a
masking round it derives the SecAgg+ graph seed from it itself
(:func:`bfl_private.ledger.beacon.round_seed`): the server never chooses the seed. In
distributed DP it acknowledges (so helps unmask) only a survivor set of at least N - t
(``TooFewSurvivors``).

In a Paillier or CKKS round the hospital receives only public key material (the Paillier
public key or the CKKS public context, checked against what the coordinator's signed
round opening names before anything is trained), encrypts its update with the client
step (:func:`bfl_private.protocols.paillier.encrypt_update`,
:func:`bfl_private.protocols.ckks.encrypt_update`), and signs the submission with its own
identity key. The key holder stays with the engine. In a plain round (genesis must name
plain) it sends its payload in the clear. Before anything leaves it, the record it signs
must be the planned one its budget check counted.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors

from ..artifacts import MODEL_TENSOR, STATE_TENSORS
from ..fedavg import weighted_payload
from ..ledger.beacon import RANDOMNESS_BEACON, BeaconPolicy, RoundBeacon, round_seed
from ..keyring import Keyring, KeyringError
from ..parties import IDENTITY_FILE
from ..round_records import Submission
from ..participant_checks import (
    AlreadySubmitted,
    BadBeacon,
    ParticipantRefusal,
    OverBudget,
    ParticipantView,
    TooFewSurvivors,
    WeakParameters,
    check_opening,
    check_protocol,
)
from ..ledger.canonical import canonical_bytes
from ..ledger.cid import cid_for
from ..ledger.entries import GENESIS, ROUND_OPEN, SUBMISSION, Entry
from ..ledger.errors import VerificationError
from ..ledger.genesis import GenesisRecord, RegisteredClient
from ..primitives.errors import BflError
from ..ledger.identity import SigningIdentity, VerifyingKey
from ..protocols.errors import ConfigurationError, ProtocolError
from ..protocols.masking import encode_submission
from ..protocols.masking_graph import MaskingParams
from ..protocols.masking_messages import MaskedInput, SurvivorSet
from ..protocols.quantize import codec_from_json
from ..settings import FederationSettings, SettingsError
from .errors import HospitalConfigError, OutOfOrderMessage, PublicKeyMessageError, StageMessageError
from .masking_state import KeysAhead, PersistentMaskingClient
from .stages import ALL_STAGES, HE_STAGES, JOIN, PROTOCOL_STAGES, REQUEST_FIELDS, STAGES, check_fields

if TYPE_CHECKING:  # scikit-learn and dp-accounting load only in the stage that trains
    from ..data import Split
    from ..distributed_round import DistributedPlan
    from ..privacy.accounting import SpendRecord

GENESIS_FILE = "genesis.json"
DATA_FILE = "data.npz"
HISTORY_FILE = "privacy-history.json"
PARTICIPATION_FILE = "participation.json"
PARTICIPATION_VERSION = 1
ROUND_STATE_VERSION = 2
RECORDS_LOCK_FILE = ".records.lock"
"""Held while a stage checks the budget or earlier submissions and then records a spend."""


def write_private(path: Path, data: bytes) -> None:
    """Write one of the hospital's own records atomically, readable by it alone (0600)."""
    try:
        Keyring(path.parent).store(path.name, data)
    except KeyringError as exc:
        raise HospitalConfigError(str(exc)) from exc


@dataclass(frozen=True)
class Registry:
    """What a hospital knows of its federation: the genesis entry's public registry."""

    federation_id: str
    settings: FederationSettings
    coordinator: VerifyingKey
    clients: Mapping[str, RegisteredClient]
    beacon: BeaconPolicy
    """The genesis validators and quorum whose beacon gives each round's seed."""
    initial_model_cid: str | None = None

    @classmethod
    def from_genesis(cls, data: bytes, *, where: str) -> Registry:
        """Parse the genesis entry and check its signature under the coordinator key it names."""
        try:
            entry = Entry.from_bytes(data, where=where)
            if entry.type != GENESIS:
                raise HospitalConfigError(f"{where}: a {entry.type} entry, not the genesis entry")
            genesis = GenesisRecord.from_json(entry.payload, where=where)
            coordinator = genesis.coordinator.key()
            entry.verify(coordinator, where=where)
            settings = FederationSettings.from_json(genesis.settings)
            beacon = BeaconPolicy.from_genesis(genesis)
        except (VerificationError, SettingsError) as exc:
            raise HospitalConfigError(f"{where}: {exc}") from exc
        return cls(genesis.federation_id, settings, coordinator, {c.id: c for c in genesis.clients}, beacon,
                   genesis.initial_model_cid)

    def key(self, client: str) -> VerifyingKey:
        if client not in self.clients:
            raise StageMessageError(f"client {client!r} is not registered in federation {self.federation_id}")
        return self.clients[client].key()

    @cached_property
    def public_keys(self) -> dict[str, bytes]:
        """Every registered client's identity key, raw (parsed once: each stage needs them all)."""
        return {name: client.key().public_bytes() for name, client in self.clients.items()}

    def n_classes(self) -> int:
        """Size of the federation's label space (its dataset's classes)."""
        if self.settings.csv_description is not None:  # the user's CSV data: genesis lists its classes
            return len(self.settings.csv_description.classes)
        from ..data import DATASETS

        return DATASETS[self.settings.dataset]


def load_data_file(path: Path, *, n_classes: int) -> Split:
    """A hospital's records from .npz (``features``, ``labels``) or .csv (label last)."""
    from ..data import Split

    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if set(archive.files) != {"features", "labels"}:
                    raise HospitalConfigError(f"{path}: expected arrays 'features' and 'labels', found {sorted(archive.files)}")
                features, labels = archive["features"], archive["labels"]
        elif path.suffix == ".csv":
            table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
            features, labels = table[:, :-1], table[:, -1]
            if not np.array_equal(labels, np.round(labels)):
                raise HospitalConfigError(f"{path}: the last column (label) must hold integers")
        else:
            raise HospitalConfigError(f"{path}: data files are .npz or .csv, got {path.suffix or 'no suffix'}")
    except (OSError, ValueError) as exc:
        if isinstance(exc, HospitalConfigError):
            raise
        raise HospitalConfigError(f"{path}: cannot read data: {exc}") from exc
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0] or labels.shape[0] < 1:
        raise HospitalConfigError(f"{path}: features {features.shape} and labels {labels.shape} must be (n, d) and (n,), n >= 1")
    if not np.issubdtype(features.dtype, np.number) or not np.all(np.isfinite(features)):
        raise HospitalConfigError(f"{path}: features must be finite numbers")
    if not np.issubdtype(labels.dtype, np.number) or labels.min() < 0 or labels.max() >= n_classes:
        raise HospitalConfigError(f"{path}: labels must be integers in 0..{n_classes - 1}")
    return Split(features.astype(np.float32), labels.astype(np.int64))


def ledger_position(directory: Path) -> tuple[str | None, int]:
    """The current model CID and the last ended round of a hospital's copy of the ledger
    (opened read-only; its blocks were checked when it was synced)."""
    from ..ledger.store import DATABASE, Ledger, SQLiteStore

    try:
        ledger = Ledger(Path(directory), SQLiteStore.open(Path(directory) / DATABASE, read_only=True))
    except (OSError, BflError) as exc:
        raise HospitalConfigError(f"ledger-dir {directory}: {exc}") from exc
    try:
        state = ledger.state
        last = state.last_round - (1 if state.open_round is not None else 0)
        return state.model_cid, last
    finally:
        ledger.close()


def _config(node_config: Mapping[str, Any], key: str, kind: type) -> Any:
    value = node_config.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise HospitalConfigError(f"node config {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _payload_extra(opened: Entry) -> int:
    """Values a round's payload holds beyond the model's: local DP adds the update's weight
    (:func:`~bfl_private.fedavg.weighted_payload`), distributed DP's share has none."""
    from ..distributed_round import is_distributed_plan

    return 0 if is_distributed_plan(opened.payload["privacy_plan"]) else 1


_ROUND_STATE_FIELDS = frozenset({"v", "round", "done", "open", "seed", "length", "client", "levels", "records",
                                 "privacy", "history"})


@dataclass(frozen=True)
class RoundState:
    """A masking round in progress here: its opening and seed, the SecAgg+ client's
    secrets, and (until ``mask`` sends it) the trained input: the codec's levels, the
    record count and the privacy record the submission will sign."""

    round: int
    done: str
    open: bytes
    seed: bytes
    length: int
    client: bytes
    levels: np.ndarray
    records: int
    privacy: Mapping[str, Any]
    history: str
    """SHA-256 of the privacy history when the round opened here, before its budget check read it."""

    def to_bytes(self) -> bytes:
        return canonical_bytes({"v": ROUND_STATE_VERSION, "round": self.round, "done": self.done,
                                "open": self.open.hex(), "seed": self.seed.hex(), "length": self.length,
                                "client": self.client.decode("utf-8"),
                                "levels": base64.b64encode(self.levels.astype("<u4").tobytes()).decode("ascii"),
                                "records": self.records, "privacy": dict(self.privacy), "history": self.history})

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundState:
        try:
            s = json.loads(data)
            if not isinstance(s, dict) or set(s) != _ROUND_STATE_FIELDS:
                raise StageMessageError(f"saved round state has fields {sorted(s) if isinstance(s, dict) else s!r}, "
                                        f"expected {sorted(_ROUND_STATE_FIELDS)}")
            if s["v"] != ROUND_STATE_VERSION or s["done"] not in STAGES:
                raise StageMessageError(f"saved round state has version {s['v']!r} or stage {s['done']!r}")
            if not all(type(s[k]) is int and s[k] >= 0 for k in ("round", "length", "records")) \
                    or not isinstance(s["privacy"], dict) or not isinstance(s["history"], str):
                raise StageMessageError("saved round state: round, length and records must be counts, privacy "
                                        "an object and history a digest")
            levels = np.frombuffer(base64.b64decode(s["levels"], validate=True), dtype="<u4").astype(np.uint32)
            if levels.shape != (s["length"],):
                raise StageMessageError(f"saved round state holds {levels.shape[0]} input levels for length {s['length']}")
            return cls(s["round"], s["done"], bytes.fromhex(s["open"]), bytes.fromhex(s["seed"]), s["length"],
                       s["client"].encode("utf-8"), levels, s["records"], s["privacy"], s["history"])
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            if isinstance(exc, StageMessageError):
                raise
            raise StageMessageError(f"saved round state is malformed: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class _Submitted:
    """A one-shot (HE) round whose ``encrypt`` request this hospital answered: only the
    round is kept, so a replayed request cannot make it train and spend ε again."""

    round: int

    def to_bytes(self) -> bytes:
        return canonical_bytes({"v": ROUND_STATE_VERSION, "round": self.round, "done": HE_STAGES[-1]})

    @classmethod
    def from_bytes(cls, data: bytes) -> _Submitted:
        try:
            s = json.loads(data)
            if set(s) != {"v", "round", "done"} or s["v"] != ROUND_STATE_VERSION or s["done"] not in HE_STAGES \
                    or isinstance(s["round"], bool) or not isinstance(s["round"], int):
                raise StageMessageError(f"saved one-shot round state {sorted(s)} is not a version "
                                        f"{ROUND_STATE_VERSION} record of a submitted round")
            return cls(s["round"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, StageMessageError):
                raise
            raise StageMessageError(f"saved round state is malformed: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class RoundEnded:
    """A masking round this hospital answered to its end, and the keys it made and
    advertised then for the next round (:class:`~.masking_state.KeysAhead`)."""

    round: int
    keys: KeysAhead

    def to_bytes(self) -> bytes:
        return canonical_bytes({"v": ROUND_STATE_VERSION, "round": self.round, "done": STAGES[-1],
                                "ahead": self.keys.to_state()})

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundEnded:
        try:
            s = json.loads(data)
            if set(s) != {"v", "round", "done", "ahead"} or s["v"] != ROUND_STATE_VERSION \
                    or isinstance(s["round"], bool) or not isinstance(s["round"], int):
                raise StageMessageError(f"saved state of an ended round {sorted(s)} is not a version "
                                        f"{ROUND_STATE_VERSION} record")
            keys = KeysAhead.from_state(s["ahead"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, StageMessageError):
                raise
            raise StageMessageError(f"saved round state is malformed: {type(exc).__name__}: {exc}") from exc
        if keys.round_id != s["round"] + 1:
            raise StageMessageError(f"saved keys made ahead are for round {keys.round_id}, not round {s['round'] + 1}")
        return cls(s["round"], keys)


def _saved_state(data: bytes) -> RoundState | _Submitted | RoundEnded:
    """The saved state of the last round this hospital took part in, of any kind."""
    try:
        done = json.loads(data).get("done")
    except (TypeError, ValueError, AttributeError) as exc:
        raise StageMessageError(f"saved round state is malformed: {type(exc).__name__}: {exc}") from exc
    if done in HE_STAGES:
        return _Submitted.from_bytes(data)
    return RoundEnded.from_bytes(data) if done == STAGES[-1] else RoundState.from_bytes(data)


class Hospital:
    """One federation client on its own machine."""

    def __init__(self, *, raw_key: bytes, registry: Registry, data: Callable[[], Split], history_path: Path,
                 ledger: Callable[[], tuple[str | None, int]] | None = None) -> None:
        """``data`` loads the records when first needed (only the stages that open a round train);
        ``ledger``, when the hospital syncs one, gives its current model CID and last round."""
        key = Ed25519PrivateKey.from_private_bytes(raw_key)
        public = key.public_key().public_bytes_raw()
        names = [c for c in registry.clients if registry.key(c).public_bytes() == public]
        if len(names) != 1:
            raise HospitalConfigError(f"the identity key is not registered in federation {registry.federation_id}")
        self.name = names[0]
        self._key = key
        self.identity = SigningIdentity.from_private_bytes(self.name, raw_key)
        self.registry = registry
        self._load_data = data
        self.history_path = Path(history_path)
        self.participation_path = self.history_path.with_name(PARTICIPATION_FILE)
        self._ledger = ledger
        self._verified_opening: tuple[bytes, Entry] | None = None
        self._planned_for: tuple[Entry, tuple[SpendRecord, DistributedPlan | None]] | None = None
        """The last opening :meth:`_planned` checked, and its answer (history unchanged since)."""

    @cached_property
    def data(self) -> Split:
        return self._load_data()

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> Hospital:
        """Load the hospital named by a SuperNode's node config (see the module docstring)."""
        folder = Path(_config(node_config, "hospital-dir", str))
        key_path = folder / IDENTITY_FILE
        try:
            if key_path.stat().st_mode & 0o077:
                raise HospitalConfigError(f"{key_path} is readable by others; chmod 600 {key_path}")
            raw_key = key_path.read_bytes()
            genesis = (folder / GENESIS_FILE).read_bytes()
        except OSError as exc:
            raise HospitalConfigError(f"hospital-dir {folder}: {exc}") from exc
        if len(raw_key) != 32:
            raise HospitalConfigError(f"{key_path} must hold a raw 32-byte Ed25519 seed, has {len(raw_key)} bytes")
        registry = Registry.from_genesis(genesis, where=str(folder / GENESIS_FILE))
        history = folder / HISTORY_FILE
        ledger: Callable[[], tuple[str | None, int]] | None = None
        if "ledger-dir" in node_config:
            replica = Path(_config(node_config, "ledger-dir", str))
            ledger = partial(ledger_position, replica)
        if "partition-id" in node_config:
            settings = registry.settings
            partitions = _config(node_config, "num-partitions", int)
            pid = _config(node_config, "partition-id", int)
            if partitions != settings.n_clients or not 0 <= pid < partitions:
                raise HospitalConfigError(f"partition-id {pid} of num-partitions {partitions}: the federation has "
                                          f"{settings.n_clients} partitions (0..{settings.n_clients - 1})")
            hospital: Hospital

            def partition() -> Split:
                from ..data import federation_data

                part = federation_data(settings).clients[pid]
                if hospital.name != part.client_id:
                    raise HospitalConfigError(f"partition {pid} belongs to {part.client_id}, the key to {hospital.name}")
                return part.train

            hospital = cls(raw_key=raw_key, registry=registry, data=partition, history_path=history, ledger=ledger)
            return hospital
        data_path = Path(_config(node_config, "data-path", str)) if "data-path" in node_config else folder / DATA_FILE
        return cls(raw_key=raw_key, registry=registry, history_path=history, ledger=ledger,
                   data=lambda: load_data_file(data_path, n_classes=registry.n_classes()))

    # --- privacy history -------------------------------------------------------------

    def history(self) -> list[SpendRecord]:
        """Every DP training this hospital has released an update of, oldest first."""
        from ..privacy.accounting import privacy_record_from_json
        from ..privacy.errors import PrivacyError

        if not self.history_path.exists():
            return []
        try:
            records = json.loads(self.history_path.read_text())
            return [privacy_record_from_json(r, where=f"{self.history_path} record {i}") for i, r in enumerate(records)]
        except (OSError, ValueError, TypeError, PrivacyError) as exc:
            raise HospitalConfigError(f"{self.history_path}: unreadable privacy history: {exc}") from exc

    def _record_spend(self, record: SpendRecord) -> None:
        self._planned_for = None  # its budget check counted the history before this record
        records = [r.to_json() for r in self.history()] + [record.to_json()]
        write_private(self.history_path, json.dumps(records, indent=1).encode())

    # --- participation record ----------------------------------------------------------

    def participation(self) -> dict[str, Any]:
        """This hospital's own record of rounds: ``opened`` and ``submitted`` round ids, and
        ``refused``: each round opening it refused, with the stage, error name and reason."""
        empty = {"v": PARTICIPATION_VERSION, "opened": [], "submitted": [], "refused": []}
        if not self.participation_path.exists():
            return empty
        try:
            record = json.loads(self.participation_path.read_text())
            if record.get("v") != PARTICIPATION_VERSION or set(record) != set(empty) \
                    or not all(isinstance(r, int) and not isinstance(r, bool)
                               for r in record["opened"] + record["submitted"]) \
                    or not isinstance(record["refused"], list):
                raise ValueError("not a version 1 participation record")
            return record
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise HospitalConfigError(f"{self.participation_path}: unreadable participation record: {exc}") from exc

    def _note(self, **changes: Any) -> None:
        """Add round ids (``opened``, ``submitted``) or a refusal (``refused``) to the record."""
        record = self.participation()
        for key, value in changes.items():
            if key == "refused":
                record[key].append(value)
            elif value not in record[key]:
                record[key] = sorted(record[key] + [value])
        write_private(self.participation_path, json.dumps(record, indent=1).encode())

    def _refuse(self, stage: str, exc: ParticipantRefusal) -> ParticipantRefusal:
        """Record the refusal in the participation record; returns it to raise."""
        self._note(refused={"round": exc.round, "stage": stage, "error": type(exc).__name__, "reason": str(exc)})
        return exc

    def view(self, round_id: int) -> ParticipantView:
        """What this hospital knows beyond genesis when asked to open ``round_id``."""
        record = self.participation()
        model_cid, last_round = self._ledger() if self._ledger is not None else (None, None)
        if self._ledger is None and round_id == 1:  # no ledger copy: round 1 starts from genesis' model
            model_cid = self.registry.initial_model_cid
        return ParticipantView(model_cid=model_cid, last_round=last_round, opened=frozenset(record["opened"]),
                               submitted=frozenset(record["submitted"]))

    # --- stages ----------------------------------------------------------------------

    def handle(self, fields: Mapping[str, Any], state: bytes | None) -> tuple[dict[str, Any], bytes | None]:
        """Answer one stage message; returns the reply fields and the state to keep (None: round over).

        Raises :class:`StageMessageError` for a malformed message, :class:`OutOfOrderMessage`
        for one that does not follow this hospital's last stage, and the protocol's named
        errors (bad signature, too many dropouts, exceeded budget) otherwise.
        """
        stage = fields.get("stage") if isinstance(fields, Mapping) else None
        if stage not in ALL_STAGES:
            raise StageMessageError(f"{self.name}: unknown stage {stage!r}; stages are {', '.join(ALL_STAGES)}")
        fields = check_fields(fields, REQUEST_FIELDS[stage], where=f"{stage} request to {self.name}")
        if fields["federation"] != self.registry.federation_id:
            raise StageMessageError(f"{stage} request to {self.name} is for federation {fields['federation']!r}, "
                                    f"this hospital belongs to {self.registry.federation_id!r}")
        saved = _saved_state(state) if state is not None else None
        if stage in ("advertise", JOIN, "encrypt"):  # the stages that open a round
            if saved is not None and fields["round"] <= saved.round:
                raise OutOfOrderMessage(f"{self.name}: {stage} request for round {fields['round']} after round "
                                        f"{saved.round} was opened here")
            ahead = saved.keys if isinstance(saved, RoundEnded) and saved.keys.round_id == fields["round"] else None
            if stage == "encrypt":
                return self._encrypt(fields)
            if stage == JOIN and ahead is None:
                raise OutOfOrderMessage(f"{self.name}: join request for round {fields['round']}; this hospital made "
                                        f"no keys ahead for that round (it expects advertise)")
            return self._open_masking(fields, stage, ahead)
        if saved is None or isinstance(saved, RoundEnded):
            raise OutOfOrderMessage(f"{self.name}: {stage} request for round {fields['round']}, no round is open here")
        if isinstance(saved, _Submitted):
            raise OutOfOrderMessage(f"{self.name}: {stage} request for round {fields['round']}; this hospital's "
                                    f"part of round {saved.round} (one-shot) ended with its encrypted submission")
        expected = STAGES[STAGES.index(saved.done) + 1] if saved.done != STAGES[-1] else None
        if fields["round"] != saved.round or stage != expected:
            raise OutOfOrderMessage(f"{self.name}: {stage} request for round {fields['round']}; this hospital "
                                    f"expects {expected} of round {saved.round}")
        opened = self._opening(saved.open, saved.round, stage=stage)
        params = self._params(opened, saved.seed, saved.length)
        client = PersistentMaskingClient.from_state(saved.client, params, identity=self._key,
                                                    identity_keys=self._identity_keys(params))
        if stage == "share":
            reply = {"shares": client.share_keys(fields["advertisements"])}
        elif stage == "mask":
            reply = self._mask(client, opened, fields, saved)
        elif stage == "acknowledge":
            self._check_survivors(opened, fields["survivors"])
            reply = {"acknowledgement": client.acknowledge(fields["survivors"])}
        else:  # the round ends here; the next one's keys are made and advertised now (see KeysAhead)
            revealed = client.unmask(fields["signatures"])
            ahead = KeysAhead.make(round_id=saved.round + 1, index=client.index, identity=self._key)
            return ({"unmask": revealed, "advertisement-ahead": ahead.advertisement},
                    RoundEnded(saved.round, ahead).to_bytes())
        return reply, replace(saved, done=stage, client=client.to_state()).to_bytes()

    def _check_survivors(self, opened: Entry, announcement: bytes) -> None:
        """Distributed DP: acknowledge (and so help unmask) only a survivor set of at least
        N - t, the shares whose noise every participant's record counts on. Masking's own
        threshold could unmask fewer; the aggregate rule would refuse that sum only after
        the server had it."""
        dp_plan = self._distributed_plan(opened)
        if dp_plan is None:
            return
        _, survivors = SurvivorSet.decode(announcement)
        participants = len(opened.payload["participants"])
        needed = participants - dp_plan.collusion_threshold
        if len(survivors) < needed:
            raise self._refuse("acknowledge", TooFewSurvivors(
                self.name, opened.round, f"{len(survivors)} survivors of {participants}: a distributed-DP sum needs "
                                         f"N - t = {needed} shares, fewer carry less noise than the records claim"))

    def _opening(self, data: bytes, round_id: int, *, stage: str, check: bool = False) -> Entry:
        """The coordinator's signed round opening, for a protocol that has ``stage``; with
        ``check`` (a stage that opens the round) also what the participant checks
        (:mod:`bfl_private.participant_checks`), each refusal recorded before it is raised."""
        where = f"round opening sent to {self.name}"
        if self._verified_opening is not None and self._verified_opening[0] == data:
            entry = self._verified_opening[1]  # the same bytes this hospital parsed and verified a stage ago
        else:
            try:
                entry = Entry.from_bytes(data, where=where)
                entry.verify(self.registry.coordinator, where=where)
            except VerificationError as exc:
                raise StageMessageError(str(exc)) from exc
            self._verified_opening = (data, entry)
        if entry.type != ROUND_OPEN or entry.round != round_id:
            raise StageMessageError(f"{where}: a {entry.type} entry of round {entry.round}, expected round_open of round {round_id}")
        protocol = entry.payload["protocol"]
        if check:
            try:
                check_protocol(self.name, entry.round, protocol, self.registry.settings)
            except ParticipantRefusal as exc:
                raise self._refuse(stage, exc) from None
        if stage not in PROTOCOL_STAGES.get(protocol, ()):
            runs = [p for p, stages in PROTOCOL_STAGES.items() if stage in stages]
            raise StageMessageError(f"{where}: protocol {protocol!r}, but a {stage} request belongs to a "
                                    f"{' or '.join(runs)} round")
        if self.name not in entry.payload["participants"]:
            raise StageMessageError(f"{where}: {self.name} is not among the participants")
        if check:
            try:
                check_opening(entry, settings=self.registry.settings, participant=self.name,
                              view=self.view(entry.round))
                self._planned(entry)  # the plan checked and within budget, before anything is generated
            except ParticipantRefusal as exc:
                raise self._refuse(stage, exc) from None
        return entry

    def _distributed_plan(self, opened: Entry) -> DistributedPlan | None:
        """The opening's distributed-DP plan (None in local mode), checked as the verifier
        checks it: the federation's mode, noise shares that give the ε genesis allows for
        this cohort, the ring codec. A plan that would have this hospital release a share
        with less noise than promised is refused before anything is computed."""
        from ..ledger.errors import SemanticCheckError
        from ..round_checks import check_distributed_round

        records = {c: info.data_weight for c, info in self.registry.clients.items()}
        try:
            return check_distributed_round(opened, self.registry.settings, records)
        except (SemanticCheckError, TypeError, ValueError, KeyError) as exc:
            raise WeakParameters(self.name, opened.round, f"distributed-DP plan: {exc}") from None

    def _params(self, opened: Entry, seed: bytes, length: int) -> MaskingParams:
        public = opened.payload["protocol_params"]
        try:  # a threshold, if the opening names one, was checked against k's rule when it opened
            return MaskingParams.create(round_id=opened.round, round_seed=seed, clients=opened.payload["participants"],
                                        length=length, neighbours=public.get("neighbours"),
                                        threshold=public.get("threshold"))
        except (ConfigurationError, TypeError) as exc:
            raise StageMessageError(f"round {opened.round} parameters sent to {self.name}: {exc}") from exc

    def _identity_keys(self, params: MaskingParams) -> list[bytes]:
        keys = self.registry.public_keys
        unknown = sorted(set(params.clients) - set(keys))
        if unknown:
            raise StageMessageError(f"clients {unknown} are not registered in federation {self.registry.federation_id}")
        return [keys[c] for c in params.clients]

    def _seed(self, opened: Entry, data: bytes, *, stage: str) -> bytes:
        """The round's seed, derived here from the validators' beacon on exactly ``opened``
        (signatures under the genesis validator keys, a quorum of them): never the server's say."""
        where = "the round beacon"
        try:
            if self.registry.settings.round_randomness != RANDOMNESS_BEACON:
                raise BadBeacon(self.name, opened.round, f"federation {self.registry.federation_id} predates the "
                                                         f"validator beacon; no round seed is taken from the server")
            entry = Entry.from_bytes(data, where=where)
            if entry.round != opened.round:
                raise BadBeacon(self.name, opened.round, f"a beacon of round {entry.round}")
            return round_seed(RoundBeacon.of(entry, where=where), opening=opened, policy=self.registry.beacon,
                              where=where)
        except VerificationError as exc:
            raise self._refuse(stage, BadBeacon(self.name, opened.round, str(exc))) from None
        except BadBeacon as exc:
            raise self._refuse(stage, exc) from None

    def _open_masking(self, fields: Mapping[str, Any], stage: str,
                      ahead: KeysAhead | None) -> tuple[dict[str, Any], bytes]:
        """The first stage of a masking round (``advertise``, or ``join`` on keys made ahead):
        check the opening and beacon, train (DP-SGD, within the budget) and encode the input,
        which stays here until ``mask``; then advertise this round's keys (``advertise``: the
        keys made ahead if there are any, so one round never has two advertisements of this
        hospital), or verify the neighbours' advertisements and send the shares (``join``).
        The shares are made before the training, so a hostile advertisement list costs no
        DP-SGD run."""
        counted = self._history_digest()  # before the budget check reads it: see _mask
        opened = self._opening(fields["round-open"], fields["round"], stage=stage, check=True)
        seed = self._seed(opened, fields["round-beacon"], stage=stage)
        params = self._params(opened, seed, fields["length"])
        index = params.clients.index(self.name)
        if ahead is not None and ahead.index != index:
            if stage == JOIN:
                raise StageMessageError(f"{self.name}: join request for round {opened.round}, whose opening makes it "
                                        f"party {index}; it advertised ahead as party {ahead.index}")
            ahead = None  # an advertisement for another party number verifies under no key in this round
        base = self._base_model(opened, fields["model"], params.length)
        self._check_not_submitted(opened, stage=stage)
        identity_keys = self._identity_keys(params)
        if ahead is None:
            client = PersistentMaskingClient(index, params, identity=self._key, identity_keys=identity_keys)
            advertisement = client.advertise()
        else:
            client = PersistentMaskingClient.with_keys(ahead, params, identity=self._key, identity_keys=identity_keys)
            advertisement = ahead.advertisement
        reply = ({"client": self.name, "advertisement": advertisement} if stage == "advertise"
                 else {"shares": client.share_keys(fields["advertisements"])})
        vector, records, privacy = self._train(opened, base)
        codec = codec_from_json(dict(opened.payload["protocol_params"]["codec"]))
        levels = codec.encode(vector, np.random.default_rng())
        if levels.shape != (params.length,):
            raise HospitalConfigError(f"{self.name}: the training gave {levels.shape[0]} values for a round of "
                                      f"length {params.length}; nothing is kept")
        self._note(opened=opened.round)
        done = "advertise" if stage == "advertise" else "share"
        state = RoundState(opened.round, done, fields["round-open"], seed, fields["length"],
                           client.to_state(), levels, records, privacy.to_json(), counted)
        return reply, state.to_bytes()

    def _check_not_submitted(self, opened: Entry, *, stage: str) -> None:
        """No retraining and no second spend for one round id (say, a round state restored after it ended)."""
        if opened.round in self.participation()["submitted"]:
            raise self._refuse(stage, AlreadySubmitted(self.name, opened.round, f"{self.name} already submitted in "
                                                       f"round {opened.round}: no retraining, no second spend"))

    def _base_model(self, opened: Entry, blob: bytes, length: int | None) -> np.ndarray:
        """The opening's base model (its CID binds it); ``length`` the payload length when known
        (local DP: the update and its weight; distributed DP: the share, one value per parameter)."""
        where = f"base model of round {opened.round} sent to {self.name}"
        if cid_for(blob) != opened.payload["base_model_cid"]:
            raise StageMessageError(f"{where}: CID {cid_for(blob)} is not the opening's {opened.payload['base_model_cid']}")
        try:
            tensors = load_safetensors(blob)
        except (SafetensorError, ValueError) as exc:
            raise StageMessageError(f"{where}: not a safetensors blob: {exc}") from exc
        params = tensors.get(MODEL_TENSOR)
        parameters = None if length is None else length - _payload_extra(opened)
        size = "" if parameters is None else f" of {parameters} values"
        # A distributed-DP model blob also carries the server optimiser's state (see artifacts).
        if set(tensors) not in ({MODEL_TENSOR}, {MODEL_TENSOR, *STATE_TENSORS}) or params is None \
                or params.dtype != np.float32 or params.ndim != 1 \
                or (parameters is not None and params.shape != (parameters,)):
            raise StageMessageError(f"{where}: expected one float32 vector 'params'{size}")
        return params

    def _planned(self, opened: Entry) -> tuple[SpendRecord, DistributedPlan | None]:
        """The one privacy record this hospital may sign in the round ``opened`` (the plan's
        σ with genesis' other parameters, or the round's Skellam record) and the
        distributed-DP plan (None in local DP). Refuses, by name, a record that would take
        the hospital past its lifetime budget (OverBudget), or an opening that plans none."""
        from ..distributed_round import planned_record as distributed_record
        from ..round_checks import planned_record

        if self._planned_for is not None and self._planned_for[0] is opened:
            return self._planned_for[1]
        settings = self.registry.settings
        dp_plan = self._distributed_plan(opened)
        sigma = opened.payload["privacy_plan"].get("noise_multipliers", {}).get(self.name)
        planned: SpendRecord
        if dp_plan is not None:
            planned = distributed_record(settings, dp_plan, participants=len(opened.payload["participants"]))
        elif isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise StageMessageError(f"round {opened.round} opening plans no noise multiplier for {self.name}")
        else:
            planned = planned_record(settings, noise_multiplier=float(sigma))
        self._check_budget(opened.round, planned, what="planned record")
        self._planned_for = (opened, (planned, dp_plan))
        return planned, dp_plan

    def _check_budget(self, round_id: int, record: SpendRecord, *, what: str) -> None:
        """Refuses (OverBudget) a record that would take this hospital's history past its lifetime budget."""
        from ..privacy.accounting import recorded_epsilon

        history = self.history()
        try:
            projected = recorded_epsilon(history + [record])
        except (ArithmeticError, ValueError) as exc:  # a σ the accountant cannot compose (say 1e-300)
            raise OverBudget(self.name, round_id, f"the {what} cannot be accounted: {exc}") from None
        budget = float(self.registry.clients[self.name].epsilon_budget)
        if projected > budget:
            raise OverBudget(self.name, round_id, f"the {what} would take {self.name} to ε = {projected:.4g} "
                                                  f"(spent {recorded_epsilon(history):.4g}), past its lifetime "
                                                  f"budget {budget:g}")

    def _train(self, opened: Entry, base: np.ndarray) -> tuple[np.ndarray, int, SpendRecord]:
        """This hospital's private input from ``base``, within its lifetime budget.

        Returns the vector every protocol protects (:meth:`_private_input`), the record
        count, and the privacy record it signs: exactly the planned one, whose ε the budget
        check counted (anything else is refused here, before the update leaves)."""
        try:
            planned, dp_plan = self._planned(opened)
        except ParticipantRefusal as exc:
            raise self._refuse("train", exc) from None
        if dp_plan is not None and dp_plan.dimension != base.shape[0]:
            raise self._refuse("train", WeakParameters(
                self.name, opened.round, f"the distributed-DP plan is for dimension {dp_plan.dimension}, the base "
                                         f"model has {base.shape[0]} parameters: the record would be false"))
        from ..round_checks import spend_rule_violation

        vector, record = self._private_input(base, planned, dp_plan)
        violation = spend_rule_violation(record, planned=planned)  # the engine's own rule, applied before sending
        if violation is not None:
            raise HospitalConfigError(f"{self.name}: the training's {violation}; the budget check counted the "
                                      f"planned record, so nothing is sent")
        return vector, len(self.data), record

    def _max_records(self) -> int:
        """The largest registered record count: FedAvg weights are relative to it."""
        return max(c.data_weight for c in self.registry.clients.values())

    def _private_input(self, base: np.ndarray, planned: SpendRecord,
                       dp_plan: DistributedPlan | None) -> tuple[np.ndarray, SpendRecord]:
        """Local DP: DP-SGD at the planned σ and the federation's Poisson rate, and the
        weighted payload with the training's own record. Distributed DP: the clipped,
        rounded gradient sum plus this hospital's Skellam share of the plan
        (:func:`~bfl_private.federation.distributed_share`), with the plan's record."""
        from ..data import ClientData, Split
        from ..federation import Client, distributed_share, train_private

        settings = self.registry.settings
        empty = Split(np.zeros((0, self.data.features.shape[1]), np.float32), np.zeros(0, np.int64))
        local = Client(ClientData(self.name, self.data, empty), n_features=self.data.features.shape[1],
                       n_classes=self.registry.n_classes())
        if dp_plan is not None:
            return distributed_share(local, base, settings.training, dp_plan).delta, planned
        update = train_private(local, base, settings.training, settings.privacy,
                               noise_multiplier=planned.noise_multiplier,  # type: ignore[union-attr]
                               sample_rate=settings.privacy.sample_rate)
        if update.privacy is None:
            raise HospitalConfigError(f"{self.name}: DP-SGD returned no privacy record; nothing is sent")
        vector = weighted_payload(update.delta, records=len(self.data), max_records=self._max_records(),
                                  bound=settings.training.update_bound)
        return vector, update.privacy

    def _submit(self, opened: Entry, blob: bytes, records: int, privacy: SpendRecord) -> bytes:
        """Sign the submission naming ``blob``, and count its ε as spent: the update leaves now."""
        submission = Entry.create(self.identity, SUBMISSION, opened.round, Submission(
            client=self.name, blob_cid=cid_for(blob), data_weight=records, privacy=privacy.to_json()).to_json())
        self._record_spend(privacy)
        self._note(opened=opened.round, submitted=opened.round)
        return submission.to_bytes()

    def _mask(self, client: PersistentMaskingClient, opened: Entry, fields: Mapping[str, Any],
              saved: RoundState) -> dict[str, Any]:
        """Mask the input trained at ``advertise`` and sign the submission: the update leaves now.

        The budget check counted the history as it was when the round opened here. If it has
        changed since (another Flower run of this hospital released an update in between:
        each run keeps its own Context.state, the history is one file), the check is run
        again on the history as it is now; under the records lock, so that two processes
        cannot both pass it (or the no-second-submission check) before either records."""
        record = self._saved_record(saved)
        with self._records_lock():
            self._check_not_submitted(opened, stage="mask")
            if self._history_digest() != saved.history:
                try:
                    self._check_budget(opened.round, record, what="record trained when the round opened")
                except ParticipantRefusal as exc:
                    raise self._refuse("mask", exc) from None
            frame = bytes(client.mask_input(saved.levels, fields["delivery"]))
            blob = encode_submission(MaskedInput.from_bytes(frame).vector)
            return {"masked-input": frame, "submission": self._submit(opened, blob, saved.records, record)}

    def _history_digest(self) -> str:
        """SHA-256 of the privacy history file as it is now ('' before the first spend)."""
        try:
            return hashlib.sha256(self.history_path.read_bytes()).hexdigest()
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise HospitalConfigError(f"{self.history_path}: unreadable privacy history: {exc}") from exc

    @contextmanager
    def _records_lock(self) -> Iterator[None]:
        """An exclusive lock on this hospital's records (its folder's lock file), held from a
        budget or submission check to the record of the spend, across processes."""
        fd = os.open(self.history_path.parent / RECORDS_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _saved_record(self, saved: RoundState) -> SpendRecord:
        """The privacy record of the training at ``advertise``, checked there against the
        planned one the budget check counted (re-checking it here would load the accountant
        in a stage that otherwise needs none); the saved state is this hospital's own."""
        from ..privacy.accounting import privacy_record_from_json
        from ..privacy.errors import PrivacyError

        try:
            return privacy_record_from_json(saved.privacy, where=f"saved round state of {self.name}")
        except PrivacyError as exc:
            raise StageMessageError(str(exc)) from exc

    def _encrypt(self, fields: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """A one-shot HE round: check the key material, train, encrypt, sign: under the records
        lock, so that the budget check and the spend it allows are one step across processes."""
        with self._records_lock():
            opened = self._opening(fields["round-open"], fields["round"], stage="encrypt", check=True)
            if self.registry.settings.round_randomness == RANDOMNESS_BEACON:
                # No seed is needed, but the validators must have beaconed this very opening: a
                # coordinator cannot show this hospital an opening (a key) they never saw.
                self._seed(opened, fields["round-beacon"], stage="encrypt")
            base = self._base_model(opened, fields["model"], None)
            length = base.shape[0] + _payload_extra(opened)
            protocol = opened.payload["protocol"]
            params = opened.payload["protocol_params"]
            # the key material is checked before training, so a bad message costs no ε
            if protocol == "paillier":
                encrypt = self._paillier_encryptor(params, fields["public-key"], length, round_id=opened.round)
            elif protocol == "ckks":
                encrypt = self._ckks_encryptor(params, fields["public-key"])
            else:  # plain, which genesis allows only when it names plain (participant_checks)
                encrypt = self._plain_encoder(fields["public-key"])
            vector, records, privacy = self._train(opened, base)
            blob = encrypt(vector)
            reply = {"client": self.name, "ciphertext": blob, "submission": self._submit(opened, blob, records, privacy)}
            return reply, _Submitted(opened.round).to_bytes()

    def _paillier_encryptor(self, params: Mapping[str, Any], message: bytes,
                            length: int, *, round_id: int) -> Callable[[np.ndarray], bytes]:
        """The in-process client step under the Paillier public key in ``message``, which
        must be the key the round opening names."""
        from ..protocols.paillier import PackingLayout, encrypt_update, key_id, public_key_from_json

        where = f"Paillier public key sent to {self.name}"
        try:
            key = public_key_from_json(json.loads(message))
        except (ValueError, TypeError, ProtocolError) as exc:  # not JSON, not a key, a wrong fingerprint
            raise PublicKeyMessageError(f"{where}: {type(exc).__name__}: {exc}") from exc
        # The key the opening announces, its size and its proof were checked with the opening
        # (participant_checks); here: the key sent must be that one.
        try:
            named = public_key_from_json(params["public_key"])
            codec = codec_from_json(dict(params["codec"]))
            layout = PackingLayout.for_codec(key_bits=key.n.bit_length(), codec=codec, length=length)
        except (KeyError, TypeError, ValueError, ProtocolError) as exc:
            raise StageMessageError(f"round opening's Paillier parameters sent to {self.name}: {exc}") from exc
        if key.n != named.n:
            raise PublicKeyMessageError(f"{where}: key {key_id(key).hex()[:16]}... is not the key "
                                        f"{key_id(named).hex()[:16]}... that the round opening names")
        return lambda vector: encrypt_update(vector, public_key=key, codec=codec, layout=layout, round_id=round_id,
                                             client=self.name, rng=np.random.default_rng())

    def _plain_encoder(self, message: bytes) -> Callable[[np.ndarray], bytes]:
        """Plain sends the payload in the clear; there is no key to receive."""
        from ..protocols.plain import encode_submission as plain_submission

        if message:
            raise PublicKeyMessageError(f"plain round: {self.name} expects no public key, got {len(message)} bytes")
        return plain_submission

    def _ckks_encryptor(self, params: Mapping[str, Any], message: bytes) -> Callable[[np.ndarray], bytes]:
        """The in-process client step under the CKKS public context in ``message``, which
        must hash to the context the round opening names (checked before TenSEAL parses it)."""
        from ..protocols.ckks import context_id, encrypt_update, load_public_context

        where = f"CKKS public context sent to {self.name}"
        named = params.get("context_sha256")
        if context_id(message).hex() != named:
            raise PublicKeyMessageError(f"{where}: SHA-256 {context_id(message).hex()[:16]}... is not the context "
                                        f"{str(named)[:16]}... that the round opening names")
        try:
            context = load_public_context(message)
            clip = float(params["clip"])
        except (KeyError, TypeError, ValueError, ProtocolError) as exc:
            raise PublicKeyMessageError(f"{where}: {type(exc).__name__}: {exc}") from exc
        return lambda vector: encrypt_update(vector, context=context, public_context=message, clip=clip)
