"""Processes the tests start: free ports, ``inferbox`` commands, stopping them again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from tests.support.paths import INFERBOX


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_inferbox(
    args: list[str], env: dict[str, str], log: Path, append: bool = False
) -> subprocess.Popen:
    """Start ``inferbox ARGS`` in its own session, its output into ``log`` (appended to with
    ``append``, so a restarted process keeps what the one before wrote)."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            [INFERBOX, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def run_cli(args: list[str], env: dict[str, str]) -> str:
    """Run ``inferbox ARGS`` to completion; its output, or a failed test with it."""
    done = subprocess.run([INFERBOX, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class Freezable:
    """A server process (``proc``) the tests can make unreachable and bring back: ``freeze``
    (SIGSTOP: connections are accepted by the kernel, never answered), ``thaw`` (SIGCONT, with
    everything intact) and ``stop`` for good. It keeps its files in ``folder`` and listens on
    a free ``port``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    def freeze(self) -> None:
        """Stop answering; connections are still accepted."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """Answer again."""
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        """Stop for good."""
        if self.proc is not None:
            if self.frozen:
                self.thaw()
            stop_process(self.proc, 10)
