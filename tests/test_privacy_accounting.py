"""Cumulative ε: against Opacus's PRV accountant, closed forms, composition, and record parsing."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from dp_accounting.pld import pld_privacy_accountant
from scipy import optimize
from scipy.stats import norm

from bfl_private.privacy.accounting import (
    DEFAULT_PLD_DISCRETIZATION,
    HistorySummary,
    PrivacyRecord,
    cumulative_epsilon,
    finish_epsilons,
    history_event,
    recorded_epsilon,
    start_epsilons,
    verify_claim,
    verify_summary_claim,
)
from bfl_private.privacy.errors import EpsilonMismatch, InvalidDelta, MalformedPrivacyRecord

DELTA = 1e-5


def record(sigma: float, q: float, steps: int, **kwargs) -> PrivacyRecord:
    return PrivacyRecord(noise_multiplier=sigma, sample_rate=q, steps=steps, clipping_norm=1.0, **kwargs)


def test_accounting_imports_no_torch() -> None:
    code = "import sys, bfl_private.privacy.accounting, bfl_private.privacy.budget, bfl_private.privacy.planner; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("q", "sigma", "steps"),
    [(0.01, 1.0, 1000), (0.05, 1.5, 300), (0.1, 2.0, 100), (0.2, 4.0, 200), (0.25, 8.0, 50), (1 / 3, 1.2, 30), (0.5, 5.0, 20)],
)
def test_pld_agrees_with_opacus_prv(q: float, sigma: float, steps: int) -> None:
    from opacus.accountants import PRVAccountant

    prv = PRVAccountant()
    prv.history = [(sigma, q, steps)]
    expected = prv.get_epsilon(DELTA, eps_error=0.01)
    actual = cumulative_epsilon([record(sigma, q, steps)], delta=DELTA)
    assert actual == pytest.approx(expected, rel=0.02)


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """ε of the Gaussian mechanism with sensitivity 1 (Balle & Wang 2018, Theorem 8), solved for δ."""

    def delta_of(eps: float) -> float:
        return norm.cdf(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * norm.cdf(-1 / (2 * sigma) - eps * sigma)

    return optimize.brentq(lambda eps: delta_of(eps) - delta, 1e-9, 100.0, xtol=1e-12)


@pytest.mark.parametrize(("sigma", "steps"), [(1.0, 1), (2.0, 1), (5.0, 1), (4.0, 9), (10.0, 25)])
def test_full_batch_gaussian_matches_closed_form(sigma: float, steps: int) -> None:
    # With q = 1 the k-fold composition of Gaussians of scale σ is one Gaussian of scale σ/√k.
    expected = analytic_gaussian_epsilon(sigma / math.sqrt(steps), DELTA)
    pld = cumulative_epsilon([record(sigma, 1.0, steps)], delta=DELTA)
    assert expected <= pld <= expected * 1.002  # PLD is a pessimistic, tight bound
    rdp = cumulative_epsilon([record(sigma, 1.0, steps)], delta=DELTA, accountant="rdp")
    assert rdp >= pld


HISTORY = [record(3.0, 0.2, 10), record(2.0, 0.1, 25), record(3.0, 0.2, 10), record(5.0, 0.5, 4), record(2.0, 0.1, 5)]


def test_heterogeneous_history_matches_accountant_fed_event_by_event() -> None:
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=DEFAULT_PLD_DISCRETIZATION)
    for r in HISTORY:
        accountant.compose(history_event([r]))
    event_by_event = accountant.get_epsilon(DELTA)
    assert cumulative_epsilon(HISTORY, delta=DELTA) == pytest.approx(event_by_event, rel=1e-4)
    rdp_engine = __import__("dp_accounting").rdp.RdpAccountant()
    for r in HISTORY:
        rdp_engine.compose(history_event([r]))
    rdp = cumulative_epsilon(HISTORY, delta=DELTA, accountant="rdp")
    assert rdp == pytest.approx(rdp_engine.get_epsilon(DELTA), rel=1e-9)


def test_composition_is_tighter_than_summing_rounds() -> None:
    total = cumulative_epsilon(HISTORY, delta=DELTA)
    summed = sum(cumulative_epsilon([r], delta=DELTA) for r in HISTORY)
    assert max(cumulative_epsilon([r], delta=DELTA) for r in HISTORY) < total < summed


def test_order_and_split_of_rounds_do_not_change_epsilon() -> None:
    merged = [record(3.0, 0.2, 20), record(2.0, 0.1, 30), record(5.0, 0.5, 4)]
    assert cumulative_epsilon(list(reversed(HISTORY)), delta=DELTA) == cumulative_epsilon(merged, delta=DELTA)


def test_epsilon_grows_with_history_and_empty_history_is_free() -> None:
    assert cumulative_epsilon([], delta=DELTA) == 0.0
    values = [cumulative_epsilon(HISTORY[:i], delta=DELTA) for i in range(1, len(HISTORY) + 1)]
    assert values == sorted(values) and len(set(values)) == len(values)


def test_bad_delta_and_accountant_are_refused() -> None:
    with pytest.raises(InvalidDelta, match="delta must be a number in"):
        cumulative_epsilon(HISTORY, delta=0.0)
    with pytest.raises(MalformedPrivacyRecord, match="accountant must be one of"):
        cumulative_epsilon(HISTORY, delta=DELTA, accountant="moments")
    with pytest.raises(MalformedPrivacyRecord, match="must be null for 'rdp'"):
        cumulative_epsilon(HISTORY, delta=DELTA, accountant="rdp", value_discretization_interval=1e-3)


def test_record_json_round_trips_exactly() -> None:
    original = record(1.2345678901234567, 1 / 7, 33, delta=3e-6)
    text = json.dumps(original.to_json(), sort_keys=True)
    parsed = PrivacyRecord.from_json(json.loads(text), where="block 1 entry 4")
    assert parsed == original and parsed.noise_multiplier == 1.2345678901234567
    # Canonical JSON writes 2.0 as 2: integers are accepted for float fields.
    integral = PrivacyRecord.from_json({**record(2.0, 1.0, 1).to_json(), "noise_multiplier": 2, "sample_rate": 1}, where="x")
    assert integral.noise_multiplier == 2.0 and isinstance(integral.noise_multiplier, float)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"noise_multiplier": float("nan")}, "'noise_multiplier' must be finite"),
        ({"noise_multiplier": 0.0}, "noise_multiplier must be > 0"),
        ({"noise_multiplier": "1.0"}, "'noise_multiplier' must be a number"),
        ({"sample_rate": 1.5}, r"sample_rate must be in \(0, 1\]"),
        ({"sample_rate": 0}, r"sample_rate must be in \(0, 1\]"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 10.0}, "'steps' must be an integer"),
        ({"steps": True}, "'steps' must be an integer"),
        ({"clipping_norm": -1.0}, "clipping_norm must be > 0"),
        ({"delta": 1.0}, r"delta must be a number in \(0, 1\)"),
        ({"accountant": "gdp"}, "accountant must be one of"),
        ({"value_discretization_interval": None}, "'value_discretization_interval' must be a number"),
        ({"mechanism": "laplace"}, "mechanism must be 'subsampled_gaussian'"),
        ({"neighboring_relation": "add_or_remove_one"}, "neighboring_relation must be one of"),
        ({"library": "opacus"}, "library must be 'dp-accounting'"),
        ({"library_version": 6}, "'library_version' must be a string"),
    ],
)
def test_from_json_rejects_malformed_fields(change: dict, message: str) -> None:
    data = {**record(2.0, 0.1, 10).to_json(), **change}
    with pytest.raises(MalformedPrivacyRecord, match=message) as info:
        PrivacyRecord.from_json(data, where="block 7 entry 3")
    assert str(info.value).startswith("block 7 entry 3:")


def test_from_json_rejects_missing_extra_and_non_objects() -> None:
    data = record(2.0, 0.1, 10).to_json()
    with pytest.raises(MalformedPrivacyRecord, match="missing field.*steps"):
        PrivacyRecord.from_json({k: v for k, v in data.items() if k != "steps"}, where="w")
    with pytest.raises(MalformedPrivacyRecord, match="unknown field.*epsilon"):
        PrivacyRecord.from_json({**data, "epsilon": 0.1}, where="w")
    with pytest.raises(MalformedPrivacyRecord, match="must be a JSON object"):
        PrivacyRecord.from_json([data], where="w")  # type: ignore[arg-type]


def test_verify_claim_recomputes_and_catches_tampering() -> None:
    claimed = recorded_epsilon(HISTORY)
    assert verify_claim(HISTORY, claimed, where="block 2 hospital-03") == claimed
    with pytest.raises(EpsilonMismatch, match="block 2 hospital-03: claimed cumulative ε"):
        verify_claim(HISTORY, claimed * 0.999, where="block 2 hospital-03")
    # A tampered record (σ inflated after the fact) no longer reproduces the claim.
    tampered = [*HISTORY[:-1], record(2.5, 0.1, 5)]
    with pytest.raises(EpsilonMismatch):
        verify_claim(tampered, claimed, where="block 2 hospital-03")
    old = [record(3.0, 0.2, 10, library_version="0.4.4")]
    with pytest.raises(EpsilonMismatch, match="written with dp-accounting 0.4.4"):
        verify_claim(old, 123.0, where="b")


def test_zero_out_is_the_default_and_equals_add_remove_for_the_poisson_gaussian() -> None:
    # Independent computation straight from dp-accounting, under add/remove-one: for a
    # Poisson-sampled Gaussian the zero-out (REPLACE_SPECIAL) ε is the same number.
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    from bfl_private.privacy.accounting import PrivacyRecord, cumulative_epsilon

    record = PrivacyRecord(noise_multiplier=1.3, sample_rate=0.25, steps=30, clipping_norm=1.0)
    assert record.neighboring_relation == "zero_out"
    independent = pld_privacy_accountant.PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-3)
    independent.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.3)), 30))
    assert cumulative_epsilon([record], delta=1e-5) == pytest.approx(independent.get_epsilon(1e-5), rel=1e-9)


def test_replace_one_costs_about_twice_and_histories_do_not_mix_relations() -> None:
    from bfl_private.privacy.accounting import PrivacyRecord, cumulative_epsilon
    from bfl_private.privacy.errors import MalformedPrivacyRecord

    zero_out = PrivacyRecord(noise_multiplier=1.3, sample_rate=0.25, steps=30, clipping_norm=1.0)
    replace = PrivacyRecord(noise_multiplier=1.3, sample_rate=0.25, steps=30, clipping_norm=1.0,
                            neighboring_relation="replace_one")
    ratio = (cumulative_epsilon([replace], delta=1e-5, neighboring_relation="replace_one")
             / cumulative_epsilon([zero_out], delta=1e-5))
    assert 1.6 < ratio < 2.2
    with pytest.raises(MalformedPrivacyRecord, match="cannot be composed"):
        cumulative_epsilon([zero_out, replace], delta=1e-5)
    with pytest.raises(MalformedPrivacyRecord, match="cannot compute replace_one"):
        PrivacyRecord(noise_multiplier=1.3, sample_rate=0.25, steps=3, clipping_norm=1.0, accountant="rdp",
                      neighboring_relation="replace_one")


def _outcome(function, *args, **kwargs):
    try:
        return "ok", function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - compared, type and message
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("history", [
    [],
    [record(1.1, 0.25, 3)],
    [record(1.1, 0.25, 3), record(0.9, 0.25, 3), record(1.1, 0.25, 5), record(1.1, 0.1, 2)],
    [record(1.1, 0.25, 3, library_version="0.0.1"), record(1.1, 0.25, 3)],
    [record(1.1, 0.25, 3, accountant="rdp"), record(1.2, 0.25, 3, accountant="rdp")],
    [record(1.1, 0.25, 3, neighboring_relation="replace_one"), record(1.1, 0.25, 3)],
    [record(1.1, 0.25, 3), record(1.1, 0.25, 3, delta=1e-6)],
])
def test_a_history_summary_gives_what_the_records_give(history) -> None:
    """The incremental fold the verifier uses: same ε, same errors, same mismatch message."""
    summary = HistorySummary.of(history)
    assert _outcome(summary.epsilon) == _outcome(recorded_epsilon, history)
    for claimed in (0.0, 1.0, _outcome(recorded_epsilon, history)[1]):
        if isinstance(claimed, str):
            continue
        assert (_outcome(verify_summary_claim, summary, claimed, where="round 3")
                == _outcome(verify_claim, history, claimed, where="round 3"))


def test_epsilons_computed_in_another_process_are_the_same_bits() -> None:
    from concurrent.futures import ProcessPoolExecutor

    from bfl_private.privacy import accounting

    histories = [[record(0.8 + 0.01 * k, 0.25, 3)] * k for k in range(1, 4)]
    keys = [HistorySummary.of(h).epsilon_key() for h in histories]
    for key in keys:
        accounting._EPSILONS.pop(key, None)
    with ProcessPoolExecutor(max_workers=1) as pool:
        started = start_epsilons([*keys, keys[0], None], pool)
        assert len(started) == len(keys)
        finish_epsilons(started)
    precomputed = [accounting._EPSILONS[key] for key in keys]
    assert precomputed == [accounting._compute_epsilon(*key) for key in keys]
    assert [recorded_epsilon(h) for h in histories] == precomputed


@pytest.mark.parametrize("mechanisms, delta, interval, relation", [
    (((1.1, 0.25, 3),), 1e-5, 1e-3, "zero_out"),
    (((0.5954984712628422, 0.25, 150),), 1e-5, 1e-3, "zero_out"),
    (((0.9, 0.25, 3), (1.1, 0.25, 6), (1.1, 0.1, 4)), 1e-5, 1e-3, "zero_out"),
    (((0.9, 0.25, 30),), 1e-6, 1e-3, "replace_one"),
    (((0.9, 0.1, 12),), 1e-5, 1e-4, "zero_out"),
])
def test_the_pld_path_with_a_shared_one_step_pld_gives_the_accountants_bits(mechanisms, delta, interval,
                                                                          relation) -> None:
    from bfl_private.privacy import accounting

    reference = accounting._accountant_epsilon(mechanisms, delta, "pld", interval, relation)
    for _ in range(2):  # the one-step PLD built, then reused
        assert accounting._pld_epsilon(mechanisms, delta, interval, relation).hex() == reference.hex()
