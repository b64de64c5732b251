"""The parameters a federation is created with, fixed in its genesis entry.

Torch-free on purpose: the auditor reads them back from the ledger to re-derive every
model and privacy claim.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ledger.beacon import RANDOMNESS_BEACON, RANDOMNESS_LEGACY
from .primitives.errors import BflError
from .privacy.accounting import DEFAULT_RELATION, check_accountant, check_relation, resolve_interval
from .privacy.errors import PrivacyError

PROTOCOLS = ("plain", "masking", "paillier", "ckks")
PRIVACY_MODES = ("local", "distributed")
DISTRIBUTED_PROTOCOLS = ("masking", "paillier")
"""Protocols whose sum is exact in the integer ring that distributed DP's shares live in."""
DISTRIBUTED_SAMPLE_RATE = 1.0
"""The sample rate ``round`` gives a distributed-DP federation unless one is asked for: one
full-batch gradient per round. Chosen on tuning runs apart from the reported ones (5 fresh
seeds, ε = 1, 40 rounds: q = 1 gave 0.961 ± 0.016 test accuracy, q = 0.5 0.946, q = 0.25
0.909); local DP-SGD keeps ``PrivacySettings.sample_rate``'s 0.25."""
PAILLIER_KEY_BITS = (2048, 3072)
"""Paillier key sizes a federation may fix at genesis (about 112- and 128-bit security)."""


class SettingsError(BflError, ValueError):
    """Federation parameters that are inconsistent or out of range."""


