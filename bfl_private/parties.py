"""The federation's parties, each with its own folder of secrets: enrolment and the in-process stand-ins.

Every party keeps its secrets in its own folder, ``DIR/parties/<name>/`` (mode 0700,
files 0600, through :class:`~bfl_private.keyring.Keyring`)::

    parties/coordinator/      identity.ed25519, csv-commitment-key (CSV federations),
                              round-opening.pending, round.pending, block.pending (what
                              it must still record: see Coordinator.settle_interrupted_round)
    parties/hospital-00/      identity.ed25519 (a Flower hospital's bundle is this folder's key)
    parties/validator-0/      identity.ed25519, beacons.json and last-cosigned.json (what it
                              signed: one opening per round, one block per height),
                              paillier-share.json (after the first Paillier
                              round), chain.secp256k1 (``--chain``); the home of any further
                              per-validator state
    parties/paillier-dealer/  paillier-modulus-proof.json (public) once it has dealt
    parties/ckks-key-holder/  ckks-key.bin (the CKKS secret context)

A party generates its own identity key in its own folder (:func:`enrol`, the code a remote
party runs too) and hands over only its :class:`Registration`; the coordinator writes
genesis from those public records. (The Flower setup enrols each hospital in its folder on
the operator's machine, then moves the key out into the hospital's bundle.) In the in-process federation each party is an object
built from its own folder (:class:`LocalHospital`, the validators, :class:`PaillierDealer`,
:class:`CkksKeyHolderParty`); the coordinator calls them (sign this submission, attest,
co-sign, deal, decrypt) and never opens another party's folder. While a party object
touches its folder it marks itself as the party acting (:func:`acting_party`), which is
what lets a test's audit hook refuse any other access to ``parties/`` during a round.

The Paillier dealer is a TRUSTED DEALER: while dealing it knows p and q and could decrypt
alone; it hands each validator its share (the validator stores it in its own folder),
keeps only the public modulus proof and forgets p and q when it returns. A dealer-free
generation exists (:mod:`~bfl_private.protocols.paillier_dkg`) but the federation does not
use it.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rfc8785

from .keyring import Keyring, KeyringError
from .ledger.entries import Entry
from .ledger.identity import SigningIdentity, VerifyingKey
from .primitives.errors import BflError

if TYPE_CHECKING:  # the HE libraries load only when a round uses them
    from contextlib import AbstractContextManager

    from .protocols.ckks import CkksKeyHolder
    from .protocols.paillier_committee import ShareHolder
    from .protocols.paillier_modulus import ModulusProof
    from .protocols.threshold_paillier import KeyShare

PARTIES_DIR = "parties"
LEGACY_KEYS_DIR = "keys"
"""The single keyring of federations made before parties had folders (see :func:`migrate`)."""
COORDINATOR = "coordinator"
PAILLIER_DEALER = "paillier-dealer"
CKKS_KEY_HOLDER = "ckks-key-holder"
IDENTITY_FILE = "identity.ed25519"
CHAIN_KEY_FILE = "chain.secp256k1"
PAILLIER_SHARE_FILE = "paillier-share.json"
PAILLIER_MODULUS_PROOF_FILE = "paillier-modulus-proof.json"
CKKS_KEY_FILE = "ckks-key.bin"
CSV_COMMITMENT_KEY_FILE = "csv-commitment-key"
ROLES = ("coordinator", "hospital", "validator")

_acting: ContextVar[str | None] = ContextVar("bfl_acting_party", default=None)


class LegacyKeyLayout(KeyringError):
    """A federation directory with the old single ``keys/`` folder instead of ``parties/``."""


def acting_party() -> str | None:
    """The party whose own code is running now (None: the coordinator's or anyone else's)."""
    return _acting.get()


def party_folder(directory: Path, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise KeyringError(f"bad party name {name!r}")
    return Path(directory) / PARTIES_DIR / name


def check_layout(directory: Path) -> None:
    """Refuse (LegacyKeyLayout) a federation whose secrets still sit in one ``keys/`` folder."""
    directory = Path(directory)
    # Whenever keys/ is there, even beside parties/ (a migration cut short): what is left in it
    # is secret, and "DIR minus parties/" would hand it to an auditor.
    if (directory / LEGACY_KEYS_DIR).is_dir():
        raise LegacyKeyLayout(f"every party's keys are in one {LEGACY_KEYS_DIR}/ folder; move them into one folder "
                              f"per party with: python -m bfl_private.parties migrate {directory}")


@dataclass(frozen=True)
class Registration:
    """What a party hands the coordinator for genesis: its name, role and public key only."""

    party: str
    role: str
    vkey: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise KeyringError(f"registration of {self.party!r}: role {self.role!r} is not one of {', '.join(ROLES)}")
        VerifyingKey.from_vkey(self.vkey)

    def to_json(self) -> dict[str, str]:
        return {"party": self.party, "role": self.role, "vkey": self.vkey}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Registration:
        try:
            return cls(str(record["party"]), str(record["role"]), str(record["vkey"]))
        except (KeyError, TypeError) as exc:
            raise KeyringError(f"registration record lacks {exc}") from None


def enrol(folder: Path, name: str, role: str) -> Registration:
    """Generate party ``name``'s Ed25519 identity in its own ``folder`` (refusing to replace
    one) and return its public registration: the one step a party runs before genesis."""
    keys = Keyring(folder)
    with _acting_as(name):
        if keys.holds(IDENTITY_FILE):
            raise KeyringError(f"{folder} already holds an identity key; {name} is enrolled")
        identity = SigningIdentity.generate(name)
        keys.store(IDENTITY_FILE, identity.private_bytes())
    return Registration(name, role, identity.public.vkey())


@contextmanager
def _acting_as(name: str) -> Iterator[None]:
    token = _acting.set(name)
    try:
        yield
    finally:
        _acting.reset(token)


class Party:
    """A party built from its own folder; only its methods touch that folder."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self._keys = Keyring(party_folder(directory, name))

    def acting(self) -> AbstractContextManager[None]:
        """While inside, this party is the one acting: code run here (this party's own, e.g.
        the participant code of a simulated hospital) may touch this party's folder."""
        return _acting_as(self.name)

    def keep(self, name: str, data: bytes) -> None:
        """Keep ``data`` in this party's folder (atomically, 0600), e.g. what it has signed."""
        with self.acting():
            self._keys.store(name, data)

    def kept(self, name: str) -> bytes | None:
        """What :meth:`keep` kept under ``name``, or None."""
        with self.acting():
            return self._keys.load(name) if self._keys.holds(name) else None

    def forget(self, name: str) -> None:
        with self.acting():
            self._keys.remove(name)


