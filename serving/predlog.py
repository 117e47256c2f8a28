"""The prediction store monitoring reads: Parquet files written off the request path, in batches.

Layout (a contract with monitoring/): `<dir>/date=YYYY-MM-DD/part-<timestamp>-<uuid>.parquet`, columns
`request_id` (str), `ts` (UTC timestamp), `model_version` (int), `score` (float), `label_pred` (int),
then one column per feature and per key column that was sent."""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)
FIXED = ["request_id", "ts", "model_version", "score", "label_pred"]


def _utc(t: datetime | str | None) -> pd.Timestamp | None:
    if t is None:
        return None
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def read_predictions(folder: Path | str, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """Logged predictions with `since <= ts < until` (naive datetimes are taken as UTC), oldest first."""
    folder, lo, hi = Path(folder), _utc(since), _utc(until)
    frames = []
    for part in sorted(folder.glob("date=*")):
        day = pd.Timestamp(part.name.removeprefix("date=")).tz_localize("UTC")
        if (lo is not None and day + pd.Timedelta(days=1) <= lo) or (hi is not None and day >= hi):
            continue  # whole partition outside the window
        frames += [pd.read_parquet(f) for f in sorted(part.glob("part-*.parquet"))]
    if not frames:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in zip(FIXED, ["object", "datetime64[us, UTC]", "int64", "float64", "int64"], strict=True)
            }
        )
    out = pd.concat(frames, ignore_index=True)
    if lo is not None:
        out = out[out["ts"] >= lo]
    if hi is not None:
        out = out[out["ts"] < hi]
    return out.sort_values("ts", kind="stable").reset_index(drop=True)


def to_frame(batches: list[dict[str, Any]], categorical: set[str]) -> pd.DataFrame:
    """Queued request batches -> one table in the contract's column order."""
    sizes = [len(b["scores"]) for b in batches]
    frame = pd.DataFrame(
        {
            "request_id": [b["request_id"] for b, k in zip(batches, sizes, strict=True) for _ in range(k)],
            "ts": pd.to_datetime([b["ts"] for b, k in zip(batches, sizes, strict=True) for _ in range(k)], utc=True),
            "model_version": pd.Series(
                [b["model_version"] for b, k in zip(batches, sizes, strict=True) for _ in range(k)], dtype="int64"
            ),
            "score": pd.Series([s for b in batches for s in b["scores"]], dtype="float64"),
            "label_pred": pd.Series([v for b in batches for v in b["labels"]], dtype="int64"),
        }
    )
    sent = pd.DataFrame.from_records([row for b in batches for row in b["rows"]])
    for col in sent.columns:
        values = sent[col]
        if col in categorical or values.map(lambda v: isinstance(v, str)).any():
            frame[col] = values.map(lambda v: None if v is None or v != v else str(v)).astype("object")
        else:
            frame[col] = pd.to_numeric(values).astype("float64")
    return frame


class PredictionLog:
    """A queue drained by one background thread that writes a Parquet part per flush."""

    def __init__(
        self,
        folder: Path | str,
        categorical: set[str] | None = None,
        flush_rows: int = 2000,
        flush_seconds: float = 5.0,
    ):
        self.folder, self.categorical = Path(folder), set(categorical or ())
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.files_written = 0
        self.rows_written = 0
        self.errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def put(self, request_id: str, ts: datetime, model_version: int, rows: list[dict], scores, labels) -> None:
        """Called on the request path: only an enqueue."""
        self._q.put(
            {
                "request_id": request_id,
                "ts": ts,
                "model_version": model_version,
                "rows": rows,
                "scores": scores,
                "labels": labels,
            }
        )

    def close(self) -> None:
        """Stop the thread after it has written everything queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._drain_and_write()  # anything put after the thread's last look

    def flush(self) -> None:
        """Write what is queued now (tests, shutdown)."""
        self._drain_and_write()

    def _drain(self, first: dict | None = None) -> list[dict]:
        out = [first] if first else []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out

    def _drain_and_write(self) -> None:
        batches = self._drain()
        if batches:
            self._write(batches)

    def _run(self) -> None:
        pending: list[dict] = []
        rows = 0
        deadline = None
        while not self._stop.is_set():
            try:
                item = self._q.get(timeout=0.2)
                new = self._drain(item)
                pending += new
                rows += sum(len(b["scores"]) for b in new)
                deadline = deadline or (datetime.now().timestamp() + self.flush_seconds)
            except queue.Empty:
                pass
            if pending and (rows >= self.flush_rows or datetime.now().timestamp() >= deadline):
                self._write(pending)
                pending, rows, deadline = [], 0, None
        pending += self._drain()
        if pending:
            self._write(pending)

    def _write(self, batches: list[dict]) -> None:
        try:
            frame = to_frame(batches, self.categorical)
            for day, part in frame.groupby(frame["ts"].dt.strftime("%Y-%m-%d"), sort=True):
                folder = self.folder / f"date={day}"
                folder.mkdir(parents=True, exist_ok=True)
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
                tmp = folder / f".part-{stamp}-{uuid.uuid4().hex}.tmp"
                part.reset_index(drop=True).to_parquet(tmp, index=False)
                tmp.rename(folder / tmp.name.removeprefix(".").replace(".tmp", ".parquet"))
                self.files_written += 1
                self.rows_written += len(part)
        except Exception:  # never let logging take the service down; count it for /metrics
            self.errors += 1
            log.exception("prediction log: could not write %d batches", len(batches))
