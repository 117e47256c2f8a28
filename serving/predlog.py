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


def _column(values: list, categorical: bool, numeric: bool):
    """One sent column as an Arrow array: features keep their declared type, keys their JSON type."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if not categorical and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if not numeric and present and all(isinstance(v, int) and abs(v) < 2**63 for v in present):
            return pa.array(values, type=pa.int64())
        return pa.array(values, type=pa.float64())
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def to_table(batches: list[dict[str, Any]], categorical: set[str], numeric: set[str] = frozenset()):
    """Queued request batches -> one Arrow table in the contract's column order (no pandas: it is cheaper)."""
    import pyarrow as pa

    def per_row(key: str) -> list:
        return [b[key] for b in batches for _ in range(len(b["scores"]))]

    rows = [row for b in batches for row in b["rows"]]
    columns = {
        "request_id": pa.array(per_row("request_id"), pa.string()),
        "ts": pa.array(per_row("ts"), pa.timestamp("us", tz="UTC")),
        "model_version": pa.array(per_row("model_version"), pa.int64()),
        "score": pa.array([x for b in batches for x in b["scores"]], pa.float64()),
        "label_pred": pa.array([x for b in batches for x in b["labels"]], pa.int64()),
    }
    sent = list(dict.fromkeys(k for row in rows for k in row))
    for col in sent:
        columns[col] = _column([row.get(col) for row in rows], col in categorical, col in numeric)
    return pa.table(columns)


def to_frame(batches: list[dict[str, Any]], categorical: set[str], numeric: set[str] = frozenset()) -> pd.DataFrame:
    return to_table(batches, categorical, numeric).to_pandas()


class PredictionLog:
    """A queue drained by one background thread that writes a Parquet part per flush."""

    def __init__(
        self,
        folder: Path | str,
        categorical: set[str] | None = None,
        numeric: set[str] | None = None,
        flush_rows: int = 2000,
        flush_seconds: float = 5.0,
    ):
        self.folder, self.categorical, self.numeric = Path(folder), set(categorical or ()), set(numeric or ())
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
        import pyarrow.parquet as pq

        by_day: dict[str, list[dict]] = {}
        for b in batches:
            by_day.setdefault(b["ts"].astimezone(timezone.utc).strftime("%Y-%m-%d"), []).append(b)
        for day, part in sorted(by_day.items()):
            try:
                table = to_table(part, self.categorical, self.numeric)
                folder = self.folder / f"date={day}"
                folder.mkdir(parents=True, exist_ok=True)
                name = f"part-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex}.parquet"
                pq.write_table(table, folder / f".{name}.tmp")
                (folder / f".{name}.tmp").rename(folder / name)  # readers never see a half-written file
                self.files_written += 1
                self.rows_written += table.num_rows
            except Exception:  # never let logging take the service down; counted in /metrics
                self.errors += 1
                log.exception("prediction log: could not write %d requests of %s", len(part), day)