class SigningParty(Party):
    """A party registered in genesis: it signs with the identity key of its folder, loaded
    on first use (a federation whose hospitals took their keys away, as for Flower, still
    opens)."""

    @cached_property
    def identity(self) -> SigningIdentity:
        with self.acting():
            return SigningIdentity.from_private_bytes(self.name, self._keys.load(IDENTITY_FILE))

    def entry(self, entry_type: str, round_id: int, payload: Mapping[str, Any]) -> Entry:
        return Entry.create(self.identity, entry_type, round_id, payload)


class LocalHospital(SigningParty):
    """A demo hospital's folder: its identity key, privacy history and participation record,
    used by its own participant code (:mod:`bfl_private.simulated_hospitals`) while it acts."""


class ValidatorParty(SigningParty):
    """A validator's folder: its identity, its Paillier key share, its chain account key."""

    def receive_paillier_share(self, share: KeyShare) -> None:
        """Store the share the dealer hands this validator."""
        if share.party != self.name:
            raise KeyringError(f"{self.name} was handed {share.party}'s Paillier share")
        with self.acting():
            self._keys.store(PAILLIER_SHARE_FILE, share.to_private_bytes())

    def paillier_share_holder(self, *, min_summands: int) -> ShareHolder:
        """This validator's decryptor; KeyringError before dealing."""
        from .protocols.paillier_committee import ShareHolder
        from .protocols.threshold_paillier import KeyShare

        with self.acting():
            share = KeyShare.from_private_bytes(self._keys.load(PAILLIER_SHARE_FILE))
        return ShareHolder(share, min_summands=min_summands)

    def chain_key(self, *, create: bool) -> bytes:
        """This validator's secp256k1 account key; with ``create``, a fresh one if it has none."""
        with self.acting():
            try:
                return self._keys.load(CHAIN_KEY_FILE)
            except KeyringError:
                if not create or self._keys.holds(CHAIN_KEY_FILE):
                    raise
            from eth_account import Account

            raw = bytes(Account.create().key)
            self._keys.store(CHAIN_KEY_FILE, raw)
            return raw


