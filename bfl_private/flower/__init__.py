"""The private, verifiable round over Flower (flwr 1.42 Message API).

The round itself is :mod:`bfl_private.rounds` (engine, hospital, stage messages); this
package is the Flower transport and deployment around it:

* :mod:`.server_app` — the ``ServerApp``: a :class:`~bfl_private.coordinator.Coordinator`
  driving the :class:`~bfl_private.rounds.engine.RoundEngine` over Flower's grid (one
  ``grid.send_and_receive`` per stage).
* :mod:`.client_app` — the ``ClientApp``: one hospital with its own identity key, data and
  privacy history (:class:`~bfl_private.rounds.hospital.Hospital`).
* :mod:`.setup` — create a federation and export one bundle per hospital.
* :mod:`.deployment` — start a local SuperLink and SuperNodes (tests and benchmarks).

Only :mod:`.server_app` and :mod:`.client_app` import ``flwr``.
"""
