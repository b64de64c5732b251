"""The arithmetic of a distributed-DP round: its plan, its records, its rule and its model.

In ``privacy.mode = "distributed"`` each round's participants send, inside the secure sum,
the integer sum of their Poisson-sampled, clipped and rounded per-record gradients plus a
Skellam share of the noise (:mod:`bfl_private.privacy.distributed_dp`, which needs torch
and runs on the participant). Everything else is here, in numpy only, so that the
coordinator, the validators and the auditor share one definition:

* :class:`DistributedPlan`, what a round's opening states: the share parameters (grid
  ``scale``, clipping norm, rounding β, sample rate q, each share's variance), t, the model
  dimension and the modulus; :func:`plan_round` makes it for a command's ε and
  :func:`plan_violation` checks one against genesis;
* :func:`planned_record`, the one :class:`~bfl_private.privacy.accounting.SkellamRecord`
  a participant of that round may sign;
* :func:`aggregate_violation`, why a decoded sum cannot be the included participants'
  (fewer than N - t of them, or a coordinate past what their records and noise reach);
* :func:`next_model`, the server optimiser's step on the noisy gradient estimate
  ``total / (scale · q · Σ n)``, post-processing whose state (Adam's moments) travels with
  the model blob (:mod:`bfl_private.artifacts`) so the model chain is re-derivable.

Shares are sized so the guarantee holds while up to t participants drop out or collude
with the aggregator: the N - t others' shares sum to the planned variance. A round with
more than t dropouts is aborted before its sum is decoded, never charged at a smaller ε.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .privacy.accounting import SKELLAM_MECHANISM, SkellamRecord
from .privacy.errors import ConfigurationError, PrivacyError
from .privacy.skellam import (
    MODULUS_BITS,
    ShareParameters,
    distributed_skellam_epsilon,
    grid_scale,
    plan_variance,
)
from .settings import FederationSettings

NOISE_TAIL_STDS = 12.0
"""The aggregate rule allows the noise 12 standard deviations per coordinate (an honest
round is refused with probability below 1e-32 per coordinate)."""
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8


@dataclass(frozen=True)
class DistributedPlan:
    """A distributed-DP round's public plan, stated in its ``round_open``."""

    shares: ShareParameters
    collusion_threshold: int
    dimension: int
    epsilon_this_command: float
    rounds_this_command: int
    modulus_bits: int = MODULUS_BITS

    def to_json(self) -> dict[str, Any]:
        return {"mechanism": SKELLAM_MECHANISM, "shares": self.shares.to_json(),
                "collusion_threshold": self.collusion_threshold, "dimension": self.dimension,
                "modulus_bits": self.modulus_bits, "epsilon_this_command": self.epsilon_this_command,
                "rounds_this_command": self.rounds_this_command}

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> DistributedPlan:
        names = {"mechanism", "shares", "collusion_threshold", "dimension", "modulus_bits",
                 "epsilon_this_command", "rounds_this_command"}
        if not isinstance(data, Mapping) or set(data) != names or data["mechanism"] != SKELLAM_MECHANISM:
            raise PrivacyError(f"{where}: a distributed-DP privacy plan holds exactly {', '.join(sorted(names))} "
                               f"with mechanism {SKELLAM_MECHANISM!r}")
        for name in ("collusion_threshold", "dimension", "modulus_bits", "rounds_this_command"):
            if isinstance(data[name], bool) or not isinstance(data[name], int) or data[name] < 0:
                raise PrivacyError(f"{where}: privacy plan field {name!r} must be an integer >= 0, got {data[name]!r}")
        epsilon = data["epsilon_this_command"]
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon):
            raise PrivacyError(f"{where}: privacy plan field 'epsilon_this_command' must be a number, got {epsilon!r}")
        return cls(shares=ShareParameters.from_json(data["shares"], where=where),
                   collusion_threshold=data["collusion_threshold"], dimension=data["dimension"],
                   epsilon_this_command=float(epsilon), rounds_this_command=data["rounds_this_command"],
                   modulus_bits=data["modulus_bits"])


def is_distributed_plan(privacy_plan: Any) -> bool:
    """Whether a round opening's ``privacy_plan`` is a distributed-DP one (it names its mechanism)."""
    return isinstance(privacy_plan, Mapping) and privacy_plan.get("mechanism") == SKELLAM_MECHANISM


