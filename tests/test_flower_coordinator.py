"""The coordinator's side alone (what a Flower ServerApp runs): with every validator in its
own process it loads no dataset, holds no hospital key, and its rounds verify."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from test_flower_round import make_federation
from validator_fixtures import served

import bfl_private.coordinator as coordinator_module
import bfl_private.data as data_module
from bfl_private.audit import audit
from bfl_private.coordinator import Coordinator, Federation
from bfl_private.rounds.loopback import LoopbackTransport
from bfl_private.rounds.engine import RoundEngine

VALIDATORS = [f"validator-{i}" for i in range(4)]


def test_a_coordinator_whose_validators_run_apart_loads_no_dataset(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    federation, hospitals = make_federation(tmp_path)
    directory = federation.directory
    federation.close()
    with ExitStack() as stack:
        # Each validator loads its own hold-out split where it runs (here: before the guard).
        addresses = {name: stack.enter_context(served(directory, name)) for name in VALIDATORS}

        def no_dataset(*args: object, **kwargs: object) -> None:
            raise AssertionError("the coordinator loaded the federation's dataset")

        monkeypatch.setattr(data_module, "federation_data", no_dataset)
        monkeypatch.setattr(coordinator_module, "federation_data", no_dataset)
        coordinator = Coordinator.open(directory, remote_validators=addresses)
        try:
            assert not isinstance(coordinator, Federation)
            assert coordinator.round_parties.validators == []
            plan = coordinator.plan(epsilon=2.0, rounds=1, skip_exhausted=False)
            summary = RoundEngine(coordinator, plan, LoopbackTransport(hospitals)).run()
        finally:
            coordinator.close()
        assert summary.status in ("accepted", "rejected") and summary.test_accuracy is None
        assert len(summary.survivors) == len(hospitals)
    monkeypatch.undo()
    result = audit(directory)
    assert result.ok, result.report.render()
