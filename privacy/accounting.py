"""Privacy records and the cumulative ε an auditor can recompute from them.

A :class:`PrivacyRecord` is what one client spent in one round of DP-SGD: a Poisson
subsampled Gaussian mechanism (noise multiplier σ relative to the clipping norm C,
sample rate q) applied ``steps`` times. It carries every parameter needed to recompute
its cost exactly, including the accountant and its discretisation and the accounting
library's version, so a third party holding only the ledger can redo the arithmetic.

The maths is entirely Google's ``dp-accounting``: the privacy loss distribution (PLD)
accountant by default (tight; Koskela et al. 2020, Doroshenko et al. 2022), Rényi DP
(Mironov 2017) as an option. A client's history is composed as one
``ComposedDpEvent`` of ``SelfComposedDpEvent(PoissonSampledDpEvent(q,
GaussianDpEvent(σ)), n)``: composition across rounds and commands is exact, never a sum
of ε. The neighbouring relation is one that holds while record counts are public
(:data:`NEIGHBORING_RELATIONS`; zero-out by default). Records with the same (σ, q) are merged into one self-composition (same
mechanism, steps added) and the groups are sorted, so the result depends only on the
multiset of steps, not on how they were split into rounds, and costs one FFT
self-composition per distinct mechanism instead of one per round.

This module imports no torch: the verifier path uses it. It loads ``dp-accounting`` (and
through it SciPy, about 0.8 CPU-s) only when an ε is first computed: a Flower ClientApp
starts a fresh process for every stage message, and the stages that compute no ε (a
masking round's ``share``, ``mask``, ``acknowledge`` and ``unmask``) should not pay for it.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, fields
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, EpsilonMismatch, InvalidDelta, MalformedPrivacyRecord
from .skellam import ShareParameters, composed_epsilon, round_rdp

if TYPE_CHECKING:
    import dp_accounting
    from dp_accounting.pld import privacy_loss_distribution as pld_privacy_loss_distribution

MECHANISM = "subsampled_gaussian"
SKELLAM_MECHANISM = "distributed_skellam"
ACCOUNTANTS = ("pld", "rdp")
LIBRARY = "dp-accounting"
LIBRARY_VERSION = metadata.version(LIBRARY)
NEIGHBORING_RELATIONS: dict[str, str] = {
    "zero_out": "REPLACE_SPECIAL",
    "replace_one": "REPLACE_ONE",
}
"""Neighbouring relations that hold while every client's record count n is public.

Add/remove-one (Opacus's and dp-accounting's default) changes n, and n is published (the
FedAvg weight, genesis), so it is not the relation a ledger reader faces. ``zero_out``
(Kairouz et al., ICML 2021): one record is replaced by a null record whose clipped gradient
is zero, n unchanged; dp-accounting's ``REPLACE_SPECIAL``, which for a Poisson-sampled
Gaussian gives exactly the add/remove ε. ``replace_one``: one record replaced by any other
(about twice the ε; the PLD accountant only)."""


def _relation(name: str) -> dp_accounting.NeighboringRelation:
    """The ``dp-accounting`` relation named in :data:`NEIGHBORING_RELATIONS` (its member name there)."""
    import dp_accounting

    return dp_accounting.NeighboringRelation[NEIGHBORING_RELATIONS[name]]
DEFAULT_RELATION = "zero_out"
DEFAULT_DELTA = 1e-5
DEFAULT_PLD_DISCRETIZATION = 1e-3
"""PLD ``value_discretization_interval``. The PLD accountant's ε is a pessimistic (upper)
bound for any interval; 1e-3 moves ε by < 1e-4 relative against 1e-4 on this project's
settings and is ~10x faster, which the planner (tens of evaluations per client) needs."""


def _finite_number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedPrivacyRecord(f"{where}: field {name!r} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise MalformedPrivacyRecord(f"{where}: field {name!r} must be finite, got {value!r}")
    return number


def check_delta(delta: Any, *, where: str) -> float:
    """``delta`` as a float in the open interval (0, 1), else :class:`InvalidDelta`."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0.0 < float(delta) < 1.0):
        raise InvalidDelta(f"{where}: delta must be a number in (0, 1), got {delta!r}")
    return float(delta)


def resolve_interval(accountant: str, value_discretization_interval: float | None) -> float | None:
    """The PLD discretisation to use: the default when PLD is asked for without one; as given otherwise."""
    if accountant == "pld" and value_discretization_interval is None:
        return DEFAULT_PLD_DISCRETIZATION
    return value_discretization_interval


