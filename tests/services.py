"""Real servers for the tests, on free loopback ports: `mlflow server` and PostgreSQL.

PostgreSQL comes from the Debian `postgresql` package (`.ci/run` installs it):
``initdb`` into a temporary folder, started by an unprivileged user (the
server refuses root), password authentication, stopped afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on a loopback port, with its own SQLite store and artifact folder; can be stopped and started."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.proc = folder, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.folder}/server.db",
            "--artifacts-destination",
            str(self.folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (the server writes to it until stopped)
        # No background job runner (seven more processes, for features tuner does not use): a quicker start.
        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-2000:]
                time.sleep(0.3)
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), or None if they are not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


class Postgres:
    """A PostgreSQL server of its own, user ``tuner`` with :attr:`PASSWORD`; each :meth:`database` is a fresh one."""

    USER = "tuner"
    PASSWORD = "pg-S3cret-4711"

    def __init__(self, bin_dir: Path) -> None:
        self.bin, self.port = bin_dir, free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="tuner-pg-"))  # in /tmp: the server's user must reach it
        # PostgreSQL refuses to run as root: the tests' root runs it as the package's own user.
        self.account = (
            None if os.geteuid() else next((name for name in ("postgres", "nobody") if _has_user(name)), None)
        )
        if os.geteuid() == 0 and self.account is None:
            raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")
        (self.folder / "password").write_text(self.PASSWORD)
        if self.account:
            entry = pwd.getpwnam(self.account)
            for path in (self.folder, self.folder / "password"):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(self.bin / program), *args]
        if self.account:
            cmd = ["runuser", "-u", self.account, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.folder)
        assert result.returncode == 0, f"{program} failed:\n{result.stdout}\n{result.stderr}"

    def start(self) -> None:
        data = self.folder / "data"
        self._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            self.USER,
            f"--pwfile={self.folder / 'password'}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        # fsync off: a test server's data need not survive a power cut, and it is several times faster.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off -c max_connections=200"
        self._run(
            "pg_ctl", "-D", str(data), "-l", str(self.folder / "server.log"), "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str, password: str | None = None) -> str:
        return f"postgresql://{self.USER}:{password or self.PASSWORD}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its URL (with the password)."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        # autocommit: CREATE DATABASE cannot run in a transaction
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def log(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
