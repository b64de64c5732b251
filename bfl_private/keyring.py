"""One party's secrets in one folder, each file readable by its owner only.

A federation directory keeps every party's secrets apart, one folder per party under
``DIR/parties/`` (see :mod:`bfl_private.parties`); this class is what reads and writes
the files of one such folder (mode 0700, files 0600, written atomically). The ledger and
blob store beside ``parties/`` hold only public material, so ``DIR`` minus ``parties/``
is exactly what an auditor gets.
"""
from __future__ import annotations

import os
from pathlib import Path

from .primitives.errors import BflError


class KeyringError(BflError, RuntimeError):
    """A key file that is missing, unreadable or exposed to other users."""


class Keyring:
    """Named secrets in one party's folder, each file readable by its owner only."""

    def __init__(self, folder: Path) -> None:
        self.directory = Path(folder)

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise KeyringError(f"bad key name {name!r}")
        return self.directory / name

    def store(self, name: str, secret: bytes) -> None:
        """Write ``secret`` atomically, never readable by group or others."""
        path = self._path(name)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
            temporary = path.with_name(path.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, secret)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except OSError as exc:
            raise KeyringError(f"cannot write {path}: {exc.strerror or exc}") from None

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

    def holds(self, name: str) -> bool:
        return self._path(name).exists()

    def remove(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
