"""Where the MLflow runs go: the tracking URI, the artifact folder of a new experiment, and the check that the store
can be used before anything trains."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from tuner.errors import UserError, mask_url, sqlite_file, url_failure

DEFAULT_URI = "sqlite:///mlflow.db"
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")


def tracking_uri(flag: str | None) -> tuple[str, str]:
    """The tracking URI and where it came from: ``--tracking-uri``, then ``MLFLOW_TRACKING_URI``, then the default."""
    if flag:
        return flag, "--tracking-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    return DEFAULT_URI, "--tracking-uri (default)"


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: ``<folder of the SQLite file>/mlruns/<experiment>`` as a ``file://`` URI.

    Without it MLflow puts them in ``./mlruns`` of whatever the working directory is, away from the database.
    ``None`` (the store's own default) for other stores: a server chooses its artifact root, and a
    PostgreSQL or MySQL database has no folder of its own on this machine.
    """
    if urlsplit(uri).scheme.split("+")[0] != "sqlite":
        return None
    return (Path(sqlite_file(uri)).resolve().parent / "mlruns" / experiment).as_uri()


def check_reachable(uri: str, where: str) -> None:
    """Fail with one line if the tracking store at ``uri`` cannot be used; creates nothing."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme not in SCHEMES:
        raise UserError(
            f"{where}: {mask_url(uri)!r} is not allowed (allowed: sqlite:///mlflow.db, http(s)://host:port of an "
            "`mlflow server`, or a postgresql:// or mysql:// database; or --no-tracking)"
        )
    if scheme in ("http", "https"):
        import base64
        import urllib.request

        # urllib does not read credentials from a URL; MLflow's client (requests) does.
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")  # no host: urlopen says so
        request = urllib.request.Request(parts._replace(netloc=host).geturl().rstrip("/") + "/health")
        if parts.username:
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except Exception as err:  # URLError, timeouts, HTTP errors, bad hosts
            raise UserError(
                f"{where}: cannot reach the MLflow server at {mask_url(uri)!r}: {url_failure(err, uri)} (start it "
                "with `mlflow server`, or pass --no-tracking)"
            ) from None
    elif scheme == "sqlite":
        folder = Path(sqlite_file(uri)).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(
                f"{where}: {mask_url(uri)!r}: {str(folder)!r} is not a writable folder (allowed: an SQLite file in "
                "a writable folder)"
            )
    else:
        import sqlalchemy

        try:
            sqlalchemy.create_engine(uri).connect().close()
        except Exception as err:  # drivers raise their own kinds
            raise UserError(f"{where}: cannot connect to {mask_url(uri)!r}: {url_failure(err, uri)}") from None
