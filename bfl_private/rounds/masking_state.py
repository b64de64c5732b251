"""A masking client whose state survives between ClientApp processes.

Flower 1.42 runs each message in a fresh ``flwr-clientapp`` process and keeps what a
client must remember in ``Context.state``, held by the hospital's own SuperNode. A
:class:`~bfl_private.protocols.masking.MaskingClient` lives for a whole round (its X25519
keys, its self-mask seed, the shares its neighbours sent it), so between stages it is
written to canonical JSON and read back here. This state is secret: it never leaves the
SuperNode, and it is dropped when the round's last stage has been answered.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..ledger.canonical import canonical_bytes
from ..protocols import keyagreement as ka
from ..protocols import shamir
from ..protocols.masking import MaskingClient
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