def planned_record(settings: FederationSettings, plan: DistributedPlan, *, participants: int) -> SkellamRecord:
    """The one privacy record a participant of a round among ``participants`` may sign."""
    shares = plan.shares
    return SkellamRecord(scale=shares.scale, clipping_norm=shares.clipping_norm, beta=shares.beta,
                         sample_rate=shares.sample_rate, share_variance=shares.share_variance,
                         participants=participants, collusion_threshold=plan.collusion_threshold,
                         dimension=plan.dimension, delta=settings.privacy.delta)


def _required_shares(settings: FederationSettings, *, total_records: int) -> tuple[float, float, float, float]:
    privacy = settings.privacy
    return (grid_scale(records=total_records, clipping_norm=privacy.clipping_norm), privacy.clipping_norm,
            privacy.rounding_beta, privacy.sample_rate)


def plan_round(settings: FederationSettings, *, records: Sequence[int], dimension: int, epsilon: float,
               rounds: int) -> DistributedPlan:
    """Shares for ``rounds`` rounds among participants holding ``records`` that spend at most
    ``epsilon`` per record, whichever t of them drop out or collude.

    Refuses (ConfigurationError, PrivacyError) parameters that would let the sum wrap or
    that leave fewer than two participants' honest noise."""
    participants, t = len(records), settings.privacy.collusion_threshold
    if participants - t < 2:
        raise ConfigurationError(f"t = {t} of {participants} participants leaves fewer than 2 honest shares of noise")
    scale, clip, beta, rate = _required_shares(settings, total_records=sum(records))
    variance = plan_variance(target_epsilon=epsilon, scale=scale, clipping_norm=clip, dim=dimension, beta=beta,
                             sample_rate=rate, rounds=rounds, delta=settings.privacy.delta)
    share_variance = variance / (participants - t)
    plan = DistributedPlan(ShareParameters(scale=scale, clipping_norm=clip, beta=beta, sample_rate=rate,
                                           share_variance=share_variance),
                           collusion_threshold=t, dimension=dimension, epsilon_this_command=epsilon,
                           rounds_this_command=rounds)
    # Never overshoot: the record's variance, (N - t) x share, may round below the plan's.
    record = planned_record(settings, plan, participants=participants)
    while distributed_skellam_epsilon(variance=record.noise_variance, scale=scale, clipping_norm=clip, dim=dimension,
                                      beta=beta, sample_rate=rate, rounds=rounds,
                                      delta=settings.privacy.delta) > epsilon:
        share_variance = math.nextafter(share_variance, math.inf)
        plan = DistributedPlan(ShareParameters(scale=scale, clipping_norm=clip, beta=beta, sample_rate=rate,
                                               share_variance=share_variance),
                               collusion_threshold=t, dimension=dimension, epsilon_this_command=epsilon,
                               rounds_this_command=rounds)
        record = planned_record(settings, plan, participants=participants)
    plan.shares.check_modulus(dim=dimension, records=sum(records), participants=participants)
    return plan


def plan_violation(plan: DistributedPlan, settings: FederationSettings, *, records: Sequence[int]) -> str | None:
    """Why ``plan``, stated for a round among participants holding ``records``, breaks genesis, or None."""
    participants = len(records)
    scale, clip, beta, rate = _required_shares(settings, total_records=sum(records))
    expected = {"scale": scale, "clipping_norm": clip, "beta": beta, "sample_rate": rate,
                "collusion_threshold": settings.privacy.collusion_threshold, "modulus_bits": MODULUS_BITS}
    stated = {**plan.shares.to_json(), "collusion_threshold": plan.collusion_threshold,
              "modulus_bits": plan.modulus_bits}
    wrong = [f"{name} {stated[name]!r} stated, {value!r} required" for name, value in expected.items()
             if stated[name] != value]
    if wrong:
        return "distributed-DP plan breaks genesis: " + "; ".join(wrong)
    if participants - plan.collusion_threshold < 2:
        return f"t = {plan.collusion_threshold} of {participants} participants leaves fewer than 2 honest shares"
    try:
        plan.shares.check_modulus(dim=plan.dimension, records=sum(records), participants=participants)
    except ConfigurationError as exc:
        return f"distributed-DP plan: {exc}"
    return None


