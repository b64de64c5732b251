"""Private keys of the simulated parties, kept apart from what an auditor receives.

Everything secret lives in ``DIR/keys/`` (mode 0700, files 0600): Ed25519 identity keys
of the coordinator, clients and validators, the validators' secp256k1 chain keys (when
the ledger is anchored on an EVM chain) and the homomorphic key holder's secret.
The ledger and blob store beside it hold only public material, so ``DIR`` minus
``keys/`` is exactly what an auditor gets.
"""
from __future__ import annotations

import os
from pathlib import Path

from .ledger.identity import SigningIdentity
from .primitives.errors import BflError

KEYS_DIR = "keys"


class KeyringError(BflError, RuntimeError):
    """A key file that is missing, unreadable or exposed to other users."""


class Keyring:
    """Named secrets in one directory, each file readable by its owner only."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory) / KEYS_DIR

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise KeyringError(f"bad key name {name!r}")
        return self.directory / name

    def store(self, name: str, secret: bytes) -> None:
        """Write ``secret`` atomically, never readable by group or others."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        path = self._path(name)
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)

    def has(self, name: str) -> bool:
        return self._path(name).exists()

    def load(self, name: str) -> bytes:
        path = self._path(name)
        try:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise KeyringError(f"key file {path} has mode {oct(mode)}; it must be 0600 (chmod 600 {path})")
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyringError(f"key {name!r} not found in {self.directory}") from None
        except PermissionError as exc:
            raise KeyringError(f"key file {path} is unreadable: {exc}") from None

    def new_identity(self, name: str) -> SigningIdentity:
        identity = SigningIdentity.generate(name)
        self.store(f"{name}.ed25519", identity.private_bytes())
        return identity

    def identity(self, name: str) -> SigningIdentity:
        return SigningIdentity.from_private_bytes(name, self.load(f"{name}.ed25519"))
