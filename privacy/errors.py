"""One error tree for the privacy layer.

Every failure is a narrow subclass of :class:`PrivacyError` whose message says what was
wrong and where (which client, which record, which field), so the CLI can print it and
the auditor can name the false claim. Failures are exceptions, never booleans.
"""
from __future__ import annotations

from ..primitives.errors import BflError


class PrivacyError(BflError):
    """Base class of every error raised by ``bfl_private.privacy``."""


class MalformedPrivacyRecord(PrivacyError, ValueError):
    """A privacy record (or its JSON form) with a missing, extra, mistyped or out-of-range field."""


class InvalidDelta(PrivacyError, ValueError):
    """A δ that gives no meaningful guarantee: outside (0, 1) or not below 1/records of the client."""


class ConfigurationError(PrivacyError, ValueError):
    """DP-SGD or planning parameters that cannot be run or accounted as requested."""


class PlanningError(PrivacyError):
    """No noise multiplier in the search range meets the target ε (or history already exceeds it)."""


class BudgetExceeded(PrivacyError):
    """A round that would push a client past its lifetime ε budget; refused before training."""

    def __init__(self, client_id: str, *, spent: float, projected: float, budget: float, others: tuple[str, ...] = ()) -> None:
        self.client_id = client_id
        self.spent = spent
        self.projected = projected
        self.budget = budget
        self.others = others
        message = (
            f"client {client_id!r} would exceed its lifetime privacy budget: spent ε={spent:.6g}, "
            f"after this round ε={projected:.6g}, budget ε={budget:.6g}"
        )
        if others:
            message += f" (also over budget: {', '.join(others)})"
        super().__init__(message)


class EpsilonMismatch(PrivacyError):
    """A claimed cumulative ε that recomputation from the recorded parameters does not reproduce."""
