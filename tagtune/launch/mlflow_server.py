"""The cluster recipe's MLflow tracking server: MLflow 3's basic-auth app, never open to everyone.

    python -m tagtune.launch.mlflow_server --host HEAD_PRIVATE_IP [--port 5000] [--dir ~/mlflow]
        [--backend-store-uri postgresql://USER@HOST:5432/mlflow --db-password-file FILE] [--workers N]

Its admin user is whoever MLflow's client is: the credentials the client itself reads
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, else ``~/.mlflow/credentials``),
so that the study driver on the head and tagtune on the laptop log in with the very same
file. MLflow creates the admin the first time it starts on an empty user store
(``DIR/auth.db``, or the ``_auth`` database on Postgres) and ignores the setting afterwards:
to change the password later, use MLflow's update-password API or start over with an empty
user store.

``DIR`` holds the run store (``mlflow.db``: SQLite on the head's local disk, never on NFS),
the user store, the auth config and the Flask secret key the auth app requires; this process
becomes the server (``exec``), so a ``nohup ... &`` or a test can stop it by its pid.

On a cluster, the stores go to Postgres (docs/tracking.md): SQLite takes one write at a time,
so its server has one worker; on Postgres the server runs ``--workers`` (4) and tens of
trials log at once. The user store is the database next to the run store, named
``<database>_auth``. The URI names no password (``ps`` would show it to every user): the
password comes from ``--db-password-file``, else ``TAGTUNE_DB_PASSWORD``, else libpq's own
``PGPASSWORD`` / ``~/.pgpass``; the server gets it in its environment (``PGPASSWORD``), which
only its own user can read. Both databases must take the login before the server starts: a
database that does not answer or refuses the password is one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from tagtune.launch.preflight import check_database, psycopg_uri
from tagtune.study import atomic
from tagtune.study.config import ConfigError

WHERE = "mlflow_server"
POSTGRES_WORKERS = 4


def database_uris(uri: str | None, store: Path) -> tuple[str, str]:
    """The run store's and the user store's URIs: SQLite files in ``store``, or two databases of
    one Postgres (``uri``'s database and ``<database>_auth``)."""
    if uri is None:
        return f"sqlite:///{store / 'mlflow.db'}", f"sqlite:///{store / 'auth.db'}"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except ArgumentError:
        raise ConfigError("backend-store-uri", "expected postgresql://USER@HOST:PORT/DATABASE",
                          where=WHERE) from None
    if url.get_backend_name() == "sqlite":
        return uri, f"sqlite:///{store / 'auth.db'}"
    if url.get_backend_name() != "postgresql" or not url.database:
        raise ConfigError("backend-store-uri", "expected sqlite:///PATH or "
                          "postgresql://USER@HOST:PORT/DATABASE", where=url.render_as_string())
    if url.password is not None:
        raise ConfigError("backend-store-uri", "a password in the URI shows in `ps` to every user: "
                          "put it in --db-password-file (or TAGTUNE_DB_PASSWORD)",
                          where=url.render_as_string(hide_password=True))
    return (url.render_as_string(),
            url.set(database=f"{url.database}_auth").render_as_string())


def db_password(path: str | None) -> str | None:
    """The database password: the file's first line, else ``TAGTUNE_DB_PASSWORD``, else None
    (libpq then reads ``PGPASSWORD`` or ``~/.pgpass`` itself)."""
    if path is None:
        return os.environ.get("TAGTUNE_DB_PASSWORD") or None
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as e:
        raise ConfigError("db-password-file", f"cannot read it ({e.strerror})", where=path) from None
    if not lines or not lines[0]:
        raise ConfigError("db-password-file", "empty: the password on its first line", where=path)
    return lines[0]


def server_command(host: str, port: int, store: Path, backend_uri: str | None = None,
                   password: str | None = None, workers: int | None = None,
                   ) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and the environment it needs (stores prepared and,
    on Postgres, checked: both databases take the login)."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    if not (creds.username and creds.password):
        raise ConfigError("credentials", "none for the admin user; write ~/.mlflow/credentials "
                          "([mlflow] mlflow_tracking_username = ..., mlflow_tracking_password = ...) "
                          "or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
                          where=WHERE)
    runs_uri, users_uri = database_uris(backend_uri, store)
    sqlite = runs_uri.startswith("sqlite")
    workers = workers or (1 if sqlite else POSTGRES_WORKERS)
    if sqlite and workers > 1:
        raise ConfigError("workers", "SQLite takes one write at a time: more than one worker only "
                          "with --backend-store-uri postgresql://...", where=WHERE)
    if not sqlite:
        for uri in (runs_uri, users_uri):
            check_database(uri, password, field="backend-store-uri")
    store.mkdir(parents=True, exist_ok=True)
    store.chmod(0o700)
    ini = store / "basic_auth.ini"
    # Every user logs in; a user the admin adds may read every experiment, nothing more.
    atomic.write_text(ini, "[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = {psycopg_uri(users_uri)}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # A study logs every epoch of every trial: check a password (PBKDF2) once a
                   # minute, not on every request (with several workers, a changed password
                   # still works for up to a minute on the others).
                   "auth_cache_ttl_seconds = 60\n")
    key = store / "flask-secret"
    if not key.exists():  # one key for the life of the server: CSRF tokens must stay valid
        key.touch(mode=0o600)
        key.write_text(secrets.token_hex(32))
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
           "MLFLOW_AUTH_ADMIN_USERNAME": creds.username, "MLFLOW_AUTH_ADMIN_PASSWORD": creds.password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": key.read_text().strip(),
           # MLflow 3's server-side job runner (GenAI jobs, ~8 worker processes): tagtune has none.
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           # The store by environment, not argument (`mlflow server` reads it there, and hands
           # it to its workers the same way): nothing about the database in `ps`.
           "MLFLOW_BACKEND_STORE_URI": psycopg_uri(runs_uri)}
    if password is not None:
        env["PGPASSWORD"] = password  # libpq's own; /proc/PID/environ is the server user's only
    if not sqlite:
        env.setdefault("PGCONNECT_TIMEOUT", "10")  # a database gone: a request fails in seconds
        # Each worker keeps a pool per store (runs, users, model registry): at most 5 connections
        # each (4 + 1 overflow; SQLAlchemy's 5 + 10 would let 4 workers open 180, and Debian's
        # Postgres takes 100). A request beyond that waits for a connection rather than failing.
        env.setdefault("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "4")
        env.setdefault("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "1")
    mlflow = Path(sys.executable).with_name("mlflow")
    args = [str(mlflow), "server", "--app-name", "basic-auth", "--host", host, "--port", str(port),
            "--workers", str(workers)]
    return args, env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tagtune.launch.mlflow_server",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True,
                        help="address to bind: the head's private address (127.0.0.1 on one machine)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--dir", default="~/mlflow",
                        help="the server's files (local disk); its SQLite stores unless --backend-store-uri")
    parser.add_argument("--backend-store-uri", default=None,
                        help="postgresql://USER@HOST:PORT/DATABASE on a cluster (no password in it); "
                             "the users go to DATABASE_auth on the same server")
    parser.add_argument("--db-password-file", default=None,
                        help="the database password, on the file's first line (else TAGTUNE_DB_PASSWORD, "
                             "PGPASSWORD or ~/.pgpass)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"server processes: 1 on SQLite (the default), {POSTGRES_WORKERS} on Postgres "
                             "(each holds up to 15 database connections: Postgres's max_connections "
                             "must be above 15 x workers)")
    a = parser.parse_args(argv)
    try:
        if a.host in ("0.0.0.0", "::"):
            raise ConfigError("host", "bind the cluster's private address, not every interface",
                              where=WHERE)
        if a.workers is not None and a.workers < 1:
            raise ConfigError("workers", f"at least 1, got {a.workers}", where=WHERE)
        args, env = server_command(a.host, a.port, Path(a.dir).expanduser().absolute(),
                                   a.backend_store_uri, db_password(a.db_password_file), a.workers)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    os.execve(args[0], args, env)


if __name__ == "__main__":
    main()