def check_accountant(accountant: str, value_discretization_interval: float | None, *, where: str) -> None:
    """Accountant name and parameters that :func:`cumulative_epsilon` can honour exactly."""
    if accountant not in ACCOUNTANTS:
        raise MalformedPrivacyRecord(f"{where}: accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    if accountant == "pld":
        interval = _finite_number(value_discretization_interval, "value_discretization_interval", where)
        if not 0.0 < interval <= 0.1:
            raise MalformedPrivacyRecord(f"{where}: PLD value_discretization_interval must be in (0, 0.1], got {interval!r}")
    elif value_discretization_interval is not None:
        raise MalformedPrivacyRecord(
            f"{where}: value_discretization_interval is a PLD parameter; it must be null for {accountant!r}"
        )


def check_relation(relation: Any, accountant: str, *, where: str) -> None:
    """A neighbouring relation that holds with n public and that ``accountant`` can compute."""
    if relation not in NEIGHBORING_RELATIONS:
        raise MalformedPrivacyRecord(
            f"{where}: neighboring_relation must be one of {', '.join(NEIGHBORING_RELATIONS)} "
            f"(record counts are public, so add/remove-one does not hold), got {relation!r}"
        )
    if relation == "replace_one" and accountant != "pld":
        raise MalformedPrivacyRecord(f"{where}: the {accountant!r} accountant cannot compute replace_one for "
                                     f"a Poisson-sampled Gaussian; use 'pld'")


@dataclass(frozen=True, kw_only=True)
class PrivacyRecord:
    """One client's DP-SGD spend in one round, with everything needed to recompute it.

    ``noise_multiplier`` is kept as the exact float used for training (σ, relative to
    ``clipping_norm``); rounding it for display would change the recomputed ε.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    clipping_norm: float
    delta: float = DEFAULT_DELTA
    accountant: str = "pld"
    value_discretization_interval: float | None = None
    """PLD only; None means :data:`DEFAULT_PLD_DISCRETIZATION` for PLD (stored explicitly) and stays None for RDP."""
    mechanism: str = MECHANISM
    neighboring_relation: str = DEFAULT_RELATION
    library: str = LIBRARY
    library_version: str = field(default=LIBRARY_VERSION)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "value_discretization_interval", resolve_interval(self.accountant, self.value_discretization_interval)
        )
        _validate(self.to_json(), where="PrivacyRecord")
        for name in ("noise_multiplier", "sample_rate", "clipping_norm", "delta"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (canonicalise with RFC 8785 before hashing or signing)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def differences(self, expected: PrivacyRecord) -> list[tuple[str, Any, Any]]:
        """(field, this record's value, ``expected``'s) for every field that differs, the
        library version aside (a record stays valid when dp-accounting is upgraded)."""
        return [(f.name, getattr(self, f.name), getattr(expected, f.name)) for f in fields(self)
                if f.name != "library_version" and getattr(self, f.name) != getattr(expected, f.name)]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str) -> PrivacyRecord:
        """Parse and validate a record read from ``where`` (a ledger entry, a file...).

        Exactly the fields of :meth:`to_json` must be present; integers are accepted for
        float fields because canonical JSON writes ``2.0`` as ``2``.
        """
        if not isinstance(data, Mapping):
            raise MalformedPrivacyRecord(f"{where}: privacy record must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        extra = sorted(str(k) for k in data if k not in names)
        if missing:
            raise MalformedPrivacyRecord(f"{where}: privacy record is missing field(s) {', '.join(missing)}")
        if extra:
            raise MalformedPrivacyRecord(f"{where}: privacy record has unknown field(s) {', '.join(extra)}")
        steps = data["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise MalformedPrivacyRecord(f"{where}: field 'steps' must be an integer, got {steps!r}")
        values: dict[str, Any] = {"steps": steps}
        for name in ("noise_multiplier", "sample_rate", "clipping_norm"):
            values[name] = _finite_number(data[name], name, where)
        try:
            values["delta"] = check_delta(data["delta"], where=where)
        except InvalidDelta as exc:
            raise MalformedPrivacyRecord(str(exc)) from None
        interval = data["value_discretization_interval"]
        values["value_discretization_interval"] = (
            None if interval is None else _finite_number(interval, "value_discretization_interval", where)
        )
        for name in ("accountant", "mechanism", "neighboring_relation", "library", "library_version"):
            if not isinstance(data[name], str):
                raise MalformedPrivacyRecord(f"{where}: field {name!r} must be a string, got {data[name]!r}")
            values[name] = data[name]
        _validate(values, where=where)
        return cls(**values)


def _validate(record: Mapping[str, Any], *, where: str) -> None:
    """Every check of a record's fields; raises :class:`MalformedPrivacyRecord` naming ``where``."""
    if record['mechanism'] != MECHANISM:
        raise MalformedPrivacyRecord(f"{where}: mechanism must be {MECHANISM!r}, got {record['mechanism']!r}")
    check_relation(record['neighboring_relation'], record['accountant'], where=where)
    if record['library'] != LIBRARY:
        raise MalformedPrivacyRecord(f"{where}: library must be {LIBRARY!r}, got {record['library']!r}")
    if not isinstance(record['library_version'], str) or not record['library_version']:
        raise MalformedPrivacyRecord(f"{where}: library_version must be a non-empty string")
    sigma = _finite_number(record['noise_multiplier'], "noise_multiplier", where)
    if sigma <= 0:
        raise MalformedPrivacyRecord(f"{where}: noise_multiplier must be > 0 (σ=0 gives no privacy), got {sigma!r}")
    rate = _finite_number(record['sample_rate'], "sample_rate", where)
    if not 0.0 < rate <= 1.0:
        raise MalformedPrivacyRecord(f"{where}: sample_rate must be in (0, 1], got {rate!r}")
    if isinstance(record['steps'], bool) or not isinstance(record['steps'], int) or record['steps'] < 1:
        raise MalformedPrivacyRecord(f"{where}: steps must be an integer >= 1, got {record['steps']!r}")
    norm = _finite_number(record['clipping_norm'], "clipping_norm", where)
    if norm <= 0:
        raise MalformedPrivacyRecord(f"{where}: clipping_norm must be > 0, got {norm!r}")
    try:
        check_delta(record['delta'], where=where)
    except InvalidDelta as exc:
        raise MalformedPrivacyRecord(str(exc)) from None
    check_accountant(record['accountant'], record['value_discretization_interval'], where=where)


@dataclass(frozen=True, kw_only=True)
class SkellamRecord:
    """One participant's spend in one round of distributed DP (:mod:`.skellam`).

    The round releases one Poisson-subsampled Skellam sum. Its noise is what the
    ``participants - collusion_threshold`` honest, present participants' shares carry, so
    the record states both and the ε is computed from that variance, whoever else colludes
    or drops out (up to ``collusion_threshold`` of them; a round with more dropouts is
    aborted). Accounting is Rényi DP (Skellam and the subsampling bound are RDP results),
    under zero-out neighbours.
    """

    scale: float
    clipping_norm: float
    beta: float
    sample_rate: float
    share_variance: float
    participants: int
    collusion_threshold: int
    dimension: int
    delta: float = DEFAULT_DELTA
    mechanism: str = SKELLAM_MECHANISM
    accountant: str = "rdp"
    neighboring_relation: str = DEFAULT_RELATION
    library: str = LIBRARY
    library_version: str = field(default=LIBRARY_VERSION)

    def __post_init__(self) -> None:
        where = "SkellamRecord"
        for name in ("scale", "clipping_norm", "beta", "sample_rate", "share_variance"):
            object.__setattr__(self, name, _finite_number(getattr(self, name), name, where))
        for name in ("participants", "collusion_threshold", "dimension"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MalformedPrivacyRecord(f"{where}: field {name!r} must be an integer >= 0, got {value!r}")
        if self.dimension < 1 or not self.collusion_threshold < self.participants:
            raise MalformedPrivacyRecord(
                f"{where}: needs dimension >= 1 and collusion_threshold < participants (some honest noise), got "
                f"dimension {self.dimension}, t {self.collusion_threshold}, {self.participants} participants")
        try:
            self.shares
        except ConfigurationError as exc:
            raise MalformedPrivacyRecord(f"{where}: {exc}") from None
        object.__setattr__(self, "delta", float(check_delta(self.delta, where=where)))
        fixed = {"mechanism": SKELLAM_MECHANISM, "accountant": "rdp", "neighboring_relation": DEFAULT_RELATION,
                 "library": LIBRARY}
        for name, required in fixed.items():
            if getattr(self, name) != required:
                raise MalformedPrivacyRecord(f"{where}: {name} must be {required!r}, got {getattr(self, name)!r}")
        if not isinstance(self.library_version, str) or not self.library_version:
            raise MalformedPrivacyRecord(f"{where}: library_version must be a non-empty string")

    @property
    def shares(self) -> ShareParameters:
        return ShareParameters(scale=self.scale, clipping_norm=self.clipping_norm, beta=self.beta,
                               sample_rate=self.sample_rate, share_variance=self.share_variance)

    @property
    def noise_variance(self) -> float:
        """Per-coordinate variance (grid units) of the noise the honest, present shares sum to."""
        return (self.participants - self.collusion_threshold) * self.share_variance

    def rdp(self) -> tuple[float, ...]:
        """This round's RDP at each of :data:`~.skellam.ORDERS`."""
        return round_rdp(variance=self.noise_variance, scale=self.scale, clipping_norm=self.clipping_norm,
                         dim=self.dimension, beta=self.beta, sample_rate=self.sample_rate)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def differences(self, expected: SkellamRecord) -> list[tuple[str, Any, Any]]:
        """As :meth:`PrivacyRecord.differences`."""
        return [(f.name, getattr(self, f.name), getattr(expected, f.name)) for f in fields(self)
                if f.name != "library_version" and getattr(self, f.name) != getattr(expected, f.name)]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str) -> SkellamRecord:
        """Exactly the fields of :meth:`to_json`; MalformedPrivacyRecord naming ``where`` otherwise."""
        if not isinstance(data, Mapping):
            raise MalformedPrivacyRecord(f"{where}: privacy record must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise MalformedPrivacyRecord(f"{where}: a {SKELLAM_MECHANISM} record holds exactly {', '.join(sorted(names))}; "
                                         f"missing {sorted(names - set(data))}, unknown {sorted(map(str, set(data) - names))}")
        try:
            return cls(**data)
        except MalformedPrivacyRecord as exc:
            raise MalformedPrivacyRecord(f"{where}: {exc}") from None


SpendRecord = PrivacyRecord | SkellamRecord
"""What one participant spent in one round: local DP-SGD or a distributed-DP share."""


def privacy_record_from_json(data: Any, *, where: str) -> SpendRecord:
    """A ledger's privacy record, parsed as the mechanism it names."""
    mechanism = data.get("mechanism") if isinstance(data, Mapping) else None
    if mechanism == SKELLAM_MECHANISM:
        return SkellamRecord.from_json(data, where=where)
    return PrivacyRecord.from_json(data, where=where)


_MIXED = "a history mixes local DP-SGD and distributed-DP records; a federation's privacy mode is fixed at genesis"


def _skellam_epsilon(records: Sequence[SkellamRecord], *, delta: float) -> float:
    """ε at ``delta`` of a history of distributed-DP rounds (RDP composition)."""
    times: dict[tuple[float, ...], int] = {}
    for record in records:
        curve = record.rdp()
        times[curve] = times.get(curve, 0) + 1
    return composed_epsilon(sorted(times.items()), delta=delta)


Mechanisms = tuple[tuple[float, float, int], ...]
"""Canonical history: sorted (noise_multiplier, sample_rate, total steps) per distinct mechanism."""
EpsilonKey = tuple[Mechanisms, float, str, "float | None", str]
"""The arguments of one accountant call: mechanisms, δ, accountant, discretisation, relation."""


def canonical_mechanisms(records: Sequence[PrivacyRecord]) -> Mechanisms:
    """Merge records of the same (σ, q) by adding their steps; sort by (σ, q)."""
    steps: dict[tuple[float, float], int] = {}
    for record in records:
        key = (float(record.noise_multiplier), float(record.sample_rate))
        steps[key] = steps.get(key, 0) + record.steps
    return tuple((sigma, rate, n) for (sigma, rate), n in sorted(steps.items()))


def history_event(records: Sequence[PrivacyRecord]) -> dp_accounting.DpEvent:
    """The ``dp-accounting`` event of a whole history (what the accountants compose)."""
    return _event(canonical_mechanisms(records))


def _event(mechanisms: Mechanisms) -> dp_accounting.DpEvent:
    import dp_accounting

    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma)), steps
            )
            for sigma, rate, steps in mechanisms
        ]
    )


