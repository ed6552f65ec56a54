"""Grafana's HTTP API, through grafana-client: upload the dashboards and, optionally,
publish one-second figures to Grafana Live.

Authentication is a service-account token (Grafana ≥ 9), sent as
``Authorization: Bearer <token>``. The calls, as Grafana documents them:

- ``GET /api/folders/<uid>``, and ``POST /api/folders`` with ``{"uid", "title"}`` when
  it answers 404: the folder the boards go in;
- ``POST /api/dashboards/db`` with ``{"dashboard": ..., "folderUid": ..., "overwrite":
  true, "message": ...}`` for each board; the board's ``id`` is dropped so that its
  ``uid`` alone decides which dashboard is replaced;
- ``POST /api/live/push/<stream>`` with an Influx line-protocol body: Grafana Live
  publishes each line on channel ``stream/<stream>/<measurement>``, in memory only.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaException

from streamwise.core.errors import ServiceUnavailableError, StreamwiseError

FOLDER_UID = "streamwise"
FOLDER_TITLE = "streamwise"


class GrafanaError(StreamwiseError):
    """Grafana refused a call; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Grafana:
    def __init__(self, url: str, token: str, timeout_s: float = 10.0) -> None:
        if not token:
            raise GrafanaError("grafana: no service-account token (set STREAMWISE_GRAFANA__TOKEN)")
        self.url = url.rstrip("/")
        self.api = GrafanaApi.from_url(self.url, credential=token, timeout=timeout_s)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GrafanaException as e:
            raise GrafanaError(f"grafana: {what} at {self.url}: {e.message}", e.status_code) from None
        except OSError as e:
            raise ServiceUnavailableError(f"grafana: {what} at {self.url}: {e}") from None

    def ensure_folder(self, uid: str = FOLDER_UID, title: str = FOLDER_TITLE) -> str:
        """The uid of the folder the boards go in, created when Grafana does not have it."""
        try:
            self._call(f"reading folder {uid}", self.api.folder.get_folder, uid)
        except GrafanaError as e:
            if e.status != 404:
                raise
            self._call(f"creating folder {uid}", self.api.folder.create_folder, title, uid=uid)
        return uid

    def push_dashboard(self, board: Mapping[str, Any], folder_uid: str | None = FOLDER_UID, message: str = "") -> dict[str, Any]:
        """Creates or replaces the dashboard with ``board["uid"]``; returns Grafana's answer
        (``uid``, ``url``, ``version``, ``status``)."""
        body: dict[str, Any] = {"dashboard": {k: v for k, v in board.items() if k != "id"}, "overwrite": True}
        if folder_uid:
            body["folderUid"] = folder_uid
        if message:
            body["message"] = message
        result = self._call(f"pushing dashboard {board.get('uid')}", self.api.dashboard.update_dashboard, body)
        return dict(result or {})

    def push_live(self, stream: str, lines: Iterable[str]) -> int:
        """Publishes line-protocol ``lines`` to Grafana Live stream ``stream``; returns how many."""
        if not re.fullmatch(r"[A-Za-z0-9_\-.]+", stream):
            raise GrafanaError(f"grafana: live stream id {stream!r}: letters, digits, _ - . only")
        lines = list(lines)
        if lines:
            self._call(
                f"pushing to live stream {stream}", self.api.client.POST, f"/live/push/{stream}",
                data="\n".join(lines).encode(), headers={"Content-Type": "text/plain"}, accept_empty_json=True,
            )
        return len(lines)


def _escape(text: str) -> str:
    return re.sub(r"([,= \\])", r"\\\1", text)


def line_protocol(measurement: str, tags: Mapping[str, str], fields: Mapping[str, float], at_s: float | None = None) -> str | None:
    """One Influx line-protocol line; NaN fields are left out, and a line with no field is None.

    Examples
    --------
    >>> line_protocol("streamwise", {"pipeline": "fraud eu"}, {"events_per_s": 12.5, "lag": float("nan")}, 1.0)
    'streamwise,pipeline=fraud\\\\ eu events_per_s=12.5 1000000000'
    """
    kept = {k: float(v) for k, v in fields.items() if not math.isnan(float(v))}
    if not kept:
        return None
    tag_text = "".join(f",{_escape(k)}={_escape(v)}" for k, v in sorted(tags.items()))
    field_text = ",".join(f"{_escape(k)}={v!r}" for k, v in kept.items())
    ns = int((time.time() if at_s is None else at_s) * 1e9)
    return f"{_escape(measurement)}{tag_text} {field_text} {ns}"
