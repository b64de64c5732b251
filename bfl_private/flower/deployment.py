"""A real Flower deployment on 127.0.0.1: one SuperLink, one SuperNode per hospital.

Used by the end-to-end test and the benchmark, and handy for a local rehearsal before
the SuperNodes move to the hospitals' machines. Every process is started in its own
process group (a SuperNode's SuperExec and ClientApp processes join it), so
:meth:`LoopbackDeployment.kill_node` takes a hospital off the network at once, as a
crashed machine would, and leaving the ``with`` block stops everything it started.
Insecure mode (no TLS): loopback only.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..primitives.errors import BflError

CONNECTION = "bfl-loopback"
SUPEREXEC_POLL_SECONDS = 0.25
"""How often each SuperExec (the SuperLink's and every SuperNode's) asks for a task to
launch, through Flower's ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (default 1 s). Every
stage message waits for the slowest of the SuperNodes' polls, so this takes most of a
second off each stage; the polls are local calls."""
APP_DIR = Path(__file__).resolve().parents[2] / "flower_app"
"""The Flower app folder of a source checkout (its pyproject.toml names our components)."""


class DeploymentError(BflError, RuntimeError):
    """A Flower process that did not start, or a run that failed or timed out."""


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name} not found: install the Flower extra (pip install 'bfl-private[flower]')")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class LoopbackDeployment:
    """``with LoopbackDeployment(workdir, node_configs) as flower: flower.run({...})``."""

    def __init__(self, workdir: Path, node_configs: Sequence[Mapping[str, Any]], *,
                 app_dir: Path = APP_DIR, start_timeout: float = 60.0) -> None:
        self.workdir = Path(workdir)
        self.node_configs = list(node_configs)
        self.app_dir = Path(app_dir)
        self.start_timeout = start_timeout
        self.port = 0
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: list[subprocess.Popen[bytes] | None] = []
        self.env = {**os.environ, "FLWR_HOME": str(self.workdir / "flwr-home"),
                    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(SUPEREXEC_POLL_SECONDS)}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen([_executable(args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT,
                                    env=self.env, cwd=self.workdir, start_new_session=True)
        finally:
            log.close()

    def __enter__(self) -> LoopbackDeployment:  # noqa: PYI034 (typing.Self needs 3.11)
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        try:
            self.port = free_port()
            (home / "config.toml").write_text(
                f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
            self.superlink = self._start("superlink", [
                "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation"])
            self._wait_for_port(self.port, "flower-superlink")
            for i, config in enumerate(self.node_configs):
                node_config = " ".join(f"{k}={_toml(v)}" for k, v in config.items())
                self.supernodes.append(self._start(f"supernode-{i}", [
                    "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                    "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", node_config]))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_for_port(self, port: int, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.superlink is not None and self.superlink.poll() is not None:
                raise DeploymentError(f"{what} exited with {self.superlink.returncode}; see {self.workdir}/superlink.log")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise DeploymentError(f"{what} did not listen on 127.0.0.1:{port} within {self.start_timeout} s")

    def run(self, run_config: Mapping[str, Any], *, timeout: float = 600.0,
            on_line: Callable[[str], None] = lambda line: None, app_dir: Path | None = None) -> str:
        """``flwr run --stream`` the app with ``run_config`` overrides; returns its output.

        ``on_line`` sees each output line as it arrives (e.g. to act in mid-round).
        ``app_dir`` runs another Flower app folder than the constructor's on the same
        SuperLink and SuperNodes (the SuperNodes run whichever app is submitted).
        """
        for i, node in enumerate(self.supernodes):
            if node is not None and node.poll() is not None:
                log = (self.workdir / f"supernode-{i}.log").read_text(errors="replace")
                raise DeploymentError(f"flower-supernode {i} exited with {node.returncode}:\n{log[-2000:]}")
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
        command = [_executable("flwr"), "run", str(app_dir or self.app_dir), CONNECTION, "--stream", "--run-config", overrides]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
                                   cwd=self.workdir, text=True, start_new_session=True)
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                on_line(line)
                if time.monotonic() > deadline:
                    raise DeploymentError(f"flwr run did not finish within {timeout} s:\n{''.join(lines[-40:])}")
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            _stop_groups([process])
        output = "".join(lines)
        if process.returncode != 0:
            raise DeploymentError(f"flwr run exited with {process.returncode}:\n{output[-4000:]}")
        return output

    def kill_node(self, index: int) -> None:
        """SIGKILL SuperNode ``index`` with its SuperExec and ClientApp processes."""
        process = self.supernodes[index]
        if process is not None:
            _stop_groups([process], sig=signal.SIGKILL)
            self.supernodes[index] = None

    def stop(self) -> None:
        """SIGTERM every process group started here, then SIGKILL what is left after 5 s."""
        processes = [p for p in [*self.supernodes, self.superlink] if p is not None]
        self.supernodes = [None] * len(self.supernodes)
        self.superlink = None
        _stop_groups(processes)


def _signal_group(process: subprocess.Popen[Any], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the group outlives its leader while any member runs
    except ProcessLookupError:
        pass


def _stop_groups(processes: Sequence[subprocess.Popen[Any]], *, sig: int = signal.SIGTERM,
                 grace: float = 5.0) -> None:
    """Signal the process groups ``processes`` lead; SIGKILL what is left after ``grace``."""
    for process in processes:
        _signal_group(process, sig)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        _signal_group(process, signal.SIGKILL)
        process.wait()
