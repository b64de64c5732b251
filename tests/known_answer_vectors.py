"""The frozen known-answer sets of our own formats (tests/vectors/known_answers/): the one
place tests read them from. Every set (v1, and any later one) is checked, so an encoding
change that would break old ledgers fails the suite instead of rewriting the files."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KNOWN_ANSWERS = Path(__file__).resolve().parent / "vectors" / "known_answers"
KINDS = ("entries", "masking_messages", "privacy_records", "ledgers", "transcripts")
FIRST_SET = "v1"
"""The first set holds every kind; later sets may hold only the kinds whose format changed."""


@dataclass(frozen=True)
class KnownAnswer:
    """One frozen file: its set (``v1``...), a name for test ids, where it lies, its JSON."""

    version: str
    name: str
    path: Path
    data: Any

    @property
    def id(self) -> str:
        return f"{self.version}/{self.name}"

    def ledger(self, name: str) -> Path:
        """The frozen ledger directory ``name`` of this set (ledger.sqlite3 and blobs/)."""
        return self.path.parent / "ledgers" / name


def known_answers(kind: str) -> list[KnownAnswer]:
    """Every frozen file of ``kind`` (one of :data:`KINDS`) in every set, sorted by set.

    ``transcripts`` gives one item per ``transcripts/*.json``; the other kinds one per set.
    Fails loudly if the first set lacks a kind: a missing file must never pass as no test.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown known-answer kind {kind!r}; known: {KINDS}")
    sets = sorted(p for p in KNOWN_ANSWERS.iterdir() if p.is_dir() and (p / "about.json").is_file())
    found = []
    for directory in sets:
        files = sorted((directory / "transcripts").glob("*.json")) if kind == "transcripts" \
            else [p for p in [directory / f"{kind}.json"] if p.is_file()]
        if not files and directory.name == FIRST_SET:
            raise RuntimeError(f"{directory} has no {kind} known answers")
        for path in files:
            found.append(KnownAnswer(directory.name, path.stem, path, json.loads(path.read_text(encoding="utf-8"))))
    if not any(a.version == FIRST_SET for a in found):
        raise RuntimeError(f"{KNOWN_ANSWERS / FIRST_SET} is missing")
    return found
