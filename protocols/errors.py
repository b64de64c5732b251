"""One error tree for every aggregation protocol.

Each failure is a narrow subclass, so callers can tell a malformed peer message from a
round that cannot be completed; messages name what failed and where.
"""
from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by ``bfl_private.protocols``."""


class ConfigurationError(ProtocolError, ValueError):
    """Protocol parameters that cannot work (e.g. sums that would overflow the modulus)."""


class MalformedInput(ProtocolError, ValueError):
    """A vector, message or serialisation that is not what the protocol expects."""


class ReplayedMessage(ProtocolError):
    """A message seen before, or one bound to another round, sender or receiver."""


class BadSignature(ProtocolError):
    """A signed message whose signature does not verify under the claimed key."""


class TooManyDropouts(ProtocolError):
    """Fewer survivors than the threshold: the round cannot be unmasked or decrypted."""


class AggregateMismatch(ProtocolError):
    """A recomputed aggregate differs from the one that was claimed."""