def _positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise SettingsError(f"{type(owner).__name__}.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class TrainingConfig:
    """Local training and update-encoding settings shared by every client."""

    model: str = "logreg"
    local_steps: int = 3
    batch_size: int = 16
    """Mini-batch size of non-private training (DP-SGD samples with ``PrivacySettings.sample_rate``)."""
    optimizer: str = "adam"
    learning_rate: float = 0.05
    update_bound: float = 1.0
    """Each coordinate of a client's weighted update is clipped to [-bound, bound]."""
    server_learning_rate: float = 1.0

    def __post_init__(self) -> None:
        _positive(self, "local_steps", "batch_size", "learning_rate", "update_bound", "server_learning_rate")
        if self.optimizer not in ("sgd", "adam"):
            raise SettingsError(f"TrainingConfig.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not self.update_bound >= 1:
            # The FedAvg weight (up to 1) travels in the same clipped vector as the update.
            raise SettingsError(f"TrainingConfig.update_bound must be >= 1 (the weight, up to 1, is encoded "
                                f"within it), got {self.update_bound!r}")


@dataclass(frozen=True)
class PrivacySettings:
    """DP-SGD parameters; σ is planned per command from the ε it may spend."""

    delta: float = 1e-5
    lifetime_epsilon: float = 3.0
    sample_rate: float = 0.25
    clipping_norm: float = 1.0
    accountant: str = "pld"
    neighboring_relation: str = DEFAULT_RELATION
    """The unit of privacy is one record of one hospital, and record counts are public: the
    relation must hold with n fixed (zero-out by default; see the accounting module)."""
    mode: str = "local"
    """``local``: each hospital trains with DP-SGD and adds the full noise itself.
    ``distributed``: each round each hospital sends its Poisson-sampled, clipped, rounded
    gradient sum plus a Skellam *share* of the noise inside the secure sum, and the server's
    optimiser (``training.optimizer`` at ``training.learning_rate``) steps on the noisy total
    (:mod:`bfl_private.distributed_round`)."""
    collusion_threshold: int = 2
    """Distributed mode: t, the participants that may drop out or collude with the aggregator
    while the sum still carries the planned noise (each share is sized for N - t). A round
    with more than t dropouts is aborted before its sum is decoded."""
    rounding_beta: float = 0.6065306597126334
    """Distributed mode: conditional rounding's β (e^-0.5, as Kairouz et al. use)."""

    def __post_init__(self) -> None:
        _positive(self, "delta", "lifetime_epsilon", "sample_rate", "clipping_norm")
        if not self.sample_rate <= 1:
            raise SettingsError(f"PrivacySettings.sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if self.mode not in PRIVACY_MODES:
            raise SettingsError(f"PrivacySettings.mode must be one of {', '.join(PRIVACY_MODES)}, got {self.mode!r}")
        if isinstance(self.collusion_threshold, bool) or not isinstance(self.collusion_threshold, int) \
                or self.collusion_threshold < 0:
            raise SettingsError(f"PrivacySettings.collusion_threshold must be an integer >= 0, got "
                                f"{self.collusion_threshold!r}")
        if not 0 < self.rounding_beta < 1:
            raise SettingsError(f"PrivacySettings.rounding_beta must be in (0, 1), got {self.rounding_beta!r}")
        if self.mode == "distributed" and self.neighboring_relation != DEFAULT_RELATION:
            raise SettingsError(f"distributed DP is accounted under {DEFAULT_RELATION!r} neighbours only, got "
                                f"{self.neighboring_relation!r}")
        try:
            check_accountant(self.accountant, resolve_interval(self.accountant, None), where="PrivacySettings")
            check_relation(self.neighboring_relation, self.accountant, where="PrivacySettings")
        except PrivacyError as exc:
            raise SettingsError(str(exc)) from None


@dataclass(frozen=True)
class ProtocolSettings:
    """Secure-aggregation parameters."""

    name: str = "masking"
    bits: int = 16
    neighbours: int | None = None
    """SecAgg+ neighbour degree k; None lets the protocol choose its documented default."""
    paillier_key_bits: int = 3072
    """The federation's Paillier key size, fixed at genesis: 3072 (128-bit security) or 2048
    (about 112). Hospitals refuse a key of any other size, whatever a round says."""

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise SettingsError(f"unknown protocol {self.name!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.paillier_key_bits not in PAILLIER_KEY_BITS:
            raise SettingsError(f"paillier_key_bits must be one of {PAILLIER_KEY_BITS}, got {self.paillier_key_bits!r}")


@dataclass(frozen=True)
class RewardSettings:
    """Integer token amounts used by the ledger's reward contract."""

    reward_per_round: int = 1000
    penalty_invalid: int = 100
    penalty_dropout: int = 10
    validator_reward: int = 10


def validator_ids(n: int) -> list[str]:
    """The validators' names, which are also their abscissas in the threshold Paillier key."""
    return [f"validator-{i}" for i in range(n)]


@dataclass(frozen=True)
class CsvSource:
    """A federation on the user's own CSV data (``dataset = "csv"``).

    Either one file per hospital (``hospitals``, in hospital order) or one ``file`` whose
    ``split_column`` names each record's hospital. ``public`` is a public reference sample
    with the same columns (a published cohort or registry extract, held by no client): the
    normalisation constants, the validators' quality hold-outs and the reported test
    accuracy come from it, never from a hospital's records. Paths are absolute (the config
    loader resolves them against the config file's directory)."""

    label: str
    public: str
    hospitals: tuple[str, ...] = ()
    file: str | None = None
    split_column: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hospitals", tuple(self.hospitals))  # JSON gives lists
        if not self.label or not self.public:
            raise SettingsError("CsvSource needs a label column and a public reference file")
        if bool(self.hospitals) == (self.file is not None):
            raise SettingsError("CsvSource takes either hospitals (one file each) or file with split_column, not both")
        if self.file is not None and not self.split_column:
            raise SettingsError("CsvSource.file needs split_column: the column naming each record's hospital")
        if self.hospitals and self.split_column is not None:
            raise SettingsError("CsvSource.split_column goes with file, not with one file per hospital")


@dataclass(frozen=True)
class CsvDescription:
    """What genesis publishes about CSV data, derived from the files when it is written and
    re-derived (and compared) whenever the federation is opened again."""

    features: tuple[str, ...]
    """Feature columns, in model input order."""
    classes: tuple[str, ...]
    """Label values, in class-index order (taken from the public sample)."""
    sources: tuple[str, ...]
    """Per hospital, in hospital order: its file, or its value of the split column."""
    public_sha256: str
    """SHA-256 of the public reference file (it is public)."""
    commitments: tuple[str, ...]
    """Per private file: HMAC-SHA256 of its bytes under a secret key the coordinator keeps
    in its folder ``parties/coordinator/``. It binds the federation to the exact files
    without publishing a hash an outsider could test a guessed file against."""

    def __post_init__(self) -> None:
        for name in ("features", "classes", "sources", "commitments"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class FederationSettings:
    dataset: str = "breast_cancer"
    n_clients: int = 10
    partition: str = "dirichlet"
    alpha: float = 0.5
    data_seed: int = 0
    n_validators: int = 4
    quality_tolerance: float = 0.1
    """A round whose model is worse than the previous one by more than this is rejected.

    It must exceed the sampling noise of a validator's small hold-out (about a dozen
    records here, where one record is 8 points): the gate is there to stop garbage and
    poisoned updates, which cost far more, not to veto ordinary DP noise."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)
    rewards: RewardSettings = field(default_factory=RewardSettings)
    csv: CsvSource | None = None
    """The user's CSV data when ``dataset == "csv"``."""
    csv_description: CsvDescription | None = None
    """Filled in at genesis from the CSV files; never set by hand."""
    round_randomness: str = RANDOMNESS_BEACON
    """Where round seeds come from (:mod:`bfl_private.ledger.beacon`): every new federation
    uses the validators' beacon; a genesis written before the rule existed lacks the field
    and reads as ``legacy-head-hash``, under which its ledger is still verified."""

    def __post_init__(self) -> None:
        if (self.dataset == "csv") != (self.csv is not None):
            raise SettingsError('dataset "csv" goes with a [csv] table (label, public, hospitals or '
                                'file and split_column), and a [csv] table with dataset = "csv"')
        if self.n_clients < 2:
            raise SettingsError(f"a federation needs at least 2 clients, got {self.n_clients}")
        if self.n_validators < 1:
            raise SettingsError(f"a federation needs at least 1 validator, got {self.n_validators}")
        if not 0 <= self.quality_tolerance < 1:
            raise SettingsError(f"quality_tolerance must be in [0, 1), got {self.quality_tolerance!r}")
        if self.round_randomness not in (RANDOMNESS_BEACON, RANDOMNESS_LEGACY):
            raise SettingsError(f"round_randomness must be {RANDOMNESS_BEACON!r} (or {RANDOMNESS_LEGACY!r}, "
                                f"read from an old genesis), got {self.round_randomness!r}")
        if self.privacy.mode == "distributed":
            if self.protocol.name not in DISTRIBUTED_PROTOCOLS:
                raise SettingsError(f"distributed DP needs a secure sum that is exact in the integer ring "
                                    f"({', '.join(DISTRIBUTED_PROTOCOLS)}), not {self.protocol.name!r}")
            if not self.privacy.collusion_threshold < self.n_clients - 1:
                raise SettingsError(f"collusion_threshold {self.privacy.collusion_threshold} leaves fewer than 2 "
                                    f"honest hospitals' noise among {self.n_clients}: it must be below "
                                    f"{self.n_clients - 1}")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["round_randomness"] == RANDOMNESS_LEGACY:
            del data["round_randomness"]  # as the old genesis had it: no rule named
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FederationSettings:
        try:
            nested: dict[str, Any] = {
                "training": TrainingConfig(**data["training"]),
                "privacy": PrivacySettings(**data["privacy"]),
                "protocol": ProtocolSettings(**data["protocol"]),
                "rewards": RewardSettings(**data["rewards"]),
                **{name: None if data.get(name) is None else cls_(**data[name])
                   for name, cls_ in (("csv", CsvSource), ("csv_description", CsvDescription))},
            }
            flat = {k: v for k, v in data.items() if k not in nested}
            # A genesis from before the beacon rule names none: its seeds were the head hash's.
            # Naming the legacy rule is no genesis we ever wrote: a new federation cannot opt out.
            if flat.get("round_randomness", RANDOMNESS_BEACON) != RANDOMNESS_BEACON:
                raise SettingsError(f"genesis round_randomness {flat['round_randomness']!r}: a genesis names "
                                    f"{RANDOMNESS_BEACON!r} or no rule (a ledger from before the beacon)")
            flat.setdefault("round_randomness", RANDOMNESS_LEGACY)
            return cls(**flat, **nested)
        except (KeyError, TypeError) as exc:
            raise SettingsError(f"genesis federation settings are malformed: {exc}") from exc
