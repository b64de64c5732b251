"""The demo's hospitals: the participant code a SuperNode runs, each acting from its own folder.

``bfl-private round`` drives one round engine (:class:`~bfl_private.rounds.engine.
RoundEngine`) over the in-process loopback transport (:class:`~bfl_private.rounds.
loopback.LoopbackTransport`) to these hospitals, exactly as a Flower deployment drives it
over Flower messages to SuperNodes: each is a :class:`~bfl_private.rounds.hospital.
Hospital` whose key, privacy history and participation record live in its own folder
under ``parties/`` (touched only while it acts, :meth:`~bfl_private.parties.Party.acting`),
whose data is its partition of the demo dataset, and whose ledger copy is the
federation's. It checks every request itself (participant checks, the beacon, the
budget) and records its own refusals.

Two misbehaving kinds stand in for attackers. Neither trains; both sign the planned privacy
record (the ledger records the claim; it cannot prove noise either way, see the audit
notes) and go through the same receipt checks as an honest hospital's bytes:

* :class:`GarbageHospital` (``round --malicious N``) follows the encoding with garbage
  values: noise far outside the agreed range with its true weight (local DP; a wrong
  weight would get the round refused), or random 31-bit integers (distributed DP). Plain
  refuses it on receipt; masking and HE clip it to ±bound when encoding (they cannot see
  plaintexts), so there it is a bounded bias: the aggregate range rule refuses the round
  when it pushes a coordinate past what the included clients' weights allow, and the
  validators' quality gate judges the model otherwise.
* :class:`ForgingHospital` skips the encoding and sends a :class:`~bfl_private.protocols.
  base.ForgedInput` (any bytes, or values in the protocol's input domain unencoded).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .fedavg import payload_weight
from .rounds.hospital import HISTORY_FILE, Hospital, Registry, write_private
from .parties import LocalHospital, party_folder
from .protocols.base import ForgedInput
from .protocols.errors import ProtocolError
from .protocols.masking import encode_submission, forged_levels
from .protocols.masking_messages import MaskedInput

if TYPE_CHECKING:
    from .coordinator import Federation
    from .distributed_round import DistributedPlan
    from .rounds.hospital import RoundState
    from .rounds.masking_state import PersistentMaskingClient
    from .ledger.entries import Entry
    from .privacy.accounting import SpendRecord


class SimulatedHospital(Hospital):
    """An honest demo hospital: :class:`Hospital`, acting as its party while it answers."""

    def __init__(self, federation: Federation, party: LocalHospital, *, registry: Registry,
                 on_train: Callable[[str], None]) -> None:
        with party.acting():
            raw_key = party.identity.private_bytes()
        ledger = federation.ledger
        super().__init__(raw_key=raw_key, registry=registry, data=lambda: federation.clients[party.name].data.train,
                         history_path=party_folder(federation.directory, party.name) / HISTORY_FILE,
                         ledger=lambda: (ledger.state.model_cid, ledger.state.last_round))
        self.party = party
        self._on_train = on_train

    def handle(self, fields: Mapping[str, Any], state: bytes | None) -> tuple[dict[str, Any], bytes | None]:
        with self.party.acting():
            return super().handle(fields, state)

    def _train(self, opened: Entry, base: np.ndarray) -> tuple[np.ndarray, int, SpendRecord]:
        self._on_train(self.name)
        return super()._train(opened, base)


class GarbageHospital(SimulatedHospital):
    """Follows the encoding with garbage values (see the module docstring)."""

    def __init__(self, *args: Any, rng: np.random.Generator, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rng = rng

    def _private_input(self, base: np.ndarray, planned: SpendRecord,
                       dp_plan: DistributedPlan | None) -> tuple[np.ndarray, SpendRecord]:
        if dp_plan is not None:
            return self._rng.integers(-(1 << 30), 1 << 30, size=base.shape[0]).astype(np.float64), planned
        bound = self.registry.settings.training.update_bound
        garbage = self._rng.uniform(-1000 * bound, 1000 * bound, size=base.shape[0] + 1).astype(np.float32)
        garbage[-1] = payload_weight(len(self.data), max_records=self._max_records())
        return garbage, planned


class ForgingHospital(SimulatedHospital):
    """Sends its :class:`ForgedInput` in place of its protected update, after an honest
    hospital's checks of the request; signs a submission naming what it sent."""

    def __init__(self, *args: Any, forgery: ForgedInput, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.forgery = forgery

    def _private_input(self, base: np.ndarray, planned: SpendRecord,
                       dp_plan: DistributedPlan | None) -> tuple[np.ndarray, SpendRecord]:
        # replaced by the forgery; nothing is trained (the payload's length: local DP adds the weight)
        return np.zeros(base.shape[0] + (1 if dp_plan is None else 0), np.float64), planned

    def _mask(self, client: PersistentMaskingClient, opened: Entry, fields: Mapping[str, Any],
              saved: RoundState) -> dict[str, Any]:
        records, privacy = saved.records, self._saved_record(saved)
        if self.forgery.message is not None:
            frame = self.forgery.message
        else:  # its own masks over levels it never encoded
            frame = bytes(client.mask_input(forged_levels(self.forgery, client.params.length), fields["delivery"]))
        try:
            blob = encode_submission(MaskedInput.from_bytes(frame).vector)
        except ProtocolError:
            blob = frame  # bytes no masked input parses from: it signs the bytes themselves
        return {"masked-input": frame, "submission": self._submit(opened, blob, records, privacy)}

    def _paillier_encryptor(self, params: Mapping[str, Any], message: bytes,
                            length: int, *, round_id: int) -> Callable[[np.ndarray], bytes]:
        from .protocols.paillier import forged_submission, public_key_from_json

        super()._paillier_encryptor(params, message, length, round_id=round_id)  # the key an honest one accepts
        key = public_key_from_json(json.loads(message))
        return lambda vector: forged_submission(self.forgery, public_key=key, round_id=round_id, client=self.name)

    def _ckks_encryptor(self, params: Mapping[str, Any], message: bytes) -> Callable[[np.ndarray], bytes]:
        from .protocols.ckks import forged_submission, load_public_context

        super()._ckks_encryptor(params, message)
        context = load_public_context(message)
        return lambda vector: forged_submission(self.forgery, context=context, public_context=message)

    def _plain_encoder(self, message: bytes) -> Callable[[np.ndarray], bytes]:
        from .protocols.plain import forged_submission

        super()._plain_encoder(message)
        return lambda vector: forged_submission(self.forgery)


@cache
def _registry(genesis: bytes) -> Registry:
    """The registry the demo's hospitals read from genesis (immutable: parsed once per process)."""
    return Registry.from_genesis(genesis, where="the federation's genesis")


def simulated_hospitals(federation: Federation, participants: list[str], *, faulty: set[str],
                        forged: Mapping[str, ForgedInput], rng: np.random.Generator,
                        on_train: Callable[[str], None]) -> dict[int, Hospital]:
    """One demo hospital per participant, by node number: ``faulty`` ones send garbage,
    ``forged`` ones their forgery, the others are honest.

    A hospital whose folder holds no privacy history yet (a federation whose rounds ran
    before hospitals kept their own) starts from what the ledger records of its spend, so
    its budget check counts every round it took part in."""
    registry = _registry(federation.ledger.genesis().to_bytes())
    hospitals: dict[int, Hospital] = {}
    for node, name in enumerate(participants):
        party = federation.hospitals[name]
        common = {"registry": registry, "on_train": on_train}
        hospital: SimulatedHospital
        if name in forged:
            hospital = ForgingHospital(federation, party, forgery=forged[name], **common)
        elif name in faulty:
            hospital = GarbageHospital(federation, party, rng=rng, **common)
        else:
            hospital = SimulatedHospital(federation, party, **common)
        with party.acting():
            if not hospital.history_path.exists() and (history := federation.histories().get(name)):
                write_private(hospital.history_path, json.dumps([r.to_json() for r in history], indent=1).encode())
        hospitals[node] = hospital
    return hospitals
