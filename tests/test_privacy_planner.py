"""The planner never overshoots its target, lands close to it, and respects history."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bfl_private.privacy.accounting import PrivacyRecord, cumulative_epsilon
from bfl_private.privacy.errors import ConfigurationError, PlanningError
from bfl_private.privacy.planner import MIN_NOISE_MULTIPLIER, plan_noise_multiplier, planned_records

DELTA = 1e-5


def spend(sigma: float, *, q: float, steps: int, rounds: int, history=(), **kwargs) -> float:
    records = list(history) + planned_records(
        noise_multiplier=sigma, sample_rate=q, steps_per_round=steps, rounds=rounds, delta=DELTA, **kwargs
    )
    acc = kwargs.get("accountant", "pld")
    return cumulative_epsilon(records, delta=DELTA, accountant=acc)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.floats(0.2, 8.0),
    q=st.sampled_from([1.0, 0.5, 1 / 3, 0.25, 0.2, 0.1, 0.05, 0.02]),
    steps=st.integers(1, 40),
    rounds=st.integers(1, 12),
    spent_fraction=st.sampled_from([0.0, 0.0, 0.3, 0.7]),
)
def test_plan_never_overshoots_and_lands_within_one_percent(target, q, steps, rounds, spent_fraction) -> None:
    history = []
    if spent_fraction:
        # A history that already spent about spent_fraction of the target.
        sigma0 = plan_noise_multiplier(target_epsilon=target * spent_fraction, delta=DELTA, sample_rate=0.2, steps_per_round=5, rounds=2)
        history = planned_records(noise_multiplier=sigma0, sample_rate=0.2, steps_per_round=5, rounds=2, delta=DELTA)
    sigma = plan_noise_multiplier(
        target_epsilon=target, delta=DELTA, sample_rate=q, steps_per_round=steps, rounds=rounds, history=history
    )
    achieved = spend(sigma, q=q, steps=steps, rounds=rounds, history=history)
    assert achieved <= target
    if sigma > MIN_NOISE_MULTIPLIER:  # otherwise even the least noise we allow stays under target
        assert achieved >= 0.99 * target
        assert spend(sigma * 0.99, q=q, steps=steps, rounds=rounds, history=history) > target


def test_rdp_plan_never_overshoots() -> None:
    kwargs = {"accountant": "rdp"}
    sigma = plan_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=0.2, steps_per_round=10, rounds=5, **kwargs)
    achieved = spend(sigma, q=0.2, steps=10, rounds=5, **kwargs)
    assert 0.99 <= achieved <= 1.0
    pld_sigma = plan_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=0.2, steps_per_round=10, rounds=5)
    assert pld_sigma < sigma  # the tighter accountant needs less noise for the same ε


def test_more_history_needs_more_noise() -> None:
    fresh = plan_noise_multiplier(target_epsilon=2.0, delta=DELTA, sample_rate=0.25, steps_per_round=8, rounds=3)
    history = [PrivacyRecord(noise_multiplier=4.0, sample_rate=0.25, steps=20, clipping_norm=1.0)]
    later = plan_noise_multiplier(target_epsilon=2.0, delta=DELTA, sample_rate=0.25, steps_per_round=8, rounds=3, history=history)
    assert later > fresh


def test_unreachable_targets_are_refused() -> None:
    history = [PrivacyRecord(noise_multiplier=1.0, sample_rate=0.5, steps=50, clipping_norm=1.0)]
    with pytest.raises(PlanningError, match="history already spends"):
        plan_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=0.2, steps_per_round=5, rounds=1, history=history)
    with pytest.raises(PlanningError, match="even σ=1000"):
        plan_noise_multiplier(target_epsilon=1e-4, delta=DELTA, sample_rate=1.0, steps_per_round=1000, rounds=10)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon must be a positive finite"),
        ({"target_epsilon": float("inf")}, "target_epsilon must be a positive finite"),
        ({"rounds": 0}, "rounds must be an integer >= 1"),
    ],
)
def test_bad_plan_arguments(kwargs, error) -> None:
    base = {"target_epsilon": 1.0, "delta": DELTA, "sample_rate": 0.2, "steps_per_round": 5, "rounds": 2}
    with pytest.raises(ConfigurationError, match=error):
        plan_noise_multiplier(**{**base, **kwargs})
