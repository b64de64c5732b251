"""Accounting for the distributed Skellam mechanism under Poisson subsampling.

Under secure aggregation each hospital adds only a *share* of the noise: integer Skellam
noise, which stays Skellam under summation (Agarwal, Kairouz and Liu, "The Skellam
Mechanism for Differentially Private Federated Learning", NeurIPS 2021). The sum the
aggregator decodes is then one Skellam mechanism applied to the sum of every hospital's
Poisson-sampled, clipped and integer-rounded per-record gradients. This module bounds its
privacy loss per record; pure maths (numpy, scipy, dp-accounting's RDP-to-DP conversion),
no state.

1. **One release** (their Theorem 3.5 / Corollary 3.6): Skellam noise of per-coordinate
   variance ``mu`` (Poisson(mu/2) - Poisson(mu/2)) on an integer query whose l1 and l2
   sensitivities are ``l1`` and ``l2`` is (alpha, eps(alpha))-RDP for integer alpha > 1 with

       eps(alpha) = alpha l2^2 / (2 mu) + min( ((2 alpha - 1) l2^2 + 6 l1) / (4 mu^2), 3 l1 / (2 mu) )

   The first term is the Gaussian mechanism's; the second is the price of integers and
   vanishes as mu grows.
2. **Poisson subsampling** with rate q (Zhu and Wang, "Poisson Subsampled Rényi
   Differential Privacy", ICML 2019, Theorem 6, the general upper bound for any mechanism):

       eps'(alpha) <= 1/(alpha-1) log( (1-q)^(alpha-1) (alpha q - q + 1)
                         + C(alpha,2) q^2 (1-q)^(alpha-2) e^(eps(2))
                         + 3 sum_{l=3..alpha} C(alpha,l) q^l (1-q)^(alpha-l) e^((l-1) eps(l)) )

   It is proved for add/remove-one neighbours; a zero-out neighbour (one record replaced
   by a null record contributing nothing) gives the very same pair of output
   distributions for a sum over the sample, so it holds for zero-out too.
3. **Composition** over rounds adds RDP; dp-accounting's ``compute_epsilon`` converts to
   (eps, delta) (Balle et al. 2020's conversion).

Sensitivities after rounding (Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation", ICML 2021, Theorem 6 / eq. 17):
a record's gradient, clipped to l2 norm ``clip`` and scaled by ``scale``, is rounded to the
integer grid by conditional randomised rounding, which redraws until the rounded vector's
norm is at most

    sqrt( c^2 + d/4 + sqrt(2 log(1/beta)) (c + sqrt(d)/2) ),   c = scale * clip,

(each draw passes with probability at least 1 - beta). That is the l2 sensitivity; the l1
sensitivity of an integer vector is at most min(l2^2, sqrt(d) l2).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigurationError, PrivacyError

ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (72, 80, 96, 112, 128, 160, 192, 256)
"""Integer RDP orders (the subsampling bound and the Skellam bound are stated for integers)."""


MODULUS_BITS = 32
"""Secure aggregation sums uint32 words; the decoded sum is read as a signed 32-bit integer."""
_TAIL_STDS = 12.0
"""Noise is budgeted to 12 standard deviations when checking the modulus (a wrap then has
probability below 1e-32 per coordinate)."""


@dataclass(frozen=True)
class ShareParameters:
    """What every participant of a distributed-DP round uses; public, stated on the ledger."""

    scale: float
    """Grid: one integer step is 1/scale of a gradient coordinate."""
    clipping_norm: float
    beta: float
    """Conditional rounding redraws a record whose rounded norm exceeds the bound; each
    draw passes with probability at least 1 - beta."""
    sample_rate: float
    share_variance: float
    """Variance, in grid units, of each participant's Skellam share."""

    def __post_init__(self) -> None:
        for name in ("scale", "clipping_norm", "share_variance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"ShareParameters.{name} must be finite and > 0, got {value!r}")
        if not 0 < self.beta < 1 or not 0 < self.sample_rate <= 1:
            raise ConfigurationError(f"ShareParameters needs 0 < beta < 1 and 0 < sample_rate <= 1, got "
                                     f"{self.beta!r}, {self.sample_rate!r}")

    def rounded_bound(self, dim: int) -> float:
        """One record's l2 norm bound after conditional rounding: the l2 sensitivity."""
        return rounded_l2_bound(scaled_clip=self.scale * self.clipping_norm, dim=dim, beta=self.beta)

    def check_modulus(self, *, dim: int, records: int, participants: int) -> None:
        """Refuse parameters whose sum could wrap modulo 2^32: every record sampled at its
        norm bound, plus every share's noise to 12 standard deviations, stays below 2^31."""
        worst = records * self.rounded_bound(dim) + _TAIL_STDS * math.sqrt(participants * self.share_variance)
        if worst >= 2 ** (MODULUS_BITS - 1):
            raise ConfigurationError(
                f"a sum of up to {records} records at scale {self.scale:g} plus noise reaches {worst:.3g}, "
                f"past the signed {MODULUS_BITS}-bit range: lower the scale")

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "clipping_norm": self.clipping_norm, "beta": self.beta,
                "sample_rate": self.sample_rate, "share_variance": self.share_variance}

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> ShareParameters:
        """Parse the record a round's opening states; PrivacyError naming ``where`` otherwise."""
        if not isinstance(data, Mapping) or set(data) != {"scale", "clipping_norm", "beta", "sample_rate",
                                                          "share_variance"}:
            raise PrivacyError(f"{where}: distributed-DP share parameters must hold exactly scale, "
                               f"clipping_norm, beta, sample_rate and share_variance")
        try:
            return cls(**{k: float(v) for k, v in data.items()})
        except (TypeError, ValueError, ConfigurationError) as exc:
            raise PrivacyError(f"{where}: {exc}") from exc


