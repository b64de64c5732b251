"""The private, verifiable round over Flower (flwr 1.42 Message API).

* :mod:`.server_app` — the ``ServerApp``: coordinator and aggregator; it writes the same
  ledger as :mod:`bfl_private.coordinator` (one ``grid.send_and_receive`` per stage).
* :mod:`.client_app` — the ``ClientApp``: one hospital with its own identity key, data and
  privacy history (:mod:`.hospital`).
* :mod:`.server_round` — the round's server side over any :class:`~.server_round.Transport`
  (Flower's grid, or a loopback used by tests and benchmarks).
* :mod:`.one_shot` — the key holder's side of a Paillier or CKKS round whose hospitals
  encrypted on their own machines.
* :mod:`.stages` — stage names and the records that carry our canonical encodings.
* :mod:`.setup` — create a federation and export one bundle per hospital.

Only :mod:`.server_app` and :mod:`.client_app` import ``flwr``.
"""
