"""One error root: every exception class the package defines derives from BflError.

Every module of every package that pyproject installs (the application and the four
layers mapped into ``bfl_private`` by ``package-dir``) is imported, and each exception
class it defines must be below :class:`bfl_private.primitives.errors.BflError`, so a new
error outside the tree fails here rather than escaping ``except BflError``.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from bfl_private.primitives.errors import BflError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
OPTIONAL = {"flwr", "tno", "web3", "eth_account", "eth_tester", "eth_utils", "vyper", "tenseal"}
"""Top-level modules of the extras (flower, dkg, chain) and of TenSEAL: a module that needs
one that is not installed is skipped, not failed. The full development install has all."""


def _packages() -> list[str]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]


def _modules() -> list[str]:
    """Every module of every installed package: walking ``bfl_private`` alone would miss
    the layers, whose folders lie outside it."""
    names: set[str] = set()
    for package in _packages():
        names.add(package)
        path = importlib.import_module(package).__path__
        names.update(info.name for info in pkgutil.walk_packages(path, package + "."))
    return sorted(names)


MODULES = _modules()


def _exception_classes(namespace: object, module: str, seen: set[type]) -> Iterator[type]:
    """Exception classes defined in ``module``, nested ones included."""
    for value in vars(namespace).values():
        if inspect.isclass(value) and value.__module__ == module and value not in seen:
            seen.add(value)
            if issubclass(value, Exception):
                yield value
            yield from _exception_classes(value, module, seen)


def test_the_walk_reaches_the_app_and_every_layer() -> None:
    for module in ["bfl_private.cli", "bfl_private.rounds.errors", "bfl_private.ledger.errors",
                   "bfl_private.protocols.errors", "bfl_private.privacy.errors",
                   "bfl_private.primitives.errors", "bfl_private.ledger.chain"]:
        assert module in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_every_exception_class_is_below_the_root(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs {exc.name}, which is not installed")
        raise
    outside = [f"{c.__module__}.{c.__qualname__}" for c in _exception_classes(module, name, set())
               if not issubclass(c, BflError)]
    assert not outside, f"exception classes not below BflError: {', '.join(outside)}"


def test_the_root_lives_in_the_bottom_layer_and_imports_nothing_else() -> None:
    code = ("import sys, bfl_private.primitives.errors; "
            "bad = [m for m in sys.modules if m.startswith('bfl_private.') and "
            "not m.startswith('bfl_private.primitives')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_an_unreachable_chain_is_a_ledger_error_but_no_verification_error() -> None:
    from bfl_private.ledger.errors import (
        ChainMismatch,
        ChainRevert,
        ChainUnavailable,
        EVMError,
        LedgerError,
        VerificationError,
    )

    assert issubclass(ChainUnavailable, EVMError) and issubclass(EVMError, LedgerError)
    assert not issubclass(ChainUnavailable, VerificationError)
    assert issubclass(ChainMismatch, VerificationError) and issubclass(ChainRevert, VerificationError)
    assert issubclass(VerificationError, LedgerError) and issubclass(LedgerError, BflError)