def grid_scale(*, records: int, clipping_norm: float) -> float:
    """The largest power of two that keeps ``records`` clipped records' sum within 2^30
    (half the signed range, the other half left for noise and rounding), capped at 2^20."""
    if records < 1 or not clipping_norm > 0:
        raise ConfigurationError(f"grid_scale needs records >= 1 and clipping_norm > 0, got {records}, {clipping_norm}")
    return float(2 ** min(20, math.floor(math.log2(2**30 / (records * clipping_norm)))))


def rounded_l2_bound(*, scaled_clip: float, dim: int, beta: float) -> float:
    """The norm bound conditional randomised rounding enforces on a vector of l2 norm at most
    ``scaled_clip`` in ``dim`` coordinates (each rounding attempt passes with prob >= 1 - beta)."""
    if not (scaled_clip > 0 and dim >= 1 and 0 < beta < 1):
        raise PrivacyError(f"rounding bound needs scaled_clip > 0, dim >= 1, 0 < beta < 1; got "
                           f"{scaled_clip!r}, {dim!r}, {beta!r}")
    slack = math.sqrt(2.0 * math.log(1.0 / beta))
    return math.sqrt(scaled_clip**2 + dim / 4.0 + slack * (scaled_clip + math.sqrt(dim) / 2.0))


def l1_bound(*, l2: float, dim: int) -> float:
    """l1 norm bound of an integer vector of l2 norm at most ``l2``: each non-zero |x_i| <= x_i^2."""
    return min(l2 * l2, math.sqrt(dim) * l2)


def skellam_rdp(order: int, *, l1: float, l2: float, variance: float) -> float:
    """RDP of one Skellam release at integer ``order`` (Agarwal et al. 2021, Cor. 3.6)."""
    if order < 2 or int(order) != order:
        raise PrivacyError(f"Skellam RDP is stated for integer orders >= 2, got {order!r}")
    if not (variance > 0 and l1 >= 0 and l2 >= 0):
        raise PrivacyError(f"Skellam RDP needs variance > 0 and sensitivities >= 0, got {variance!r}, {l1!r}, {l2!r}")
    gaussian = order * l2 * l2 / (2.0 * variance)
    integer = min(((2 * order - 1) * l2 * l2 + 6.0 * l1) / (4.0 * variance**2), 3.0 * l1 / (2.0 * variance))
    return gaussian + integer


def _log_comb(n: int, k: int) -> float:
    from scipy.special import gammaln  # loaded on first use, as dp-accounting is (see privacy.accounting)

    return float(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1))


