"""Datasets that ship inside scikit-learn, split the way a federation sees them.

The pipeline is deterministic for a seed:

1. a stratified global **test** split, a **public reference** sample and a **validator**
   hold-out (the data validators use for their quality attestations) are taken first, so
   none of them is seen by clients;
2. the remaining pool is partitioned among N clients, IID or non-IID by label with a
   Dirichlet(α) draw per class (small α: each client sees few labels);
3. each client's share is split into train and validation;
4. features are standardised with the mean and deviation of the public reference sample
   (:class:`Normaliser`), never of client records: statistics of the client pool would
   move when one patient's record changes, outside any DP accounting. The reference
   sample stands for what a real federation takes from a published cohort or registry;
   genesis publishes the constants and their source, so every party and auditor sees them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .ledger.genesis import Normalisation
from .primitives.errors import BflError

if TYPE_CHECKING:
    from .settings import FederationSettings

DATASETS = {"breast_cancer": 2, "digits": 10}
"""The bundled scikit-learn datasets and their numbers of classes (a hospital sizes its
model from genesis without loading any: scikit-learn costs a ClientApp process about a
CPU-second, and one with its own records never needs it; a test checks these counts)."""


def load_bundled(name: str):  # noqa: ANN201 - a scikit-learn Bunch
    """The bundled dataset ``name`` (one of :data:`DATASETS`), as scikit-learn ships it."""
    from sklearn import datasets

    return getattr(datasets, f"load_{name}")()
PARTITIONS = ("iid", "dirichlet")
PUBLIC_FRACTION = 0.05
"""Share of the bundled dataset set aside as the public reference sample (normalisation only)."""


class DataError(BflError, ValueError):
    """Arguments that cannot give a valid federated split."""


@dataclass(frozen=True)
class Split:
    """Features (float32, standardised) and integer labels."""

    features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Normaliser(Normalisation):
    """The constants genesis publishes (:class:`~bfl_private.ledger.genesis.Normalisation`),
    applied to features."""

    def apply(self, features: np.ndarray) -> np.ndarray:
        return ((features - np.asarray(self.mean)) / np.asarray(self.scale)).astype(np.float32)


@dataclass(frozen=True)
class ClientData:
    client_id: str
    train: Split
    validation: Split


@dataclass(frozen=True)
class FederatedDataset:
    name: str
    n_features: int
    n_classes: int
    clients: tuple[ClientData, ...]
    validators: tuple[Split, ...]
    test: Split
    public: Split
    """The public reference sample the normalisation constants come from."""
    normaliser: Normaliser


def client_ids(n_clients: int) -> list[str]:
    """Stable identifiers ``hospital-00``, ``hospital-01``, ..."""
    return [f"hospital-{i:02d}" for i in range(n_clients)]


def _dirichlet_assignment(labels: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Owner of every record: per class, proportions drawn from Dirichlet(α·1)."""
    owner = np.empty(labels.shape[0], dtype=np.int64)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        proportions = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * idx.size).astype(np.int64)
        for client, part in enumerate(np.split(idx, cuts)):
            owner[part] = client
    return owner


def _rebalance(owner: np.ndarray, n_clients: int, minimum: int, rng: np.random.Generator) -> None:
    """Move records from the largest clients until each has ``minimum`` records.

    A Dirichlet draw with small α can leave a client empty; a hospital with no data
    cannot train, so it receives records taken at random from the largest clients.
    """
    counts = np.bincount(owner, minlength=n_clients)
    for client in np.flatnonzero(counts < minimum):
        while counts[client] < minimum:
            donor = int(np.argmax(counts))
            record = rng.choice(np.flatnonzero(owner == donor))
            owner[record] = client
            counts[donor] -= 1
            counts[client] += 1


