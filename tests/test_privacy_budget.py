"""Lifetime budgets refuse a round before training; δ must stay below 1/records."""
from __future__ import annotations

import pytest

from bfl_private.privacy.accounting import cumulative_epsilon
from bfl_private.privacy.budget import check_round_budgets, split_by_budget, validate_delta
from bfl_private.privacy.errors import BudgetExceeded, InvalidDelta
from bfl_private.privacy.planner import planned_records

DELTA = 1e-5


def rounds(sigma: float, n: int = 1) -> list:
    return planned_records(noise_multiplier=sigma, sample_rate=0.2, steps_per_round=10, rounds=n, delta=DELTA)


HISTORIES = {"hospital-00": rounds(3.0, 4), "hospital-01": rounds(3.0, 1), "hospital-02": []}
BUDGETS = {"hospital-00": 2.0, "hospital-01": 2.0, "hospital-02": 2.0}


def test_round_within_budget_reports_every_spend() -> None:
    planned = {cid: rounds(6.0) for cid in BUDGETS}
    spends = check_round_budgets(planned, histories=HISTORIES, budgets=BUDGETS)
    for cid, spend in spends.items():
        assert spend.spent == cumulative_epsilon(HISTORIES[cid], delta=DELTA)
        assert spend.projected == cumulative_epsilon(HISTORIES[cid] + planned[cid], delta=DELTA)
        assert spend.spent < spend.projected <= spend.budget
    assert spends["hospital-02"].spent == 0.0


def test_round_over_budget_is_refused_naming_client_spend_and_budget() -> None:
    planned = {cid: rounds(3.0, 2) for cid in BUDGETS}
    projected = cumulative_epsilon(HISTORIES["hospital-00"] + planned["hospital-00"], delta=DELTA)
    assert projected > 2.0 > cumulative_epsilon(HISTORIES["hospital-02"] + planned["hospital-02"], delta=DELTA)
    with pytest.raises(BudgetExceeded) as info:
        check_round_budgets(planned, histories=HISTORIES, budgets=BUDGETS)
    error = info.value
    assert error.client_id == "hospital-00" and error.budget == 2.0 and error.projected == projected
    assert error.spent == cumulative_epsilon(HISTORIES["hospital-00"], delta=DELTA)
    assert "'hospital-00'" in str(error) and f"{error.spent:.6g}" in str(error) and "budget ε=2" in str(error)


def test_skip_exhausted_leaves_out_only_the_overspending_clients() -> None:
    planned = {cid: rounds(3.0, 2) for cid in BUDGETS}
    admitted, left_out = split_by_budget(planned, histories=HISTORIES, budgets=BUDGETS)
    assert set(left_out) == {"hospital-00"} and set(admitted) == {"hospital-01", "hospital-02"}
    assert all(s.projected <= s.budget for s in admitted.values())


def test_every_offender_is_listed() -> None:
    planned = {cid: rounds(1.0, 3) for cid in BUDGETS}
    with pytest.raises(BudgetExceeded, match=r"also over budget: hospital-01, hospital-02"):
        check_round_budgets(planned, histories=HISTORIES, budgets=BUDGETS)


def test_participant_without_budget_is_an_error() -> None:
    with pytest.raises(KeyError, match="hospital-09"):
        check_round_budgets({"hospital-09": rounds(6.0)}, histories={}, budgets=BUDGETS)
    with pytest.raises(ValueError, match="lifetime budget must be a positive finite"):
        check_round_budgets({"hospital-00": rounds(6.0)}, histories={}, budgets={"hospital-00": float("nan")})


def test_delta_rule() -> None:
    assert validate_delta(n_records=40, client_id="hospital-03") == 1e-5
    assert validate_delta(0.01, n_records=99, client_id="hospital-03") == 0.01
    with pytest.raises(InvalidDelta, match=r"client 'hospital-03': delta=0.01 is not below 1/records = 1/100"):
        validate_delta(0.01, n_records=100, client_id="hospital-03")
    with pytest.raises(InvalidDelta, match="client 'hospital-03': delta must be a number in"):
        validate_delta(0.0, n_records=100, client_id="hospital-03")
    with pytest.raises(InvalidDelta, match="number of records must be a positive integer"):
        validate_delta(1e-5, n_records=0, client_id="hospital-03")
