"""Own keys (issue 15, item 1): every party keeps its keys in its own folder.

We run as root, so file modes cannot stop the coordinator reading another party's folder.
A Python audit hook does instead: while it is armed, any open, listing, rename, removal,
chmod or mkdir of a path under ``parties/`` is refused (PermissionError) unless it is in
the coordinator's own folder or made by that folder's party object itself
(:func:`bfl_private.parties.acting_party`). A whole round runs under it; a coordinator
that loads another party's key the old way fails under it.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bfl_private.ledger.identity import SigningIdentity
from bfl_private.ledger.store import Ledger
from click.testing import CliRunner

from bfl_private.audit import audit
from bfl_private.cli import EXIT_USAGE
from bfl_private.cli import main as cli_main
from bfl_private.coordinator import Federation
from bfl_private.rounds.hospital import HISTORY_FILE, PARTICIPATION_FILE, RECORDS_LOCK_FILE
from bfl_private.keyring import Keyring, KeyringError
from bfl_private.validator import BEACONS_FILE, COSIGNED_FILE
from bfl_private.parties import (
    COORDINATOR,
    IDENTITY_FILE,
    LEGACY_KEYS_DIR,
    PAILLIER_SHARE_FILE,
    PARTIES_DIR,
    LegacyKeyLayout,
    LocalHospital,
    Registration,
    acting_party,
    enrol,
    party_folder,
)
from bfl_private.parties import main as parties_main
from bfl_private.settings import FederationSettings, ProtocolSettings

_GUARDED_EVENTS = {"open", "os.listdir", "os.scandir", "os.rename", "os.remove", "os.chmod", "os.mkdir"}
_guard: dict[str, Path | None] = {"parties": None}
"""The ``parties/`` folder the armed hook protects; None while disarmed."""


def _refuse_other_folders(event: str, args: tuple[Any, ...]) -> None:
    root = _guard["parties"]
    if root is None or event not in _GUARDED_EVENTS:
        return
    for arg in args:
        if not isinstance(arg, (str, bytes, os.PathLike)):
            continue  # a file descriptor, a mode, flags
        path = Path(os.path.abspath(os.fsdecode(arg)))
        if path != root and root not in path.parents:
            continue
        owner = path.relative_to(root).parts[0] if path != root else None  # None: parties/ itself
        if owner is None or owner not in (COORDINATOR, acting_party()):
            raise PermissionError(f"{event} {path}: the coordinator may not touch another party's folder")


sys.addaudithook(_refuse_other_folders)  # hooks cannot be removed; disarmed it does nothing


@contextmanager
def coordinator_only(directory: Path) -> Iterator[None]:
    """While inside, the process may touch only parties/coordinator/, or a party its own folder."""
    _guard["parties"] = Path(os.path.abspath(Path(directory) / PARTIES_DIR))
    try:
        yield
    finally:
        _guard["parties"] = None


def _settings() -> FederationSettings:
    return dataclasses.replace(FederationSettings(n_clients=3), protocol=ProtocolSettings(paillier_key_bits=2048))


def _round(fed: Federation, protocol: str) -> str:
    plan = fed.plan(epsilon=0.5, rounds=1, skip_exhausted=False)
    return fed.run_round(plan, protocol=protocol, dropout=0.0, malicious=0, rng=np.random.default_rng(1)).status


@pytest.fixture(scope="module")
def guarded_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation that ran a masking and a Paillier round (dealing included) with the
    coordinator confined to its own folder, from opening to closing."""
    directory = tmp_path_factory.mktemp("parties") / "fed"
    Federation.create(directory, _settings(), model_seed=0).close()
    with coordinator_only(directory):
        fed = Federation.open(directory)
        try:
            statuses = [_round(fed, "masking"), _round(fed, "paillier")]
        finally:
            fed.close()
    assert statuses == ["accepted", "accepted"]
    return directory


def test_a_whole_round_runs_with_every_other_party_folder_closed_to_the_coordinator(guarded_federation: Path) -> None:
    assert audit(guarded_federation).ok
    # The Paillier round dealt under the guard: the shares went to the validators' folders.
    assert all((party_folder(guarded_federation, f"validator-{i}") / PAILLIER_SHARE_FILE).exists() for i in range(4))


