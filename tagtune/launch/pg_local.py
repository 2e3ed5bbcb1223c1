"""A throwaway Postgres cluster in a temp dir, for the tracking bench and the tests.

``initdb`` then ``pg_ctl start`` in a directory of its own, listening on 127.0.0.1 at a free
port (its Unix socket in that directory too, never in /var/run), one login user with a
password and the two databases the recipe's MLflow server uses (the runs, and its users:
``mlflow`` and ``mlflow_auth``). Postgres refuses to run as root, so as root (CI, containers)
every Postgres binary runs as the ``postgres`` user that Debian's package creates, and the
directory is theirs.

    with LocalPostgres() as pg:
        pg.uri  # postgresql://tagtune@127.0.0.1:PORT/mlflow  (the password: pg.password)
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER, DATABASE = "tagtune", "mlflow"


def postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest version."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """One Postgres cluster on loopback; ``stop()`` (or the ``with`` block's end) removes it."""

    def __init__(self, settings: dict[str, str] | None = None):
        self.bin = postgres_bin()
        if self.bin is None:
            raise FileNotFoundError("no initdb on PATH nor in /usr/lib/postgresql/*/bin "
                                    "(Debian: apt-get install postgresql)")
        self.settings = settings or {}  # postgres -c NAME=VALUE, e.g. fsync=off for a test
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.uri = f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"
        # Short, under /tmp: the socket's path must stay under 107 bytes, and the postgres user
        # must be able to reach it (a pytest tmp_path sits in root's private directory).
        self.prefix: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise FileNotFoundError("Postgres refuses to run as root, and there is no `postgres` "
                                        "user to run it as (Debian's postgresql package makes one)") from None
            self.prefix = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups"]
        self.root = Path(tempfile.mkdtemp(prefix="tt-pg-", dir="/tmp"))
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"

    def _run(self, tool: str, *args: str) -> None:
        run = subprocess.run([*self.prefix, str(self.bin / tool), *args], capture_output=True,
                             text=True, cwd=self.root, timeout=120)
        if run.returncode != 0:
            log = self.root / "postgres.log"
            raise RuntimeError(f"{tool} failed: {run.stderr.strip()[-2000:]}\n"
                               f"{log.read_text()[-2000:] if log.exists() else ''}")

    def start(self) -> LocalPostgres:
        if not self.data.exists():
            # Local (socket) logins trusted: only our own user reaches this directory; TCP logins
            # need the password, as on the recipe's head.
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync",
                      "--auth-local=trust", "--auth-host=scram-sha-256")
        # Otherwise Postgres's defaults, as Debian's package runs it (max_connections 100).
        options = " ".join(f"-c {k}={v}" for k, v in {"listen_addresses": "127.0.0.1",
                                                        **self.settings}.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w",
                  "-o", f"-p {self.port} -k {self.root} {options}", "start")
        self._setup_once()
        return self

    def _setup_once(self) -> None:
        import psycopg

        # Autocommit: CREATE DATABASE runs outside a transaction.
        conn = psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname="postgres",
                               autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (USER,))
                if cur.fetchone() is None:
                    # A utility statement takes no parameters: the password as a literal.
                    cur.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        psycopg.sql.Identifier(USER), psycopg.sql.Literal(self.password)))
                    for db in (DATABASE, f"{DATABASE}_auth"):
                        cur.execute(f"CREATE DATABASE {db} OWNER {USER}")
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the server (immediately: nothing here is worth a checkpoint) and remove it all."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
