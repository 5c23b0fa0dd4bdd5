"""A real redis-server on a free loopback port, started and stopped by the tests."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.server.helpers import free_port

READY = b"Ready to accept connections"


class RedisServer:
    """``redis-server`` bound to 127.0.0.1, no persistence: a restart comes back empty."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: .ci/run installs it (apt-get install -y "
                "redis-server); on your machine, install the redis-server package"
            )
        self.binary = binary
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="polyroute-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start and wait for the server's own "ready" line."""
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--loglevel",
                "notice",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        seen = []
        for line in self.process.stdout:
            seen.append(line)
            if READY in line:
                return self
        raise RuntimeError(f"redis-server did not start: {b''.join(seen).decode()}")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Stop at once, like a crash: nothing is saved, clients see the socket close."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def close(self) -> None:
        self.kill()
        self._dir.cleanup()

    def cli(self, *args: str) -> str:
        """One redis-cli command against this server, its output."""
        path = Path(self.binary).with_name("redis-cli")
        result = subprocess.run(
            [str(path), "-p", str(self.port), *args], capture_output=True, check=True
        )
        return result.stdout.decode().strip()
