"""The training process's handle on the follower process, which writes MLflow off the training's clock.

During ``tuner study`` the mirroring is done by a follower process (``python -m tuner.tracking.follow``), so that the
training process never imports MLflow nor waits for it: the training process writes one JSON line per stored trial
to the follower's stdin. The follower ignores Ctrl-C, and when its stdin closes, however the training process ended
(even by kill -9), it syncs every study once more and exits.

This module imports only the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

# The follower's HTTP client gives up sooner than MLflow's defaults (7 retries,
# 120 s timeout): a study must not wait minutes at its end for a dead server.
FOLLOWER_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class Follower:
    """The training process's end of the follower: tells it what was stored; waits for it only at the end.

    Messages are JSON lines: ``start`` (where to read and write), ``trial`` (a
    stored trial's id), ``final`` (a study's final evaluation is stored), ``runs``
    (answered with the study's trial number -> run id), ``attach`` (files for
    the parent run), ``end`` (the parent run's final status). If the follower
    dies, the study goes on and :meth:`close` says so.
    """

    def __init__(self, uri: str, storage_url: str, experiment: str, studies: list[str], version: str) -> None:
        # Its own session: Ctrl-C in the terminal reaches the training process
        # only, which closes the pipe; the follower finishes the mirror and exits.
        self.uri = uri
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuner.tracking.follow"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=FOLLOWER_ENV | dict(os.environ),
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes (PIPE above)
        self.pipe: IO[str] = self.proc.stdin
        self.answers: IO[str] = self.proc.stdout
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        # The storage URL may hold a password: it travels on the pipe, never in argv.
        self._send(
            op="start", tracking_uri=uri, storage=storage_url, experiment=experiment, studies=studies, version=version
        )

    def _read(self) -> None:
        for line in self.answers:
            self.replies.put(json.loads(line))

    def _send(self, **message: Any) -> bool:
        try:
            self.pipe.write(json.dumps(message) + "\n")
            self.pipe.flush()
            return True
        except (OSError, ValueError):  # the follower is gone (broken pipe, closed); close() reports it
            return False

    def _reply(self, op: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = self.replies.get(timeout=left)
            except queue.Empty:
                return None
            if reply.get("op") == op:  # a late answer to an earlier question is dropped
                return reply
        return None

    def trial(self, study: str, trial_id: int) -> None:
        """Tell the follower that the trial of storage id ``trial_id`` is stored; returns at once."""
        self._send(op="trial", study=study, id=trial_id)

    def final(self, study: str) -> None:
        """Tell the follower that the study's final evaluation is stored: it writes the final runs while the next
        study trains (or the report is drawn), not at the end; returns at once."""
        self._send(op="final", study=study)

    def runs(self, study: str, timeout: float = 60.0) -> dict[int, str]:
        """Trial number -> MLflow run id of the study's trials mirrored so far (waits for the follower to catch up)."""
        reply = self._send(op="runs", study=study) and self._reply("runs", timeout)
        return {int(k): v for k, v in (reply or {}).get("runs", {}).items()}

    def attach(self, study: str, paths: list[Path], root: Path) -> None:
        """Files under ``root`` for the study's parent run, in the same folders there (``plots/``)."""
        files = [(str(p.resolve()), str(p.parent.relative_to(root)).removeprefix(".")) for p in paths]
        self._send(op="attach", study=study, paths=files)

    def end(self, study: str, status: str) -> None:
        """The study is done: its parent run gets ``status`` (``FINISHED``, ``FAILED``) once its runs are synced."""
        self._send(op="end", study=study, status=status)

    def close(self, timeout: float = 300.0) -> dict[str, Any]:
        """Close the pipe, let the follower sync once more, and return its report (``error`` set if something is
        missing)."""
        with contextlib.suppress(OSError):
            self.pipe.close()
        report = self._reply("report", timeout)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return report or {
            "error": f"the tracking process ended without a report (exit code {self.proc.poll()})",
            "written": 0,
            "runs": 0,
        }
