"""A real PostgreSQL cluster in a temporary directory, on a free loopback port.

``initdb`` refuses to run as root: as root, the cluster belongs to ``nobody`` and
every server command runs through ``runuser``. The superuser ``postgres`` has a
random password and TCP logins need it (scram-sha-256), so the stores under test
get a DSN with a password in it, as in production.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.server.helpers import free_port

UNPRIVILEGED_USER = "nobody"
READY_WITHIN_S = 30.0
POLL_EVERY_S = 0.05
# Durability off: the cluster lives for one test session.
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def find_binaries() -> Path:
    """The directory of ``initdb`` and ``pg_ctl`` (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    on_path = shutil.which("initdb")
    if found:
        return Path(found[-1]).parent  # the newest version installed
    if on_path:
        return Path(on_path).parent
    raise RuntimeError(
        "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on "
        "PATH): .ci/run installs it (apt-get install -y postgresql); on your machine, "
        "install the postgresql package"
    )


class PostgresServer:
    """``postgres`` bound to 127.0.0.1 on a free port, its socket in its own directory."""

    def __init__(self) -> None:
        self.bin = find_binaries()
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.dir = Path(tempfile.mkdtemp(prefix="polyroute-pg-"))
        self.data = self.dir / "data"
        self._user = UNPRIVILEGED_USER if os.geteuid() == 0 else None
        self.running = False

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def init(self) -> PostgresServer:
        """Create the cluster (``initdb``)."""
        password_file = self.dir / "password"
        password_file.write_text(self.password)
        if self._user is not None:
            user = pwd.getpwnam(self._user)
            for path in (self.dir, password_file):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            *("-D", str(self.data), "-U", "postgres", f"--pwfile={password_file}"),
            *("--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"),
            *("--no-sync", "--no-instructions"),
        )
        password_file.unlink()
        return self

    def start(self) -> PostgresServer:
        """Start the server and wait until it answers a query."""
        options = f"-k {self.dir} -h 127.0.0.1 -p {self.port} {SERVER_OPTIONS}"
        log = self.dir / "server.log"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-W", "-o", options, "start")
        self.running = True
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll with a real connection and query (psql) until the server answers."""
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            answer = subprocess.run(
                [str(self.bin / "psql"), "-X", "-w", "-q", "-t", "-c", "SELECT 1"],
                env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "2"}
                | {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": "postgres"},
                capture_output=True,
                text=True,
            )
            if answer.returncode == 0:
                return
            if time.monotonic() > deadline:
                log = (self.dir / "server.log").read_text(errors="replace")
                raise RuntimeError(f"PostgreSQL did not start: {answer.stderr}\n{log}")
            time.sleep(POLL_EVERY_S)  # between polls only: readiness is the query's answer

    def stop(self) -> None:
        """Stop at once (``-m fast``: clients are disconnected, nothing is lost)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.running = False

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        # cwd: the unprivileged user may not be allowed into the tests' own directory
        done = subprocess.run(command, cwd=self.dir, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr}")
