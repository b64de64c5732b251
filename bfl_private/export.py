"""``bfl-private export-model``: a federation's model as a torch-loadable safetensors file.

The tensors carry the model's own ``state_dict`` names (``linear.weight``, ...), and the
metadata says where the weights came from (federation, round, model CID) and how inputs
must be standardised (genesis's public normalisation constants), so the file is usable
without the ledger and traceable back to it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .artifacts import get_model
from .ledger.errors import VerificationError
from .ledger.genesis import GenesisRecord
from .ledger.store import Ledger
from .models import build_model, classes_for, load_flat
from .primitives.errors import BflError
from .settings import FederationSettings


class ExportError(BflError, RuntimeError):
    """The model cannot be exported as asked (no such round, unreadable ledger or output)."""


@dataclass(frozen=True)
class ExportedModel:
    round: int
    model: str
    model_cid: str
    n_features: int
    n_classes: int


def _model_cid(ledger: Ledger, round_id: int | None) -> tuple[int, str]:
    """(round, CID) of the model in force after ``round_id`` (None: the latest round)."""
    state = ledger.state
    rounds = state.rounds()
    if round_id is None:
        return state.last_round, state.model_cid
    if round_id == 0:
        return 0, GenesisRecord.of(ledger.genesis()).initial_model_cid
    after = [r for r in rounds if r["round"] == round_id]
    if not after:
        raise ExportError(f"{ledger.directory}: no round {round_id}; finished rounds are 1-{state.last_round}")
    return round_id, after[0]["model_cid"]


def export_model(directory: Path, output: Path, *, round_id: int | None = None) -> ExportedModel:
    from safetensors.torch import save

    try:
        with Ledger.open(directory) as ledger:
            genesis = GenesisRecord.of(ledger.genesis())
            settings = FederationSettings.from_json(genesis.settings)
            round_done, cid = _model_cid(ledger, round_id)
            params = get_model(ledger.blobs, cid)
            federation_id = ledger.state.federation_id
    except VerificationError as exc:
        raise ExportError(f"{directory}: {exc}") from None
    normalisation = genesis.normalisation
    n_features = len(normalisation.mean)
    kind = settings.training.model
    n_classes = classes_for(kind, n_features, int(params.shape[0]))
    model = build_model(kind, n_features, n_classes)
    load_flat(model, params)
    metadata = {"federation_id": federation_id, "round": str(round_done), "model_cid": cid, "model": kind,
                "n_features": str(n_features), "n_classes": str(n_classes),
                "normalisation": json.dumps(normalisation.to_json(), sort_keys=True)}
    data = save({k: v.contiguous() for k, v in model.state_dict().items()}, metadata=metadata)
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        raise ExportError(f"cannot write {output}: {exc.strerror or exc}") from None
    return ExportedModel(round_done, kind, cid, n_features, n_classes)
