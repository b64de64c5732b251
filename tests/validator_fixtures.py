"""A validator served over TCP from a thread of the test process, as ``bfl-private validator`` serves it."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bfl_private.validator_service import open_validator, validator_server


@contextmanager
def served(directory: Path, name: str) -> Iterator[str]:
    """Validator ``name`` of the federation in ``directory`` answering on a free port; yields HOST:PORT."""
    server = validator_server(directory, open_validator(directory, name), host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
