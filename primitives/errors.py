"""The root of every error the package raises, in the style of sigstore's ``errors.py``.

:class:`BflError` lives in the bottom layer so that every layer (ledger, protocols,
privacy) and the application can derive from it without importing one another. Each
layer keeps its own tree below it (``VerificationError`` and ``ChainUnavailable`` in the
ledger, ``ProtocolError``, ``PrivacyError``) and the application's errors (``CliError``,
``SettingsError``, ``RunRefused``, ...) derive from it too, so ``except BflError`` catches
every failure the package names and nothing else. Classes that callers also catch as a
builtin (``ValueError``, ``RuntimeError``) keep that base beside this one.

Messages say what failed and where (file, block, entry, client, URL); failures are
exceptions, never booleans. ``tests/test_errors.py`` fails on a new exception class
anywhere in ``bfl_private`` that is not below this root.
"""
from __future__ import annotations


class BflError(Exception):
    """Base class of every error raised by ``bfl_private`` and its layers."""