def make_accountant(
    accountant: str = "pld",
    *,
    value_discretization_interval: float | None = None,
    neighboring_relation: str = DEFAULT_RELATION,
) -> dp_accounting.PrivacyAccountant:
    """A fresh ``dp-accounting`` accountant for ``neighboring_relation``."""
    value_discretization_interval = resolve_interval(accountant, value_discretization_interval)
    check_accountant(accountant, value_discretization_interval, where="accountant")
    check_relation(neighboring_relation, accountant, where="accountant")
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    relation = _relation(neighboring_relation)
    if accountant == "pld":
        return pld_privacy_accountant.PLDAccountant(relation, value_discretization_interval=value_discretization_interval)
    return rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)


_EPSILONS: dict[EpsilonKey, float] = {}
_EPSILONS_MAX = 4096


def _epsilon(mechanisms: Mechanisms, delta: float, accountant: str, interval: float | None, relation: str) -> float:
    """ε of a canonical history, memoised on its arguments (the 4096 most recently used)."""
    key = (mechanisms, delta, accountant, interval, relation)
    value = _EPSILONS.pop(key, None)
    if value is None:
        value = _compute_epsilon(*key)
        if len(_EPSILONS) >= _EPSILONS_MAX:
            del _EPSILONS[next(iter(_EPSILONS))]  # the least recently used
    _EPSILONS[key] = value
    return value


