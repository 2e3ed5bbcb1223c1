"""Checks of a study's launch input, each a one-line ConfigError before any trial starts.

Why up front: left to Ray and MLflow, a wrong address or a dead tracking server costs
minutes of retries and ends in a long traceback, and a storage path that the other nodes
cannot see fails every trial on those nodes one by one (Ray Tune no longer syncs results
to the head node: multi-node storage must be shared). Here:

- ``check_address``: a TCP connection to the Ray cluster's GCS with a short timeout;
- ``check_mlflow``: an HTTP tracking server must answer ``/health`` within a few seconds
  and accept the client's credentials (refused credentials and a server that is down are
  told apart); a Postgres store (``check_database``) must take a login within seconds;
- ``check_trial_fits``: a trial's CPUs must fit on one node (a local Ray cannot grow);
- ``check_shared_storage``: on a cluster of more than one node, a marker file written in
  the study directory must be visible from every alive node (one tiny task per node,
  pinned to it). Nodes that join later are not checked.
- ``quick_mlflow_http``: MLflow's HTTP client retries for minutes by default; the tracking
  callback must not stall the study, so its calls fail fast (the journal keeps the event).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from tagtune.study.config import ConfigError
from tagtune.study.errors import first_line

TIMEOUT_S = 5.0
# MLflow's client reads these per request (mlflow.environment_variables).
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
              # Not a "View run ... at http://..." line per trial on the study's (the job's) output:
              # summary.json and the study's last lines say where the runs are.
              "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def check_address(address: str | None, timeout: float = TIMEOUT_S) -> None:
    """Something must accept connections at ``host:port`` (``auto`` is left to Ray)."""
    if not address or address in ("auto", "local"):
        return
    url = urlparse(address if "://" in address else f"gcs://{address}")
    if url.hostname is None or url.port is None:
        raise ConfigError("address", "expected host:port, ray://host:port or auto", where=address)
    try:
        socket.create_connection((url.hostname, url.port), timeout=timeout).close()
    except OSError as e:
        raise ConfigError("address", f"no Ray cluster answers there ({e.strerror or first_line(e)})",
                          where=address) from None


def token_auth_mode(address: str | None) -> None:
    """Ray's token authentication for a driver joining a cluster when a token is at hand and the
    user chose no mode: ``RAY_AUTH_MODE=token``, set before this process imports Ray.

    ``ray start`` (Ray >= 2.59) enables token authentication whenever a token exists (Ray's
    documented sources: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), but a
    driver connecting with ``ray.init(address=...)`` stays in mode "disabled" and is refused.
    Ray reads ``RAY_AUTH_MODE`` once, when it is imported: the CLI calls this with the study's
    address before it imports anything that imports Ray; later it changes nothing (a Python
    program that imported Ray itself sets ``RAY_AUTH_MODE`` itself, as Ray's docs say).
    """
    if address is None or "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules:
        return
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def psycopg_uri(uri: str) -> str:
    """``postgresql://`` with its driver named: psycopg 3 (``tagtune[cluster]``), which SQLAlchemy
    2.1 picks by default and 2.0 does not."""
    return "postgresql+psycopg://" + uri[len("postgresql://"):] if uri.startswith("postgresql://") else uri


def check_database(uri: str, password: str | None = None, field: str = "mlflow_uri",
                   timeout: float = TIMEOUT_S) -> None:
    """A Postgres store must take a login now (``password``, else libpq's own: ``PGPASSWORD``,
    ``~/.pgpass``). Left to MLflow, a database that does not answer costs minutes of its
    connection retries, then a traceback; a wrong password, a traceback. Named in the error
    with its password hidden."""
    import sqlalchemy

    where = sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    url = sqlalchemy.engine.make_url(psycopg_uri(uri))
    if password is not None:
        url = url.set(password=password)
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"connect_timeout": max(1, int(timeout))})
    except (ImportError, sqlalchemy.exc.ArgumentError) as e:  # no driver (psycopg2) installed
        raise ConfigError(field, f"cannot use this database ({first_line(e)}); "
                          "pip install 'tagtune[cluster]'", where=where) from None
    try:
        engine.connect().close()
    except sqlalchemy.exc.SQLAlchemyError as e:
        # The driver's own line: "... failed: Connection refused", "... password authentication
        # failed for user ...", "database ... does not exist".
        reason = " ".join(first_line(getattr(e, "orig", None) or e, 200).split())
        raise ConfigError(field, f"the database refuses this login or does not answer ({reason})",
                          where=where) from None
    finally:
        engine.dispose()


def check_mlflow(uri: str, timeout: float = TIMEOUT_S) -> None:
    """An HTTP tracking server must answer now, and take this client's credentials; a Postgres
    store must take a login (file and SQLite stores are checked later)."""
    if urlparse(uri).scheme.startswith("postgresql"):
        check_database(uri, timeout=timeout)
        return
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            r.read(64)
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise ConfigError("mlflow_uri", f"the tracking server answers HTTP {e.code}",
                              where=uri) from None
        # 401/403/404: something answers (an auth proxy, an older server): the login says more.
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError("mlflow_uri", f"no MLflow server answers ({first_line(reason)})",
                          where=uri) from None
    check_mlflow_login(uri, timeout)


def check_mlflow_login(uri: str, timeout: float = TIMEOUT_S) -> None:
    """The tracking server must accept the credentials MLflow's client sends (MLflow 3's
    basic-auth app: ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, else
    ``~/.mlflow/credentials``; or ``MLFLOW_TRACKING_TOKEN``). Left to the study, a refusal
    is a traceback from deep inside MLflow's client."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:  # the cheapest call that needs a login: any logged-in user may search experiments
        r = http_request(creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0,
                         timeout=timeout, params={"max_results": 1})
    except Exception as e:  # noqa: BLE001 -- requests' and MLflow's errors alike: no answer
        raise ConfigError("mlflow_uri", f"the tracking server does not answer ({first_line(e)})",
                          where=uri) from None
    if r.status_code == 401:
        if creds.username or creds.token:
            who = f"user {creds.username!r}" if creds.username else "MLFLOW_TRACKING_TOKEN"
            problem = (f"the tracking server refused the credentials ({who}); check "
                       "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or ~/.mlflow/credentials")
        else:
            problem = ("the tracking server asks for credentials: set MLFLOW_TRACKING_USERNAME and "
                       "MLFLOW_TRACKING_PASSWORD (or write ~/.mlflow/credentials)")
        raise ConfigError("mlflow_uri", problem, where=uri)
    if r.status_code == 403:
        raise ConfigError("mlflow_uri", f"the tracking server refuses user {creds.username!r} "
                          "access (its permissions)", where=uri)