def subsampled_rdp(order: int, *, sample_rate: float, rdp: Callable[[int], float]) -> float:
    """Zhu and Wang's (2019) general upper bound on the RDP of a Poisson-subsampled
    mechanism whose RDP at integer order l is ``rdp(l)``; never more than ``rdp(order)``."""
    q = sample_rate
    if not 0 < q <= 1:
        raise PrivacyError(f"sample rate must be in (0, 1], got {q!r}")
    if q == 1:
        return rdp(order)
    alpha = int(order)
    log_q, log_1mq = math.log(q), math.log1p(-q)
    terms = [(alpha - 1) * log_1mq + math.log(alpha * q - q + 1),
             _log_comb(alpha, 2) + 2 * log_q + (alpha - 2) * log_1mq + rdp(2)]
    terms += [math.log(3.0) + _log_comb(alpha, l) + l * log_q + (alpha - l) * log_1mq + (l - 1) * rdp(l)
              for l in range(3, alpha + 1)]
    top = max(terms)
    log_sum = top + math.log(sum(math.exp(t - top) for t in terms))
    return min(log_sum / (alpha - 1), rdp(order))


@functools.lru_cache(maxsize=1024)
def round_rdp(*, variance: float, scale: float, clipping_norm: float, dim: int, beta: float,
              sample_rate: float) -> tuple[float, ...]:
    """One release's RDP at each of :data:`ORDERS`: the Poisson-subsampled Skellam sum whose
    total noise has per-coordinate ``variance`` (grid units, i.e. after ``scale``). Memoised:
    a federation's rounds repeat a handful of parameter sets."""
    l2 = rounded_l2_bound(scaled_clip=scale * clipping_norm, dim=dim, beta=beta)
    l1 = l1_bound(l2=l2, dim=dim)

    def one(order: int) -> float:
        return skellam_rdp(order, l1=l1, l2=l2, variance=variance)

    return tuple(subsampled_rdp(order, sample_rate=sample_rate, rdp=one) for order in ORDERS)


def composed_epsilon(releases: Sequence[tuple[tuple[float, ...], int]], *, delta: float) -> float:
    """ε at ``delta`` of the composition of ``(round_rdp curve, times)`` pairs: RDP adds up."""
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")
    if not releases:
        return 0.0
    rdp = sum(times * np.asarray(curve) for curve, times in releases)
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    epsilon, _ = compute_epsilon(list(ORDERS), rdp, delta)
    return float(epsilon)


def distributed_skellam_epsilon(
    *,
    variance: float,
    scale: float,
    clipping_norm: float,
    dim: int,
    beta: float,
    sample_rate: float,
    rounds: int,
    delta: float,
) -> float:
    """ε per record after ``rounds`` releases of the Poisson-subsampled Skellam sum whose
    total noise has per-coordinate ``variance`` (in grid units, i.e. after ``scale``)."""
    if rounds < 0:
        raise PrivacyError(f"rounds must be >= 0, got {rounds!r}")
    if rounds == 0:
        return composed_epsilon((), delta=delta)
    curve = round_rdp(variance=float(variance), scale=float(scale), clipping_norm=float(clipping_norm), dim=int(dim),
                      beta=float(beta), sample_rate=float(sample_rate))
    return composed_epsilon([(curve, rounds)], delta=delta)


def plan_variance(
    *,
    target_epsilon: float,
    scale: float,
    clipping_norm: float,
    dim: int,
    beta: float,
    sample_rate: float,
    rounds: int,
    delta: float,
) -> float:
    """The smallest total noise variance (grid units, to 0.1%) whose ε does not exceed
    ``target_epsilon``: the planner never overshoots (its result is checked, not trusted)."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyError(f"target ε must be finite and > 0, got {target_epsilon!r}")

    def epsilon(variance: float) -> float:
        return distributed_skellam_epsilon(variance=variance, scale=scale, clipping_norm=clipping_norm, dim=dim,
                                           beta=beta, sample_rate=sample_rate, rounds=rounds, delta=delta)

    low, high = 1e-6, max(1.0, (scale * clipping_norm) ** 2)
    while epsilon(high) > target_epsilon:
        low, high = high, high * 4
        if high > 1e30:
            raise PrivacyError(f"no Skellam noise reaches ε={target_epsilon} with δ={delta} over {rounds} rounds")
    while high / low > 1.001:
        middle = math.sqrt(low * high)
        if epsilon(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    assert epsilon(high) <= target_epsilon
    return high
