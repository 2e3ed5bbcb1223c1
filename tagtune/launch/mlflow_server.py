"""The cluster recipe's MLflow tracking server: MLflow 3's basic-auth app, never open to everyone.

    python -m tagtune.launch.mlflow_server --host HEAD_PRIVATE_IP [--port 5000] [--dir ~/mlflow]

Its admin user is whoever MLflow's client is: the credentials the client itself reads
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, else ``~/.mlflow/credentials``),
so that the study driver on the head and tagtune on the laptop log in with the very same
file. MLflow creates the admin the first time it starts on an empty user store
(``DIR/auth.db``) and ignores the setting afterwards: to change the password later, use
MLflow's update-password API or start over with a new ``auth.db``.

``DIR`` holds the run store (``mlflow.db``: SQLite on the head's local disk, never on NFS),
the user store, the auth config and the Flask secret key the auth app requires; this process
becomes the server (``exec``), so a ``nohup ... &`` or a test can stop it by its pid.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from tagtune.study import atomic
from tagtune.study.config import ConfigError


def server_command(host: str, port: int, store: Path) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and the environment it needs (store prepared)."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    if not (creds.username and creds.password):
        raise ConfigError("credentials", "none for the admin user; write ~/.mlflow/credentials "
                          "([mlflow] mlflow_tracking_username = ..., mlflow_tracking_password = ...) "
                          "or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
                          where="mlflow_server")
    store.mkdir(parents=True, exist_ok=True)
    store.chmod(0o700)
    ini = store / "basic_auth.ini"
    # Every user logs in; a user the admin adds may read every experiment, nothing more.
    atomic.write_text(ini, "[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{store / 'auth.db'}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # A study logs every epoch of every trial: check a password (PBKDF2) once a
                   # minute, not on every request (one worker: nothing goes stale elsewhere).
                   "auth_cache_ttl_seconds = 60\n")
    key = store / "flask-secret"
    if not key.exists():  # one key for the life of the server: CSRF tokens must stay valid
        key.touch(mode=0o600)
        key.write_text(secrets.token_hex(32))
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
           "MLFLOW_AUTH_ADMIN_USERNAME": creds.username, "MLFLOW_AUTH_ADMIN_PASSWORD": creds.password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": key.read_text().strip(),
           # MLflow 3's server-side job runner (GenAI jobs, ~8 worker processes): tagtune has none.
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = Path(sys.executable).with_name("mlflow")
    args = [str(mlflow), "server", "--app-name", "basic-auth", "--host", host, "--port", str(port),
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--workers", "1"]
    return args, env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tagtune.launch.mlflow_server",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True,
                        help="address to bind: the head's private address (127.0.0.1 on one machine)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--dir", default="~/mlflow", help="the server's stores (local disk)")
    a = parser.parse_args(argv)
    try:
        if a.host in ("0.0.0.0", "::"):
            raise ConfigError("host", "bind the cluster's private address, not every interface",
                              where="mlflow_server")
        args, env = server_command(a.host, a.port, Path(a.dir).expanduser().absolute())
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    os.execve(args[0], args, env)


if __name__ == "__main__":
    main()
