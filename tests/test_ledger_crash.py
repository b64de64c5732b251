"""Crash safety: a writer killed with SIGKILL at a random moment never leaves half a block."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from ledger_fixtures import Federation

from bfl_private.ledger.store import Ledger
from bfl_private.ledger.verify import verify_ledger

# The child rebuilds the same federation from its key seeds and appends rounds forever,
# printing the height of every block once commit() has returned.
CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from ledger_fixtures import Federation
    from bfl_private.ledger.store import Ledger
    config = json.loads(open(sys.argv[3]).read())
    federation = Federation(clients=config["clients"], budget=config["budget"],
                            seeds=[bytes.fromhex(s) for s in config["seeds"]])
    ledger = Ledger.open(sys.argv[2])
    while True:
        block = federation.run_round(ledger, ledger.state.last_round + 1, epsilon_step=0.001)
        print(block.height, flush=True)
""")


def kill_writer_at_random(directory: Path, config: Path, rng: random.Random) -> int:
    """Start the writer, let it commit a few blocks, SIGKILL it; return the last height seen."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent), str(directory), str(config)],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    committed = [int(child.stdout.readline()) for _ in range(2)]
    time.sleep(rng.uniform(0.0, 0.15))
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    committed += [int(line) for line in child.stdout.read().split()]
    assert child.returncode == -signal.SIGKILL
    return committed[-1]


@pytest.mark.parametrize("kills", [
    3,
    pytest.param(20, marks=pytest.mark.slow, id="20-kills"),
])
def test_sigkill_mid_write_leaves_a_ledger_that_verifies_and_continues(tmp_path: Path,
                                                                      kills: int) -> None:
    rng = random.Random(os.getpid())
    federation = Federation(clients=6, budget=1_000.0)
    directory = tmp_path / "ledger"
    federation.start(directory).close()
    config = tmp_path / "federation.json"
    config.write_text(json.dumps({"clients": 6, "budget": 1_000.0,
                                  "seeds": [s.hex() for s in federation.seeds()]}))
    for _ in range(kills):
        last_reported = kill_writer_at_random(directory, config, rng)
        # An auditor reads the directory as the crash left it (WAL and all).
        report = verify_ledger(directory)
        assert report.ok
        with Ledger.open(directory) as ledger:
            assert ledger.height >= last_reported, "a block reported committed was lost"
            height = ledger.height
            # The next start continues: a fresh writer appends the next round.
            block = federation.run_round(ledger, ledger.state.last_round + 1,
                                         epsilon_step=0.001)
            assert block.height == height + 1
        assert verify_ledger(directory).blocks == height + 2