class PaillierDealer(Party):
    """The trusted dealer of the validators' threshold Paillier key (see the module notes):
    afterwards its folder holds only the public modulus proof."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, PAILLIER_DEALER)

    def proof(self) -> ModulusProof:
        """The modulus proof of the key it dealt; KeyringError before it has dealt."""
        from .protocols.paillier_modulus import ModulusProof

        with self.acting():
            return ModulusProof.from_json(json.loads(self._keys.load(PAILLIER_MODULUS_PROOF_FILE)))

    def deal(self, validators: Sequence[ValidatorParty], *, bits: int, quorum: int) -> None:
        """Make a key of ``bits`` bits, hand each validator its share, keep the proof."""
        from .protocols.paillier_modulus import prove_modulus
        from .protocols.threshold_paillier import deal_shares, safe_prime_pair

        with self.acting():
            p, q = safe_prime_pair(bits)
            shares = deal_shares(p, q, parties=[v.name for v in validators], quorum=quorum)
            proof = prove_modulus(p, q)
            # p and q are never written: once this returns only a quorum of validators can decrypt.
            for validator, share in zip(validators, shares):
                validator.receive_paillier_share(share)
            self._keys.store(PAILLIER_MODULUS_PROOF_FILE, rfc8785.dumps(proof.to_json()))


class CkksKeyHolderParty(Party):
    """The CKKS key holder: generates its secret context in its own folder on first use."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, CKKS_KEY_HOLDER)

    def holder(self) -> CkksKeyHolder:
        """Its decryptor, made and stored on first use."""
        from .protocols.ckks import CkksKeyHolder

        with self.acting():
            try:
                return CkksKeyHolder.from_private_bytes(self._keys.load(CKKS_KEY_FILE))
            except KeyringError:
                holder = CkksKeyHolder.generate()
                self._keys.store(CKKS_KEY_FILE, holder.to_private_bytes())
                return holder


_LEGACY_NAMES = {
    "csv-commitment-key": (COORDINATOR, CSV_COMMITMENT_KEY_FILE),
    "paillier-modulus-proof.json": (PAILLIER_DEALER, PAILLIER_MODULUS_PROOF_FILE),
    "ckks-key-holder.bin": (CKKS_KEY_HOLDER, CKKS_KEY_FILE),
}


def _legacy_destination(name: str) -> tuple[str, str]:
    """Where file ``keys/<name>`` of the old layout belongs: (party, file)."""
    if name in _LEGACY_NAMES:
        return _LEGACY_NAMES[name]
    for suffix, file in ((".ed25519", IDENTITY_FILE), (".secp256k1", CHAIN_KEY_FILE)):
        if name.endswith(suffix):
            return name[: -len(suffix)], file
    if name.startswith("paillier-share.") and name.endswith(".json"):
        return name[len("paillier-share."): -len(".json")], PAILLIER_SHARE_FILE
    raise KeyringError(f"{LEGACY_KEYS_DIR}/{name}: not a key file of the old layout; move it by hand")


def migrate(directory: Path) -> dict[str, list[str]]:
    """Move every file of an old ``DIR/keys/`` into its party's folder, then remove ``keys/``.
    Returns the files each party received. Nothing moves if any file is not recognised."""
    directory = Path(directory)
    legacy = Keyring(directory / LEGACY_KEYS_DIR)
    if not legacy.directory.is_dir():
        raise KeyringError(f"{legacy.directory} does not exist: nothing to migrate")
    plan = {f.name: _legacy_destination(f.name) for f in sorted(legacy.directory.iterdir())}
    moved: dict[str, list[str]] = {}
    for name, (party, file) in plan.items():
        Keyring(party_folder(directory, party)).store(file, legacy.load(name))
        legacy.remove(name)
        moved.setdefault(party, []).append(file)
    legacy.directory.rmdir()
    return moved


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bfl_private.parties",
                                     description="Move an old federation's keys/ into one folder per party.")
    parser.add_argument("command", choices=["migrate"])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        for party, files in migrate(args.directory).items():
            print(f"{party}\t{', '.join(sorted(files))}")
    except BflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