def aggregate_violation(total: np.ndarray, plan: DistributedPlan, *, participants: int,
                        included_records: Sequence[int]) -> str | None:
    """Why ``total`` (grid units) cannot be the sum of the included participants' shares, or None.

    At least N - t participants must be included (fewer would carry less noise than the
    records claim), and each coordinate lies within every included record's rounded norm
    bound plus the included shares' noise to :data:`NOISE_TAIL_STDS` standard deviations.
    A participant that skips the encoder can still move the sum within that box."""
    total = np.asarray(total, dtype=np.float64)
    needed = participants - plan.collusion_threshold
    if len(included_records) < needed:
        return (f"only {len(included_records)} of {participants} participants' shares are in the sum; distributed DP "
                f"needs at least N - t = {needed} (more dropouts than t = {plan.collusion_threshold})")
    if total.shape != (plan.dimension,) or not np.all(np.isfinite(total)):
        return f"aggregate of shape {total.shape} is not a finite vector of the plan's dimension {plan.dimension}"
    limit = (sum(included_records) * plan.shares.rounded_bound(plan.dimension)
             + NOISE_TAIL_STDS * math.sqrt(len(included_records) * plan.shares.share_variance))
    worst = int(np.argmax(np.abs(total)))
    if abs(float(total[worst])) > limit:
        return (f"aggregate coordinate {worst} is {float(total[worst])!r}, past the ±{limit:.6g} that "
                f"{len(included_records)} participants' rounded records and noise reach")
    return None


@dataclass(frozen=True)
class ServerState:
    """The server optimiser's state after ``steps`` updates (Adam's moments; zeros for SGD)."""

    steps: int
    first_moment: np.ndarray
    second_moment: np.ndarray

    @classmethod
    def initial(cls, dimension: int) -> ServerState:
        return cls(0, np.zeros(dimension), np.zeros(dimension))


def gradient_estimate(total: np.ndarray, plan: DistributedPlan, *, included_records: Sequence[int]) -> np.ndarray:
    """The mean gradient the noisy sum estimates: ``total / (scale · q · Σ n)`` over the included
    participants' public record counts (the expected number of sampled records)."""
    expected_batch = plan.shares.sample_rate * sum(included_records)
    return np.asarray(total, dtype=np.float64) / (plan.shares.scale * expected_batch)


def next_model(params: np.ndarray, state: ServerState, gradient: np.ndarray, *, optimizer: str,
               learning_rate: float) -> tuple[np.ndarray, ServerState]:
    """One server optimiser step (``adam`` as torch.optim.Adam's defaults, or ``sgd``), float64
    arithmetic, float32 parameters: the one definition the auditor re-derives bit for bit."""
    params64 = np.asarray(params, dtype=np.float64)
    if optimizer == "sgd":
        return (params64 - learning_rate * gradient).astype(np.float32), ServerState(
            state.steps + 1, state.first_moment, state.second_moment)
    beta1, beta2 = ADAM_BETAS
    steps = state.steps + 1
    first = beta1 * state.first_moment + (1 - beta1) * gradient
    second = beta2 * state.second_moment + (1 - beta2) * gradient * gradient
    corrected = first / (1 - beta1**steps)
    scaled = np.sqrt(second / (1 - beta2**steps)) + ADAM_EPSILON
    return (params64 - learning_rate * corrected / scaled).astype(np.float32), ServerState(steps, first, second)


def model_after(params: np.ndarray, state: ServerState, total: np.ndarray, plan: DistributedPlan, *,
                settings: FederationSettings, included_records: Sequence[int]) -> tuple[np.ndarray, ServerState]:
    """The round's new model and optimiser state from the previous ones and the decoded sum."""
    gradient = gradient_estimate(total, plan, included_records=included_records)
    return next_model(params, state, gradient, optimizer=settings.training.optimizer,
                      learning_rate=settings.training.learning_rate)


def records_of(records: Mapping[str, int], clients: Sequence[str]) -> list[int]:
    """The registered record counts of ``clients``, in order."""
    return [int(records[c]) for c in clients]