def _remember(key: EpsilonKey, value: float) -> None:
    _EPSILONS.pop(key, None)
    if len(_EPSILONS) >= _EPSILONS_MAX:
        del _EPSILONS[next(iter(_EPSILONS))]
    _EPSILONS[key] = value


def _compute_epsilon(mechanisms: Mechanisms, delta: float, accountant: str, interval: float | None,
                     relation: str) -> float:
    if not mechanisms:
        return 0.0
    if accountant == "pld":
        return _pld_epsilon(mechanisms, delta, interval, relation)
    return _accountant_epsilon(mechanisms, delta, accountant, interval, relation)


def _accountant_epsilon(mechanisms: Mechanisms, delta: float, accountant: str, interval: float | None,
                        relation: str) -> float:
    """ε through a ``dp-accounting`` accountant composing :func:`_event` (the reference)."""
    engine = make_accountant(accountant, value_discretization_interval=interval, neighboring_relation=relation)
    engine.compose(_event(mechanisms))
    return float(engine.get_epsilon(delta))


def _pld_epsilon(mechanisms: Mechanisms, delta: float, interval: float | None, relation: str) -> float:
    """The PLD accountant's own steps for :func:`_event`, with each mechanism's one-step PLD
    built once per process (:func:`_subsampled_gaussian_pld`): ``PLDAccountant`` starts
    from the identity PLD and, for every ``SelfComposedDpEvent(PoissonSampledDpEvent(q,
    GaussianDpEvent(σ)), n)``, composes ``from_gaussian_mechanism(σ, q).self_compose(n)``;
    so do we, call for call, which gives the same bits (a test compares the two). Building
    the one-step PLD is two thirds of the work, and a history that grows round by round
    asks for the same one every round."""
    check_accountant("pld", interval, where="accountant")
    check_relation(relation, "pld", where="accountant")
    from dp_accounting.pld import privacy_loss_distribution as pld_privacy_loss_distribution

    pld = pld_privacy_loss_distribution.identity(value_discretization_interval=interval)
    for sigma, rate, steps in mechanisms:
        pld = pld.compose(_subsampled_gaussian_pld(sigma, rate, interval, relation).self_compose(steps))
    return float(pld.get_epsilon_for_delta(delta))


