"""Lifetime privacy budgets and the δ rule, checked before any training.

Each client has a lifetime ε budget fixed when the federation is created. Before a
round trains, every participant's projected spend, its whole history plus the records
the round will write, composed exactly by
:func:`~bfl_private.privacy.accounting.cumulative_epsilon`, is compared with its
budget. The strict path (:func:`check_round_budgets`) refuses the round with
:class:`BudgetExceeded`; the lenient path (:func:`split_by_budget`, for
``--skip-exhausted``) leaves the clients that would overspend out of the round.

δ must be below 1/n for a client with n records: at δ ≥ 1/n a mechanism that publishes
one record at random would satisfy (0, δ)-DP, so the guarantee says nothing.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .accounting import DEFAULT_DELTA, PrivacyRecord, check_delta, recorded_epsilon
from .errors import BudgetExceeded, InvalidDelta


def validate_delta(delta: float = DEFAULT_DELTA, *, n_records: int, client_id: str) -> float:
    """``delta`` if it is in (0, 1) and below 1/``n_records``; else :class:`InvalidDelta` naming the client."""
    delta = check_delta(delta, where=f"client {client_id!r}")
    if isinstance(n_records, bool) or not isinstance(n_records, int) or n_records < 1:
        raise InvalidDelta(f"client {client_id!r}: number of records must be a positive integer, got {n_records!r}")
    if delta >= 1.0 / n_records:
        raise InvalidDelta(
            f"client {client_id!r}: delta={delta:g} is not below 1/records = 1/{n_records} = {1.0 / n_records:.6g}; "
            f"a delta that large permits publishing a record outright"
        )
    return delta


@dataclass(frozen=True)
class Spend:
    """One client's ε before and after a planned round, against its lifetime budget."""

    client_id: str
    spent: float
    projected: float
    budget: float

    @property
    def exceeds(self) -> bool:
        return self.projected > self.budget

    def error(self, others: tuple[str, ...] = ()) -> BudgetExceeded:
        return BudgetExceeded(self.client_id, spent=self.spent, projected=self.projected, budget=self.budget, others=others)


def project_spend(
    client_id: str,
    *,
    history: Sequence[PrivacyRecord],
    planned: Sequence[PrivacyRecord],
    budget: float,
) -> Spend:
    """ε so far and after ``planned``, each computed as the records themselves specify."""
    if not (isinstance(budget, (int, float)) and 0 < budget < float("inf")):
        raise ValueError(f"client {client_id!r}: lifetime budget must be a positive finite ε, got {budget!r}")
    return Spend(
        client_id=client_id,
        spent=recorded_epsilon(list(history)),
        projected=recorded_epsilon(list(history) + list(planned)),
        budget=float(budget),
    )


def split_by_budget(
    planned: Mapping[str, Sequence[PrivacyRecord]],
    *,
    histories: Mapping[str, Sequence[PrivacyRecord]],
    budgets: Mapping[str, float],
) -> tuple[dict[str, Spend], dict[str, Spend]]:
    """(admitted, left_out): participants whose projected spend fits their budget, and those it does not.

    ``planned`` maps each participant to the records its round will write; a client with
    no history maps to ``()`` or is absent from ``histories``. A participant without a
    budget is an error (:class:`KeyError` naming it), never silently unlimited.
    """
    admitted: dict[str, Spend] = {}
    left_out: dict[str, Spend] = {}
    for client_id, records in planned.items():
        if client_id not in budgets:
            raise KeyError(f"client {client_id!r} has no lifetime privacy budget")
        spend = project_spend(client_id, history=histories.get(client_id, ()), planned=records, budget=budgets[client_id])
        (left_out if spend.exceeds else admitted)[client_id] = spend
    return admitted, left_out


def check_round_budgets(
    planned: Mapping[str, Sequence[PrivacyRecord]],
    *,
    histories: Mapping[str, Sequence[PrivacyRecord]],
    budgets: Mapping[str, float],
) -> dict[str, Spend]:
    """Every participant's :class:`Spend`, or :class:`BudgetExceeded` for the first that would overspend.

    Call it before training: a refused round has spent nothing. The error names the
    first offending client (in ``planned`` order) with its spend and budget, and lists
    any others.
    """
    admitted, left_out = split_by_budget(planned, histories=histories, budgets=budgets)
    if left_out:
        first, *others = left_out.values()
        raise first.error(tuple(s.client_id for s in others))
    return admitted
