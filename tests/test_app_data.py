import numpy as np
import pytest

from bfl_private.data import DATASETS, DataError, load_bundled, load_federated


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
@pytest.mark.parametrize("name", ["breast_cancer", "digits"])
def test_partitions_are_disjoint_and_cover_the_data(name, partition):
    d = load_federated(name, n_clients=7, partition=partition, seed=3)
    rows = [c.train.features for c in d.clients] + [c.validation.features for c in d.clients]
    rows += [v.features for v in d.validators] + [d.test.features, d.public.features]
    stacked = np.concatenate(rows)
    total = {"breast_cancer": 569, "digits": 1797}[name]
    assert stacked.shape[0] == total and len(d.public) == d.normaliser.records
    # Disjoint: no record appears twice (digits has a few duplicate images, so compare
    # multiplicities against the raw data instead of asserting uniqueness).
    from sklearn.datasets import load_breast_cancer, load_digits

    raw = (load_breast_cancer if name == "breast_cancer" else load_digits)().data
    assert np.unique(raw, axis=0).shape[0] == np.unique(stacked, axis=0).shape[0]


def test_same_seed_same_partition_and_other_seed_differs():
    a, b, c = (load_federated(seed=s) for s in (5, 5, 6))
    for x, y in zip(a.clients, b.clients):
        np.testing.assert_array_equal(x.train.features, y.train.features)
    assert any(len(x.train) != len(z.train) for x, z in zip(a.clients, c.clients))


def test_standardisation_uses_the_public_reference_sample_only():
    # The records held by nobody (no client, validator or test split) are the reference
    # sample; the published constants are exactly their mean and deviation, so no client
    # record moves them.
    from sklearn.datasets import load_breast_cancer

    d = load_federated(seed=1)
    raw = load_breast_cancer().data
    norm = d.normaliser
    held = np.concatenate([c.train.features for c in d.clients] + [c.validation.features for c in d.clients]
                          + [v.features for v in d.validators] + [d.test.features])
    standardised = norm.apply(raw)
    unheld = ~np.any(np.all(np.isclose(standardised[:, None, :], held[None, :, :], atol=1e-5), axis=2), axis=1)
    assert unheld.sum() == norm.records
    np.testing.assert_allclose(norm.mean, raw[unheld].mean(axis=0))
    np.testing.assert_allclose(norm.scale, raw[unheld].std(axis=0))
    np.testing.assert_allclose(d.public.features, standardised[unheld][np.lexsort(standardised[unheld].T)][
        np.argsort(np.lexsort(d.public.features.T))], atol=1e-5)
    assert "public reference sample" in norm.source and norm.to_json()["records"] == norm.records


def test_dirichlet_small_alpha_is_skewed_and_every_client_has_records():
    d = load_federated(n_clients=10, alpha=0.1, seed=0, min_records=10)
    shares = [np.bincount(c.train.labels, minlength=2) / len(c.train) for c in d.clients]
    assert max(abs(s[0] - s[1]) for s in shares) > 0.8
    assert all(len(c.train) + len(c.validation) >= 10 for c in d.clients)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_clients": 1000}, "at most 38 clients"),
        ({"alpha": 0.0}, "alpha must be > 0"),
        ({"alpha": -1.0}, "alpha must be > 0"),
        ({"name": "mnist"}, "unknown dataset 'mnist'"),
        ({"partition": "zipf"}, "unknown partition"),
        ({"test_fraction": 1.5}, "test_fraction"),
    ],
)
def test_bad_arguments_fail_clearly(kwargs, message):
    with pytest.raises(DataError, match=message):
        load_federated(**kwargs)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_bundled_class_counts_are_the_datasets_own(name):
    """Hospitals size their model from DATASETS without loading scikit-learn: the counts must be the data's."""
    bunch = load_bundled(name)
    assert DATASETS[name] == int(np.max(bunch.target)) + 1 == len(np.unique(bunch.target))