@functools.lru_cache(maxsize=64)
def _subsampled_gaussian_pld(sigma: float, rate: float, interval: float | None,
                             relation: str) -> pld_privacy_loss_distribution.PrivacyLossDistribution:
    """One step of the Poisson-subsampled Gaussian, as ``PLDAccountant`` builds it (immutable:
    composing returns new distributions)."""
    from dp_accounting.pld import privacy_loss_distribution as pld_privacy_loss_distribution

    return pld_privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=sigma, value_discretization_interval=interval, sampling_prob=rate,
        neighboring_relation=_relation(relation))


def cumulative_epsilon(
    records: Sequence[PrivacyRecord],
    *,
    delta: float,
    accountant: str = "pld",
    value_discretization_interval: float | None = None,
    neighboring_relation: str = DEFAULT_RELATION,
) -> float:
    """ε at ``delta`` of the composition of every record in ``records`` (0.0 for none).

    ``value_discretization_interval`` is the PLD accountant's (None: the default);
    it must stay None for RDP. Every record must state ``neighboring_relation``: ε under
    one relation cannot be composed with ε under another.
    Results are memoised on the canonical history: the planner, the budget check and
    the verifier ask for the same histories many times.
    """
    delta = check_delta(delta, where="cumulative_epsilon")
    value_discretization_interval = resolve_interval(accountant, value_discretization_interval)
    check_accountant(accountant, value_discretization_interval, where="cumulative_epsilon")
    check_relation(neighboring_relation, accountant, where="cumulative_epsilon")
    others = sorted({r.neighboring_relation for r in records} - {neighboring_relation})
    if others:
        raise MalformedPrivacyRecord(
            f"cumulative_epsilon: records under {', '.join(others)} cannot be composed under {neighboring_relation!r}"
        )
    return _epsilon(canonical_mechanisms(records), delta, accountant, value_discretization_interval, neighboring_relation)


