"""One error tree for every aggregation protocol.

Each failure is a narrow subclass, so callers can tell a malformed peer message from a
round that cannot be completed; messages name what failed and where.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..primitives.errors import BflError


class ProtocolError(BflError):
    """Base class of every error raised by ``bfl_private.protocols``."""


class ConfigurationError(ProtocolError, ValueError):
    """Protocol parameters that cannot work (e.g. sums that would overflow the modulus)."""


class MalformedInput(ProtocolError, ValueError):
    """A vector, message or serialisation that is not what the protocol expects."""


class ReplayedMessage(ProtocolError):
    """A message seen before, or one bound to another round, sender or receiver."""


class BadSignature(ProtocolError):
    """A signed message whose signature does not verify under the claimed key."""


class RoundAbort(ProtocolError):
    """A round that cannot produce a sum: the caller records an abort, not a traceback.

    ``received`` holds the protected inputs (as committed blobs) that had arrived when the
    round stopped: each sender has spent privacy whatever follows, so the abort records it.
    ``stage`` names where the round stopped.
    """

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.received: dict[str, bytes] = {}


class TooManyDropouts(RoundAbort):
    """Fewer survivors than the threshold: the round cannot be unmasked or decrypted.

    The optional keyword-only fields let a caller record the abort without parsing the
    message: the stage that failed, how many parties were needed and available, and
    which clients had stopped answering from which stage.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        required: int | None = None,
        available: int | None = None,
        dropped: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, stage=stage)
        self.required = required
        self.available = available
        self.dropped: Mapping[str, str] = dict(dropped or {})


class InvalidAggregate(RoundAbort):
    """The decoded sum is not a sum of valid inputs: some client skipped the encoder.

    Out-of-range slot or level sums (masking, Paillier), a CKKS total past what the
    included clients' clipped inputs can reach, or a total weight other than the included
    clients' registered record counts. Secure aggregation hides which client it was, so
    the round is refused as a whole and the abort records why.
    """


class AggregateMismatch(ProtocolError):
    """A recomputed aggregate differs from the one that was claimed."""


class WrongKey(MalformedInput):
    """A ciphertext, key or context made under another key than the round's (HE modes)."""


class SlotOverflow(ProtocolError, ValueError):
    """A packed plaintext whose slots would overflow their width: refused, never wrapped."""


class HeadroomExceeded(ConfigurationError):
    """More summands than the packing's headroom bits (or CKKS modulus) can absorb."""


class DecryptionProofError(AggregateMismatch):
    """A published decryption (plaintext m, randomness r) does not open its ciphertext."""


class BadShare(AggregateMismatch, RoundAbort):
    """A secret reconstructed from revealed Shamir shares fails its owner's check.

    Raised when a survivor's self-mask seed does not hash to the commitment its owner
    signed (or a dropped client's mask key does not match its advertised public key)
    and no ``threshold`` of the revealed shares tried yield a secret that passes (bad
    shares that could be skipped do not raise). ``client`` names the owner of the secret.
    """

    def __init__(self, message: str, *, client: str) -> None:
        RoundAbort.__init__(self, message, stage="unmask")
        self.client = client
