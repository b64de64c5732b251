"""One private round: the engine (server side), the hospital (participant side), the stage
messages between them, and the in-process loopback transport. Nothing here imports a
transport library; Flower drives the same code from :mod:`bfl_private.flower`."""
