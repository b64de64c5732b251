"""A researcher's run configuration: one TOML file for everything a run depends on.

Sections name the settings dataclasses and their fields exactly, so the file and the
genesis record speak one vocabulary::

    [federation]   # FederationSettings: dataset, n_clients, partition, alpha, data_seed,
                   # n_validators, quality_tolerance
    [training]     # TrainingConfig: model, local_steps, batch_size, optimizer, learning_rate, ...
    [privacy]      # PrivacySettings: delta, lifetime_epsilon, sample_rate, clipping_norm, accountant, ...
    [protocol]     # ProtocolSettings: name, bits, neighbours, paillier_key_bits
    [rewards]      # RewardSettings
    [run]          # this command: epsilon, rounds, protocol, dropout, malicious, skip_exhausted

Everything but ``[run]`` is a genesis choice: it creates a new federation, and must agree
with the genesis of one being continued. Command-line flags override the file.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from .primitives.errors import BflError
from .settings import (
    CsvSource,
    FederationSettings,
    PrivacySettings,
    ProtocolSettings,
    RewardSettings,
    SettingsError,
    TrainingConfig,
)

NESTED = {"training": TrainingConfig, "privacy": PrivacySettings, "protocol": ProtocolSettings,
          "rewards": RewardSettings}
"""Config sections that are FederationSettings' nested records (same names as its fields)."""


class ConfigError(BflError, ValueError):
    """A configuration file that cannot be read or names something unknown or mistyped."""


@dataclass(frozen=True)
class GenesisChoice:
    """One genesis setting the user asked for, and where they asked for it (for errors)."""

    field: str
    """Dotted path in FederationSettings, e.g. ``privacy.delta`` or ``n_clients``."""
    value: Any
    source: str
    """``--budget`` or ``run.toml [privacy] delta``."""


@dataclass(frozen=True)
class RunSection:
    """The ``[run]`` table: what this command does (None: not given in the file)."""

    epsilon: float | None = None
    rounds: int | None = None
    protocol: str | None = None
    dropout: float | None = None
    malicious: int | None = None
    skip_exhausted: bool | None = None


@dataclass(frozen=True)
class RunConfig:
    genesis: tuple[GenesisChoice, ...]
    run: RunSection


def _field_types(cls: type) -> dict[str, str]:
    """Each field's declared type, without ``| None`` (the modules use postponed annotations)."""
    return {f.name: str(f.type).removesuffix(" | None") for f in dataclasses.fields(cls)}


def _typed(value: Any, expected: str, name: str, where: str) -> Any:
    """``value`` as the field's type (a TOML integer widens to float); ConfigError otherwise."""
    if expected == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected == "tuple[str, ...]":
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{where}: {name} = {value!r} is not a list of strings")
        return tuple(value)
    python_type = {"bool": bool, "int": int, "float": float, "str": str}.get(expected)
    if python_type is None or type(value) is not python_type:
        raise ConfigError(f"{where}: {name} = {value!r} is not of type {expected}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {name} = {value!r} is not a finite number")
    return value


def load_config(path: Path) -> RunConfig:
    """Read and type-check a run configuration; every error names the file, table and key."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    sections = {
        "federation": {k: v for k, v in _field_types(FederationSettings).items()
                       if k not in NESTED and k not in ("csv", "csv_description")},
        **{name: _field_types(cls) for name, cls in NESTED.items()},
        "run": _field_types(RunSection),
        "csv": _field_types(CsvSource),
    }
    genesis: list[GenesisChoice] = []
    run: dict[str, Any] = {}
    csv_fields: dict[str, Any] = {}
    for table, values in document.items():
        if table not in sections:
            raise ConfigError(f"config {path}: unknown table [{table}]; use {', '.join(f'[{s}]' for s in sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"config {path}: {table} must be a table [{table}], not a value")
        for key, value in values.items():
            where = f"config {path} [{table}]"
            if key not in sections[table]:
                raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(sections[table])}")
            value = _typed(value, sections[table][key], key, where)
            if table == "run":
                run[key] = value
            elif table == "csv":
                csv_fields[key] = value
            else:
                dotted = key if table == "federation" else f"{table}.{key}"
                genesis.append(GenesisChoice(dotted, value, f"{path} [{table}] {key}"))
    if csv_fields:
        source = _csv_source(csv_fields, Path(path))
        asked = {c.field for c in genesis}
        implied = [("csv", source), ("dataset", "csv")]
        if source.hospitals:  # with a split column, the count is only known from the data
            implied.append(("n_clients", len(source.hospitals)))
        genesis.extend(GenesisChoice(f, v, f"{path} [csv]") for f, v in implied if f not in asked)
    return RunConfig(tuple(genesis), RunSection(**run))


def _csv_source(fields: dict[str, Any], config: Path) -> CsvSource:
    """The [csv] table, its paths made absolute against the config file's directory."""
    base = config.resolve().parent

    def resolve(value: str) -> str:
        return str((base / value).resolve())

    for name in ("hospitals", "file", "public"):
        if name in fields:
            fields[name] = tuple(map(resolve, fields[name])) if name == "hospitals" else resolve(fields[name])
    try:
        return CsvSource(**fields)
    except TypeError as exc:
        raise ConfigError(f"config {config} [csv]: {exc}") from None
    except SettingsError as exc:
        raise ConfigError(f"config {config} [csv]: {exc}") from None


def apply_choices(base: FederationSettings, choices: tuple[GenesisChoice, ...]) -> FederationSettings:
    """``base`` with every choice applied at once (the settings' invariants hold between
    fields, e.g. ``dataset = "csv"`` with a ``csv`` table); SettingsError names where the
    offending values were asked for. A later choice of the same field wins."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for choice in choices:
        head, _, rest = choice.field.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = choice.value
        else:
            top[head] = choice.value

    def asked(heads: set[str]) -> str:
        return ", ".join(dict.fromkeys(c.source for c in choices if c.field.partition(".")[0] in heads))

    for head, fields in nested.items():
        try:
            top[head] = dataclasses.replace(getattr(base, head), **fields)
        except SettingsError as exc:
            raise SettingsError(f"{asked({head})}: {exc}") from None
    try:
        return dataclasses.replace(base, **top)
    except SettingsError as exc:
        raise SettingsError(f"{asked(set(top) - set(nested))}: {exc}") from None


def _get(settings: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


def conflicts(recorded: FederationSettings, choices: tuple[GenesisChoice, ...]) -> list[str]:
    """One line per choice that differs from a federation's genesis."""
    return [f"{c.source} {c.value!r} conflicts with the federation's genesis ({_get(recorded, c.field)!r})"
            for c in choices if _get(recorded, c.field) != c.value]