def test_the_guard_refuses_a_coordinator_reading_another_party_key(guarded_federation: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hospital = party_folder(guarded_federation, "hospital-00")
    with coordinator_only(guarded_federation):
        with pytest.raises(KeyringError, match="unreadable.*may not touch another party's folder"):
            Keyring(hospital).load(IDENTITY_FILE)  # the old-style load, from the coordinator's code
        with pytest.raises(PermissionError):
            os.listdir(guarded_federation / PARTIES_DIR)
        Keyring(party_folder(guarded_federation, COORDINATOR)).load(IDENTITY_FILE)  # its own folder is open

    copy = guarded_federation.parent / "copy"
    shutil.copytree(guarded_federation, copy)

    # A round whose hospitals' code runs as the coordinator (not as each hospital acting
    # from its own folder) fails under the guard.
    monkeypatch.setattr(LocalHospital, "acting", lambda self: contextlib.nullcontext())
    with coordinator_only(copy):
        fed = Federation.open(copy)
        try:
            with pytest.raises(KeyringError, match="may not touch another party's folder"):
                _round(fed, "masking")
        finally:
            fed.close()


def test_party_folders_are_private_and_the_ledger_holds_no_private_key(guarded_federation: Path) -> None:
    parties = guarded_federation / PARTIES_DIR
    folders = sorted(parties.iterdir())
    assert [f.name for f in folders] == [COORDINATOR, "hospital-00", "hospital-01", "hospital-02", "paillier-dealer",
                                         *(f"validator-{i}" for i in range(4))]
    assert sorted(p.name for p in (parties / "paillier-dealer").iterdir()) == ["paillier-modulus-proof.json"]
    assert all(f.stat().st_mode & 0o777 == 0o700 for f in folders)
    files = [p for f in folders for p in f.iterdir()]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)
    secrets: list[bytes] = []
    for path in files:
        if path.name == IDENTITY_FILE:
            seed = path.read_bytes()
            secrets += [seed, seed.hex().encode(), base64.b64encode(seed)]
        elif path.name == PAILLIER_SHARE_FILE:
            secrets.append(json.loads(path.read_bytes())["share"].encode())
    assert len(secrets) == 3 * 8 + 4
    public = [guarded_federation / "ledger.sqlite3", *(p for p in (guarded_federation / "blobs").rglob("*") if p.is_file())]
    for path in public:
        data = path.read_bytes()
        assert not any(secret in data for secret in secrets), f"{path} holds a private key"
    # Genesis registered exactly the public keys the parties made in their folders.
    with Ledger.open(guarded_federation) as ledger:
        genesis = ledger.genesis().payload
    registered = {genesis["coordinator"]["id"]: genesis["coordinator"]["vkey"],
                  **{m["id"]: m["vkey"] for m in genesis["clients"] + genesis["validators"]}}
    assert registered == {f.name: SigningIdentity.from_private_bytes(f.name, (f / IDENTITY_FILE).read_bytes()).public.vkey()
                          for f in folders if (f / IDENTITY_FILE).exists()}


def test_enrol_makes_the_key_in_the_party_folder_and_returns_only_its_registration(tmp_path: Path) -> None:
    folder = tmp_path / "hospital-07"
    registration = enrol(folder, "hospital-07", "hospital")
    assert Registration.from_json(json.loads(json.dumps(registration.to_json()))) == registration
    assert set(registration.to_json()) == {"party", "role", "vkey"}
    assert folder.stat().st_mode & 0o777 == 0o700 and (folder / IDENTITY_FILE).stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeyringError, match="already holds an identity key"):
        enrol(folder, "hospital-07", "hospital")
    with pytest.raises(KeyringError, match="role 'auditor' is not one of"):
        Registration("x", "auditor", registration.vkey)


def test_an_old_single_keys_folder_is_refused_by_name_then_migrated(guarded_federation: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The layout before party folders: every secret in DIR/keys/, named by party."""
    old = guarded_federation.parent / "old"
    shutil.copytree(guarded_federation, old)
    legacy = Keyring(old / LEGACY_KEYS_DIR)
    for folder in sorted((old / PARTIES_DIR).iterdir()):
        for path in folder.iterdir():
            if path.name in (COSIGNED_FILE, BEACONS_FILE, HISTORY_FILE, PARTICIPATION_FILE, RECORDS_LOCK_FILE):
                continue  # what a validator signed, a hospital's own records: younger than party folders
            name = {IDENTITY_FILE: f"{folder.name}.ed25519", PAILLIER_SHARE_FILE: f"paillier-share.{folder.name}.json",
                    }.get(path.name, path.name)
            legacy.store(name, path.read_bytes())
    shutil.rmtree(old / PARTIES_DIR)
    with pytest.raises(LegacyKeyLayout, match=f"python -m bfl_private.parties migrate {old}$"):
        Federation.open(old)
    refused = CliRunner().invoke(cli_main, ["round", "--epsilon", "0.5", "--rounds", "1", "--dir", str(old)])
    assert refused.exit_code == EXIT_USAGE
    assert refused.stderr.splitlines() == [(f"error: {old}: every party's keys are in one keys/ folder; move them "
                                           f"into one folder per party with: python -m bfl_private.parties migrate {old}")]
    assert parties_main(["migrate", str(old)]) == 0
    assert "validator-0\tidentity.ed25519, paillier-share.json" in capsys.readouterr().out
    assert not (old / LEGACY_KEYS_DIR).exists()
    with coordinator_only(old):
        fed = Federation.open(old)
        try:
            assert _round(fed, "paillier") == "accepted"  # the migrated shares decrypt, no new dealing
        finally:
            fed.close()
    assert audit(old).ok
