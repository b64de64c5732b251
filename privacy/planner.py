"""Choose the noise multiplier σ so that a client's cumulative ε stays within a target.

Opacus's ``make_private_with_epsilon`` calibrates with q = 1/len(dataloader) for
``int(epochs/q)`` steps, which is not the schedule a federated client runs, and can
overshoot. Here the schedule is explicit (``rounds`` rounds of ``steps_per_round``
steps at sample rate q, after the client's ``history``) and the search is
``dp_accounting.calibrate_dp_mechanism`` (Brent's method with a guarantee that the
returned parameter meets the constraint) over exactly the event that
:func:`~bfl_private.privacy.accounting.cumulative_epsilon` later composes, followed by a
final check with that very function: the plan never overshoots.

Two budgets meet here, and one function serves both:

* ``--epsilon E`` of one command: plan with ``history=()`` and ``target_epsilon=E``;
  the rounds of this command alone then cost at most E.
* a client's lifetime budget B: :func:`~bfl_private.privacy.budget.check_round_budgets`
  checks ``history + planned`` against B before training, and refuses the round rather
  than silently adding noise. ``plan_noise_multiplier(target_epsilon=B,
  history=history, ...)`` gives the σ that would spend exactly what is left of B.
"""
from __future__ import annotations

from collections.abc import Sequence

import dp_accounting

from .accounting import (
    DEFAULT_RELATION,
    PrivacyRecord,
    check_accountant,
    check_delta,
    cumulative_epsilon,
    history_event,
    make_accountant,
    resolve_interval,
)
from .errors import ConfigurationError, PlanningError

MIN_NOISE_MULTIPLIER = 0.3
"""Below ~0.3 the subsampled Gaussian's PLD/RDP grows huge and useless for DP-SGD."""
MAX_NOISE_MULTIPLIER = 1000.0


def planned_records(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    clipping_norm: float = 1.0,
    delta: float,
    accountant: str = "pld",
    value_discretization_interval: float | None = None,
    neighboring_relation: str = DEFAULT_RELATION,
) -> list[PrivacyRecord]:
    """The records ``rounds`` rounds of DP-SGD with these parameters will write."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigurationError(f"rounds must be an integer >= 1, got {rounds!r}")
    record = PrivacyRecord(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps_per_round,
        clipping_norm=clipping_norm,
        delta=delta,
        accountant=accountant,
        value_discretization_interval=value_discretization_interval,
        neighboring_relation=neighboring_relation,
    )
    return [record] * rounds


def plan_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    history: Sequence[PrivacyRecord] = (),
    accountant: str = "pld",
    value_discretization_interval: float | None = None,
    neighboring_relation: str = DEFAULT_RELATION,
    tolerance: float = 1e-4,
) -> float:
    """The smallest σ (within ``tolerance``) with ``cumulative_epsilon(history + planned) <= target_epsilon``.

    Raises :class:`PlanningError` if ``history`` alone already reaches the target, or if
    even σ = ``MAX_NOISE_MULTIPLIER`` does not meet it. A σ below
    ``MIN_NOISE_MULTIPLIER`` is never returned: the search starts there.
    """
    if not (isinstance(target_epsilon, (int, float)) and 0 < target_epsilon < float("inf")):
        raise ConfigurationError(f"target_epsilon must be a positive finite number, got {target_epsilon!r}")
    delta = check_delta(delta, where="plan_noise_multiplier")
    value_discretization_interval = resolve_interval(accountant, value_discretization_interval)
    check_accountant(accountant, value_discretization_interval, where="plan_noise_multiplier")
    if not 0 < tolerance < 0.1:
        raise ConfigurationError(f"tolerance must be in (0, 0.1), got {tolerance!r}")
    history = list(history)

    def records(sigma: float) -> list[PrivacyRecord]:
        return history + planned_records(
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            steps_per_round=steps_per_round,
            rounds=rounds,
            delta=delta,
            accountant=accountant,
            value_discretization_interval=value_discretization_interval,
            neighboring_relation=neighboring_relation,
        )

    def epsilon(sigma: float) -> float:
        return cumulative_epsilon(
            records(sigma), delta=delta, accountant=accountant, value_discretization_interval=value_discretization_interval,
            neighboring_relation=neighboring_relation,
        )

    spent = cumulative_epsilon(history, delta=delta, accountant=accountant,
                               value_discretization_interval=value_discretization_interval,
                               neighboring_relation=neighboring_relation)
    if spent >= target_epsilon:
        raise PlanningError(f"history already spends ε={spent:.6g} >= target ε={target_epsilon:.6g}; no round fits")
    if epsilon(MAX_NOISE_MULTIPLIER) > target_epsilon:
        raise PlanningError(
            f"even σ={MAX_NOISE_MULTIPLIER:g} gives ε={epsilon(MAX_NOISE_MULTIPLIER):.6g} > target "
            f"ε={target_epsilon:.6g} for q={sample_rate}, {rounds}x{steps_per_round} steps"
        )
    if epsilon(MIN_NOISE_MULTIPLIER) <= target_epsilon:
        sigma = MIN_NOISE_MULTIPLIER
    else:
        sigma = float(
            dp_accounting.calibrate_dp_mechanism(
                lambda: make_accountant(accountant, value_discretization_interval=value_discretization_interval,
                                        neighboring_relation=neighboring_relation),
                lambda s: history_event(records(s)),
                target_epsilon,
                delta,
                bracket_interval=dp_accounting.ExplicitBracketInterval(MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER),
                tol=tolerance,
            )
        )
    achieved = epsilon(sigma)
    if achieved > target_epsilon:
        raise PlanningError(f"calibration returned σ={sigma!r} with ε={achieved!r} above target ε={target_epsilon!r}")
    return sigma
