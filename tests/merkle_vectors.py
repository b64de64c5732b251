"""The vendored Merkle vectors (tests/vectors/README.md): the one place tests read them from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent / "vectors"
GOLDEN = VECTORS / "transparency-dev-merkle"
GOLDEN_CASES = 518
"""Files in transparency-dev/merkle's testdata/ at the vendored commit."""


def rfc6962_known_answers() -> dict[str, Any]:
    """RFC 6962 leaves, roots, node hashes and proofs (hex)."""
    return json.loads((VECTORS / "rfc6962_vectors.json").read_text())


def golden_cases() -> list[Path]:
    """Every golden JSON case, sorted; fails loudly if the vendored copy is incomplete."""
    cases = sorted(GOLDEN.rglob("*.json"))
    if len(cases) != GOLDEN_CASES:
        raise RuntimeError(f"{GOLDEN} holds {len(cases)} golden cases, expected {GOLDEN_CASES}")
    return cases