class HistorySummary:
    """A history folded record by record into what :func:`recorded_epsilon` reads: the
    steps per (σ, q) of :func:`canonical_mechanisms`, the neighbouring relations and
    library versions seen, and the latest record. Adding a record is O(1), so a verifier
    that checks a claim after every round of a long history does not re-walk it (the
    walk is what made checking R rounds of claims cost R² record visits).

    ``HistorySummary.of(records)`` gives exactly the figure and the errors that
    ``records`` give to :func:`recorded_epsilon` and :func:`verify_claim`.
    """

    __slots__ = ("kinds", "last", "relations", "releases", "steps", "versions")

    def __init__(self) -> None:
        self.steps: dict[tuple[float, float], int] = {}
        """Local DP-SGD: steps per (σ, q)."""
        self.releases: dict[tuple[float, ...], int] = {}
        """Distributed DP: rounds per RDP curve (as :func:`_skellam_epsilon` composes them)."""
        self.kinds: set[type] = set()
        self.relations: set[str] = set()
        self.versions: set[str] = set()
        self.last: SpendRecord | None = None

    @classmethod
    def of(cls, records: Sequence[SpendRecord]) -> HistorySummary:
        summary = cls()
        for record in records:
            summary.add(record)
        return summary

    def add(self, record: SpendRecord) -> None:
        if isinstance(record, SkellamRecord):
            curve = record.rdp()
            self.releases[curve] = self.releases.get(curve, 0) + 1
        else:
            key = (float(record.noise_multiplier), float(record.sample_rate))
            self.steps[key] = self.steps.get(key, 0) + record.steps
        self.kinds.add(type(record))
        self.relations.add(record.neighboring_relation)
        self.versions.add(record.library_version)
        self.last = record

    def copy(self) -> HistorySummary:
        other = HistorySummary()
        other.steps, other.releases, other.kinds = dict(self.steps), dict(self.releases), set(self.kinds)
        other.relations, other.versions, other.last = set(self.relations), set(self.versions), self.last
        return other

    def mechanisms(self) -> Mechanisms:
        """:func:`canonical_mechanisms` of the records added."""
        return tuple((sigma, rate, n) for (sigma, rate), n in sorted(self.steps.items()))

    def epsilon_key(self) -> EpsilonKey | None:
        """The arguments of the accountant call :func:`recorded_epsilon` makes (None for an
        empty or a distributed-DP history, which :meth:`epsilon` composes itself, cheaply);
        raises as it does for a history it cannot compose."""
        last = self.last
        if last is None or isinstance(last, SkellamRecord):
            return None
        delta = check_delta(last.delta, where="cumulative_epsilon")
        interval = resolve_interval(last.accountant, last.value_discretization_interval)
        check_accountant(last.accountant, interval, where="cumulative_epsilon")
        check_relation(last.neighboring_relation, last.accountant, where="cumulative_epsilon")
        others = sorted(self.relations - {last.neighboring_relation})
        if others:
            raise MalformedPrivacyRecord(
                f"cumulative_epsilon: records under {', '.join(others)} cannot be composed under "
                f"{last.neighboring_relation!r}"
            )
        return self.mechanisms(), delta, last.accountant, interval, last.neighboring_relation

    def epsilon(self) -> float:
        """:func:`recorded_epsilon` of the records added."""
        if len(self.kinds) > 1:
            raise MalformedPrivacyRecord(_MIXED)
        if isinstance(self.last, SkellamRecord):
            return composed_epsilon(sorted(self.releases.items()), delta=self.last.delta)
        key = self.epsilon_key()
        return 0.0 if key is None else _epsilon(*key)