def load_federated(
    name: str = "breast_cancer",
    *,
    n_clients: int = 10,
    partition: str = "dirichlet",
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
    public_fraction: float = PUBLIC_FRACTION,
    validator_fraction: float = 0.1,
    n_validators: int = 4,
    validation_fraction: float = 0.2,
    min_records: int = 10,
) -> FederatedDataset:
    """Load a bundled dataset and split it into clients, validators and a test set.

    Every client ends up with at least ``min_records`` records (train + validation), so
    a skewed Dirichlet draw never leaves a hospital with nothing to train on.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if partition not in PARTITIONS:
        raise DataError(f"unknown partition {partition!r}; choose one of {', '.join(PARTITIONS)}")
    if partition == "dirichlet" and not (np.isfinite(alpha) and alpha > 0):
        raise DataError(f"Dirichlet concentration alpha must be > 0, got {alpha!r}")
    for label, fraction in (("test_fraction", test_fraction), ("public_fraction", public_fraction),
                            ("validator_fraction", validator_fraction), ("validation_fraction", validation_fraction)):
        if not 0 < fraction < 1:
            raise DataError(f"{label} must be in (0, 1), got {fraction!r}")
    if n_clients < 1 or n_validators < 1:
        raise DataError(f"need at least one client and one validator, got {n_clients} and {n_validators}")

    from sklearn.model_selection import train_test_split

    bunch = load_bundled(name)
    features = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    n_classes = int(labels.max()) + 1

    pool_x, test_x, pool_y, test_y = train_test_split(
        features, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    pool_x, public_x, pool_y, public_y = train_test_split(
        pool_x, pool_y, test_size=public_fraction / (1 - test_fraction), stratify=pool_y, random_state=seed + 2
    )
    pool_x, holdout_x, pool_y, holdout_y = train_test_split(
        pool_x, pool_y, test_size=validator_fraction, stratify=pool_y, random_state=seed + 1
    )
    if min_records < 2:
        raise DataError(f"min_records must be >= 2 (one train and one validation record), got {min_records}")
    per_client = min_records
    if pool_y.size < n_clients * per_client:
        raise DataError(
            f"{name} leaves {pool_y.size} records for clients: at most {pool_y.size // per_client} "
            f"clients can get {per_client} records each, asked for {n_clients}"
        )
    if holdout_y.size < n_validators:
        raise DataError(f"{name} leaves {holdout_y.size} hold-out records, fewer than {n_validators} validators")

    normaliser = _public_normaliser(public_x, f"public reference sample of the bundled {name} dataset, held by no client")
    standardise = normaliser.apply

    rng = np.random.default_rng(seed)
    if partition == "iid":
        owner = rng.permutation(pool_y.size) % n_clients
    else:
        owner = _dirichlet_assignment(pool_y, n_clients, alpha, rng)
    _rebalance(owner, n_clients, per_client, rng)

    clients = [_client_data(cid, pool_x[owner == client], pool_y[owner == client], normaliser,
                            validation_fraction, rng)
               for client, cid in enumerate(client_ids(n_clients))]
    validator_parts = np.array_split(rng.permutation(holdout_y.size), n_validators)
    validators = tuple(Split(standardise(holdout_x[p]), holdout_y[p]) for p in validator_parts)
    return FederatedDataset(
        name=name,
        n_features=int(features.shape[1]),
        n_classes=n_classes,
        clients=tuple(clients),
        validators=validators,
        test=Split(standardise(test_x), test_y),
        public=Split(standardise(public_x), public_y),
        normaliser=normaliser,
    )


def _public_normaliser(public_x: np.ndarray, source: str) -> Normaliser:
    scale = public_x.std(axis=0)
    scale[scale == 0] = 1.0
    return Normaliser(source=source, records=int(public_x.shape[0]),
                      mean=tuple(float(v) for v in public_x.mean(axis=0)), scale=tuple(float(v) for v in scale))


def _client_data(client_id: str, features: np.ndarray, labels: np.ndarray, normaliser: Normaliser,
                 validation_fraction: float, rng: np.random.Generator) -> ClientData:
    """One hospital's records, shuffled and split into train and validation, standardised."""
    idx = rng.permutation(labels.size)
    n_val = max(1, round(validation_fraction * idx.size))
    val, train = idx[:n_val], idx[n_val:]
    return ClientData(client_id=client_id,
                      train=Split(normaliser.apply(features[train]), labels[train]),
                      validation=Split(normaliser.apply(features[val]), labels[val]))


def federation_data(settings: FederationSettings) -> FederatedDataset:
    """The split a federation's genesis settings fix: every party re-derives the same one."""
    if settings.csv is not None:
        from .csvdata import load_csv

        return load_csv(settings.csv, seed=settings.data_seed, n_validators=settings.n_validators).dataset
    return load_federated(
        settings.dataset,
        n_clients=settings.n_clients,
        partition=settings.partition,
        alpha=settings.alpha,
        seed=settings.data_seed,
        n_validators=settings.n_validators,
    )
