"""Create a federation for a Flower deployment and export one bundle per hospital.

The operator keeps the federation directory (ledger, blob store, the coordinator's,
validators' and key holders' party folders) on the ServerApp's machine and hands each
hospital its own bundle:

    OUT/hospital-03/identity.ed25519    its Ed25519 identity key (0600), the one it made
                                        itself in its party folder FEDERATION_DIR/parties/
                                        hospital-03/ when it enrolled, moved out: the
                                        server keeps no hospital key
    OUT/hospital-03/genesis.json        the signed genesis entry: the public registry
    OUT/hospital-03/data.npz            its records (the demo partition; replace with real data)
    OUT/hospital-03/privacy-history.json  what it has spent so far, from the ledger

Usage: ``python -m bfl_private.flower.setup FEDERATION_DIR OUT_DIR [--clients N] ...``
(creates the federation first when FEDERATION_DIR holds none).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from ..coordinator import Federation
from ..keyring import Keyring
from ..parties import party_folder
from ..settings import FederationSettings, ProtocolSettings
from ..rounds.hospital import DATA_FILE, GENESIS_FILE, HISTORY_FILE, IDENTITY_FILE


def export_hospitals(federation: Federation, out_dir: Path) -> dict[str, Path]:
    """Write each client's bundle under ``out_dir``; returns the folder of each client.

    Each hospital's identity key is moved, not copied, out of its party folder: afterwards
    the federation directory (the ServerApp's side) holds no hospital's secret. This runs
    as the operator handing each hospital what is its own, not as the coordinator.
    """
    out_dir = Path(out_dir)
    genesis = federation.ledger.genesis().to_bytes()
    histories = federation.histories()
    folders = {}
    for client_id, client in federation.clients.items():
        folder = out_dir / client_id
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        enrolled, bundle = Keyring(party_folder(federation.directory, client_id)), Keyring(folder)
        if enrolled.holds(IDENTITY_FILE):
            bundle.store(IDENTITY_FILE, enrolled.load(IDENTITY_FILE))
            enrolled.remove(IDENTITY_FILE)
        elif not bundle.holds(IDENTITY_FILE):
            raise FileNotFoundError(f"no identity key of {client_id}: neither in {enrolled.directory} "
                                    f"nor in {folder}")
        (folder / GENESIS_FILE).write_bytes(genesis)
        train = client.data.train
        np.savez(folder / DATA_FILE, features=train.features, labels=train.labels)
        (folder / HISTORY_FILE).write_text(json.dumps([r.to_json() for r in histories[client_id]], indent=1))
        folders[client_id] = folder
    return folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bfl_private.flower.setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("federation_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--clients", type=int, default=5, help="hospitals (at creation)")
    parser.add_argument("--dataset", default="breast_cancer", choices=["breast_cancer", "digits"])
    parser.add_argument("--budget", type=float, default=3.0, help="lifetime ε per hospital (at creation)")
    parser.add_argument("--local-steps", type=int, default=20, help="DP-SGD steps per round (at creation)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if Federation.exists(args.federation_dir):
        federation = Federation.open(args.federation_dir)
    else:
        base = FederationSettings()
        settings = dataclasses.replace(
            base, dataset=args.dataset, n_clients=args.clients, data_seed=args.seed,
            training=dataclasses.replace(base.training, local_steps=args.local_steps),
            privacy=dataclasses.replace(base.privacy, lifetime_epsilon=args.budget),
            protocol=ProtocolSettings(name="masking"),
        )
        federation = Federation.create(args.federation_dir, settings, model_seed=args.seed)
    try:
        for client_id, folder in export_hospitals(federation, args.out_dir).items():
            print(f"{client_id}\t{folder}")
    finally:
        federation.close()


if __name__ == "__main__":
    main()