def start_epsilons(keys: Sequence[EpsilonKey | None], executor: Executor
                   ) -> list[tuple[EpsilonKey, Future[float | None]]]:
    """Start the distinct accountant calls ``keys`` not yet memoised on ``executor`` (other
    processes); :func:`finish_epsilons` stores their figures in the memo.

    Only a speed-up: each figure is the same deterministic computation a later call would
    make, so it is the same bits; a key that fails is left for that call to raise.
    """
    todo = [k for k in dict.fromkeys(keys) if k is not None and k not in _EPSILONS]
    return [(key, executor.submit(_epsilon_or_none, key)) for key in todo]


def finish_epsilons(started: Sequence[tuple[EpsilonKey, Future[float | None]]]) -> None:
    """Memoise the figures :func:`start_epsilons` started. Rather than wait idle, this
    process takes back the calls no worker has begun, from the last one backwards (the
    workers take them from the first), and computes them itself."""
    for key, future in reversed(started):
        if future.cancel():
            _epsilon_or_none(key)  # memoised by _epsilon; a failure is raised by the real call
    for key, future in started:
        if future.cancelled():
            continue
        try:
            value = future.result()
        except Exception:  # noqa: BLE001, S112 - a lost worker: the figure is computed when asked for
            continue
        if value is not None:
            _remember(key, value)


def _epsilon_or_none(key: EpsilonKey) -> float | None:
    try:
        return _epsilon(*key)
    except Exception:  # noqa: BLE001 - the caller's own computation raises it
        return None


def recorded_epsilon(records: Sequence[SpendRecord]) -> float:
    """Cumulative ε as its latest record says to compute it (its δ, accountant, discretisation).

    This is the figure a round's ledger entry claims for a client; :func:`verify_claim`
    recomputes it.
    """
    return _recorded_epsilon(tuple(records))


@functools.lru_cache(maxsize=256)
def _recorded_epsilon(records: tuple[SpendRecord, ...]) -> float:
    """:func:`recorded_epsilon`, memoised: it is a pure function of the (frozen) records, and
    in one process a hospital's budget check and the engine's claim for the same round
    compose the very same history."""
    if not records:
        return 0.0
    last = records[-1]
    if len({type(r) for r in records}) > 1:
        raise MalformedPrivacyRecord(_MIXED)
    if isinstance(last, SkellamRecord):
        return _skellam_epsilon(records, delta=last.delta)
    return cumulative_epsilon(
        records,
        delta=last.delta,
        accountant=last.accountant,
        value_discretization_interval=last.value_discretization_interval,
        neighboring_relation=last.neighboring_relation,
    )


def verify_claim(records: Sequence[SpendRecord], claimed_epsilon: float, *, where: str, rel_tol: float = 1e-9) -> float:
    """Recompute :func:`recorded_epsilon` and raise :class:`EpsilonMismatch` unless it equals the claim.

    The same library version reproduces the figure bit for bit; ``rel_tol`` only absorbs
    floating-point differences between machines. A record written with another
    ``dp-accounting`` version is named in the message, since it may explain a difference.
    """
    return verify_summary_claim(HistorySummary.of(records), claimed_epsilon, where=where, rel_tol=rel_tol)


def verify_summary_claim(summary: HistorySummary, claimed_epsilon: float, *, where: str,
                         rel_tol: float = 1e-9) -> float:
    """:func:`verify_claim` of the records folded into ``summary``."""
    actual = summary.epsilon()
    if isinstance(claimed_epsilon, bool) or not isinstance(claimed_epsilon, (int, float)) or not math.isclose(
        float(claimed_epsilon), actual, rel_tol=rel_tol, abs_tol=1e-12
    ):
        versions = sorted(summary.versions - {LIBRARY_VERSION})
        note = f" (records written with {LIBRARY} {', '.join(versions)}, recomputed with {LIBRARY_VERSION})" if versions else ""
        raise EpsilonMismatch(f"{where}: claimed cumulative ε {claimed_epsilon!r}, recomputed {actual!r}{note}")
    return actual
