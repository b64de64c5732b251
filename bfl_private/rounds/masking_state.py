"""A masking client whose state survives between ClientApp processes.

Flower 1.42 runs each message in a fresh ``flwr-clientapp`` process and keeps what a
client must remember in ``Context.state``, held by the hospital's own SuperNode. A
:class:`~bfl_private.protocols.masking.MaskingClient` lives for a whole round (its X25519
keys, its self-mask seed, the shares its neighbours sent it), so between stages it is
written to canonical JSON and read back here. This state is secret: it never leaves the
SuperNode. When the round's last stage has been answered it is dropped, and only the keys
made ahead for the next round (:class:`KeysAhead`) are kept.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..ledger.canonical import canonical_bytes
from ..protocols import keyagreement as ka
from ..protocols import shamir
from ..protocols.masking import MaskingClient, signed_advertisement
from ..protocols.masking_graph import MaskingParams
from ..protocols.masking_messages import KeyAdvertisement
from ..protocols.prg import SEED_BYTES
from .errors import StageMessageError

STATE_VERSION = 1


def _hex(value: Any, size: int | None, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise StageMessageError(f"saved masking state: {what} is not hex") from None
    if size is not None and len(raw) != size:
        raise StageMessageError(f"saved masking state: {what} has {len(raw)} bytes, expected {size}")
    return raw


@dataclass(frozen=True)
class KeysAhead:
    """A hospital's round keys for the next round, made and advertised when it answers the
    last stage of a round (a Flower round then needs no ``advertise`` exchange: see
    :mod:`bfl_private.rounds.stages`). Fresh X25519 keys for that one round, as SecAgg+
    wants; the advertisement names the round and the party number, and no graph or seed,
    so it says nothing about a round that has not opened. Secret: kept in the round state."""

    round_id: int
    index: int
    cipher_key: ka.X25519Key
    mask_key: ka.X25519Key
    advertisement: bytes

    @classmethod
    def make(cls, *, round_id: int, index: int, identity: Ed25519PrivateKey) -> KeysAhead:
        cipher_key, mask_key = ka.X25519Key.generate(), ka.X25519Key.generate()
        advert = signed_advertisement(ka.Signer(identity), round_id=round_id, sender=index,
                                      cipher_key=cipher_key, mask_key=mask_key)
        return cls(round_id, index, cipher_key, mask_key, advert)

    def to_state(self) -> dict[str, Any]:
        return {"round": self.round_id, "index": self.index, "cipher_key": ka.private_bytes(self.cipher_key).hex(),
                "mask_key": ka.private_bytes(self.mask_key).hex(), "advertisement": self.advertisement.hex()}

    @classmethod
    def from_state(cls, state: Any) -> KeysAhead:
        try:
            return cls(int(state["round"]), int(state["index"]),
                       ka.x25519_private_from_bytes(_hex(state["cipher_key"], ka.KEY_BYTES, "cipher key made ahead"),
                                                    what="saved cipher key made ahead"),
                       ka.x25519_private_from_bytes(_hex(state["mask_key"], ka.KEY_BYTES, "mask key made ahead"),
                                                    what="saved mask key made ahead"),
                       _hex(state["advertisement"], None, "advertisement made ahead"))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, StageMessageError):
                raise
            raise StageMessageError(f"saved keys made ahead are malformed: {type(exc).__name__}: {exc}") from exc


class PersistentMaskingClient(MaskingClient):
    """:class:`MaskingClient` plus :meth:`to_state` / :meth:`from_state` (no pickle)."""

    def to_state(self) -> bytes:
        """Everything this client remembers between stages, as canonical JSON bytes."""
        return canonical_bytes({
            "v": STATE_VERSION,
            "index": self.index,
            "cipher_key": ka.private_bytes(self._cipher_key).hex(),
            "mask_key": ka.private_bytes(self._mask_key).hex(),
            "adverts": {str(p): a.to_bytes().hex() for p, a in sorted(self._adverts.items())},
            "cipher_secrets": {str(p): s.hex() for p, s in sorted(self._cipher_secrets.items())},
            "peer_shares": {str(p): [shamir.encode_share(b).hex(), shamir.encode_share(s).hex()]
                            for p, (b, s) in sorted(self._peer_shares.items())},
            "self_seed": None if self._self_seed is None else self._self_seed.hex(),
            "survivors": None if self._survivors is None else [int(s) for s in self._survivors],
            "done": sorted(self._done),
        })

    @classmethod
    def with_keys(cls, keys: KeysAhead, params: MaskingParams, *, identity: Ed25519PrivateKey,
                  identity_keys: Sequence[bytes]) -> PersistentMaskingClient:
        """The client of the round ``keys`` were made for, on those keys, its advertisement
        already sent (the same bytes as ``keys.advertisement``)."""
        if keys.round_id != params.round_id:
            raise StageMessageError(f"keys made ahead for round {keys.round_id} offered in round {params.round_id}")
        client = cls(keys.index, params, identity=identity, identity_keys=identity_keys)
        client._cipher_key, client._mask_key = keys.cipher_key, keys.mask_key
        if client.advertise() != keys.advertisement:  # deterministic: only other keys or another index differ
            raise StageMessageError("saved keys made ahead do not give their own advertisement")
        return client

    @classmethod
    def from_state(cls, data: bytes, params: MaskingParams, *, identity: Ed25519PrivateKey,
                   identity_keys: Sequence[bytes]) -> PersistentMaskingClient:
        """Rebuild the client saved by :meth:`to_state` for the same round parameters."""
        try:
            state = json.loads(data)
            if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
                raise StageMessageError(f"saved masking state has version {state.get('v')!r}, expected {STATE_VERSION}")
            client = cls(int(state["index"]), params, identity=identity, identity_keys=identity_keys)
            client._cipher_key = ka.x25519_private_from_bytes(
                _hex(state["cipher_key"], ka.KEY_BYTES, "cipher key"), what="saved cipher key")
            client._mask_key = ka.x25519_private_from_bytes(
                _hex(state["mask_key"], ka.KEY_BYTES, "mask key"), what="saved mask key")
            client._adverts = {int(p): KeyAdvertisement.from_bytes(_hex(a, None, f"advert of {p}"))
                               for p, a in state["adverts"].items()}
            client._cipher_secrets = {int(p): _hex(s, None, f"cipher secret of {p}")
                                      for p, s in state["cipher_secrets"].items()}
            client._peer_shares = {
                int(p): (shamir.decode_share(_hex(b, shamir.SHARE_BYTES, f"b-share of {p}")),
                         shamir.decode_share(_hex(s, shamir.SHARE_BYTES, f"s-share of {p}")))
                for p, (b, s) in state["peer_shares"].items()
            }
            seed = state["self_seed"]
            client._self_seed = None if seed is None else _hex(seed, SEED_BYTES, "self-mask seed")
            survivors = state["survivors"]
            if survivors is not None:
                client.accept_survivors(np.array(sorted(int(s) for s in survivors), dtype=np.int64))
            client._done = set(state["done"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, StageMessageError):
                raise
            raise StageMessageError(f"saved masking state is malformed: {type(exc).__name__}: {exc}") from exc
        return client