@contextlib.contextmanager
def quick_mlflow_http() -> Iterator[None]:
    """MLflow HTTP calls inside fail within seconds instead of retrying for minutes."""
    saved = {k: os.environ.get(k) for k in QUICK_HTTP}
    os.environ.update(QUICK_HTTP)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_shared_storage(study_dir: Path, timeout: float = 120.0) -> None:
    """On a multi-node Ray cluster, every alive node must see the study directory."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    marker = study_dir / f".shared-{uuid.uuid4().hex[:12]}"
    marker.write_text(marker.name)

    @ray.remote(num_cpus=0, max_retries=0)
    def sees(path: str, expected: str) -> bool:
        try:
            return Path(path).read_text() == expected
        except OSError:
            return False

    try:
        refs = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]: sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
        ).remote(str(marker), marker.name) for n in nodes}
        try:
            seen = dict(zip(refs, ray.get(list(refs.values()), timeout=timeout), strict=True))
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as e:
            raise ConfigError("storage", f"cannot check that every node sees it ({first_line(e)})",
                              where=str(study_dir)) from None
    finally:
        marker.unlink(missing_ok=True)
    blind = sorted(node for node, ok in seen.items() if not ok)
    if blind:
        raise ConfigError("storage", f"not shared: node {blind[0]} cannot see it ({len(blind)} of "
                          f"{len(seen)} nodes); use a shared filesystem path on a multi-node cluster",
                          where=str(study_dir))


def check_trial_fits(cpus_per_trial: int, local: bool, gpus: float = 0.0) -> None:
    """A trial takes ``cpus_per_trial`` CPUs (and ``gpus`` GPUs, or a share of one) of one node.
    Where no node has that many, Tune would wait forever: an error on a local Ray (no node can
    join it), a warning on a cluster (an autoscaler may still add one)."""
    import ray

    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    largest = max((r.get("CPU", 0.0) for r in alive), default=0.0)
    most_gpus = max((r.get("GPU", 0.0) for r in alive), default=0.0)
    problems = []
    if cpus_per_trial > largest:
        problems.append(("cpus_per_trial",
                         f"{cpus_per_trial} CPUs per trial, but the largest node has {largest:g}"))
    if gpus > most_gpus:
        has = f"the largest node has {most_gpus:g}" if most_gpus else "no node has a GPU"
        problems.append(("gpus_per_trial", f"{gpus:g} GPUs per trial, but {has}"))
    for name, problem in problems:
        if local:
            raise ConfigError(name, f"{problem}: no trial could ever start", where="study")
        logging.getLogger(__name__).warning("%s: trials wait until a node that large joins", problem)


__all__ = ["check_address", "check_database", "check_mlflow", "check_mlflow_login",
           "check_shared_storage", "check_trial_fits", "token_auth_mode", "psycopg_uri",
           "quick_mlflow_http"]
