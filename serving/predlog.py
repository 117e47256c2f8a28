"""The prediction store monitoring reads: a journal written before each response, compacted into Parquet.

Layout (a contract with monitoring/): `<dir>/date=YYYY-MM-DD/part-<timestamp>-<uuid>.parquet`, columns
`request_id` (str), `ts` (UTC timestamp), `model_version` (int), `score` (float), `label_pred` (int),
then one column per feature and per key column that was sent. Next to them:
- `<dir>/_journal/*.wal`: answered requests not compacted yet (serving/journal.py). `read_predictions`
  reads them too, so monitoring sees a row as soon as it was answered, whether or not it is in Parquet.
- `<dir>/_deadletter/*.wal`: requests the service answered but whose rows could not become Parquet (kept
  whole, never dropped; `python -m serving.predlog repair <dir>` retries them).

Durability: a row is written to the OS before its response is sent, so `kill -9` loses nothing answered.
A machine crash (power, kernel) can lose what was not fsynced yet. By default the segment being appended to
is not fsynced (a periodic fsync stalls the appends behind it, which shows in p99 latency); a segment is
fsynced when it is sealed, and each Parquet part before the segment it came from is deleted, so a crash
loses at most the open segment: `flush_seconds` / `flush_rows` of answered rows.
`journal_fsync_seconds: N` also fsyncs the open segment every N seconds; 0 fsyncs before every response.

python -m serving.predlog status|repair <dir>
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving import journal
from serving.journal import Journal, Sealed

log = logging.getLogger(__name__)
STORE_ENV = "FLIGHTLOOP_PREDICTION_STORE"  # the store monitoring reads when the replicas log elsewhere (make stack)
FIXED = ["request_id", "ts", "model_version", "score", "label_pred"]
DEAD_DIR = "_deadletter"
CORRUPT_DIR = "_corrupt"
_US_PER_DAY = 86_400_000_000


class LogUnavailable(Exception):
    """The journal cannot take a request's rows: the request must not be answered 200."""


@dataclass
class Entry:
    """One answered request: its rows as sent, and what the model said about each."""

    request_id: str
    ts_us: int
    model_version: int
    rows: list[dict[str, Any]]
    scores: Any  # list or array of floats, one per row
    labels: Any


def rows_of(data: Any) -> list[dict[str, Any]]:
    """The rows of a (validated) request body: {"rows": [...]}, [...] or one row object."""
    if isinstance(data, dict):
        return data["rows"] if "rows" in data and isinstance(data["rows"], list) else [data]
    return data


def entry_of(rec: journal.Record) -> Entry:
    return Entry(rec.request_id, rec.ts_us, rec.model_version, rows_of(json.loads(rec.body)), rec.scores, rec.labels)


def _utc(t: datetime | str | None) -> pd.Timestamp | None:
    if t is None:
        return None
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _day(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us // _US_PER_DAY * 86_400, timezone.utc).strftime("%Y-%m-%d")


def _column(values: list, categorical: bool, numeric: bool):
    """One sent column as an Arrow array: features keep their declared type, keys their JSON type."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if not categorical and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if not numeric and present and all(isinstance(v, int) and -(2**63) <= v < 2**63 for v in present):
            return pa.array(values, type=pa.int64())
        # float() first: Arrow refuses a Python int beyond int64 even for a float64 column
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def to_table(entries: list[Entry], categorical: set[str], numeric: set[str] = frozenset()):
    """Answered requests -> one Arrow table in the contract's column order (no pandas: it is cheaper)."""
    import pyarrow as pa

    def per_row(get) -> list:
        return [get(e) for e in entries for _ in range(len(e.rows))]

    rows = [row for e in entries for row in e.rows]
    columns = {
        "request_id": pa.array(per_row(lambda e: e.request_id), pa.string()),
        "ts": pa.array(per_row(lambda e: e.ts_us), pa.timestamp("us", tz="UTC")),
        "model_version": pa.array(per_row(lambda e: e.model_version), pa.int64()),
        "score": pa.array(np.concatenate([np.asarray(e.scores, np.float64) for e in entries]), pa.float64()),
        "label_pred": pa.array(np.concatenate([np.asarray(e.labels, np.int64) for e in entries]), pa.int64()),
    }
    sent = list(dict.fromkeys(k for row in rows for k in row))
    for col in sent:
        columns[col] = _column([row.get(col) for row in rows], col in categorical, col in numeric)
    return pa.table(columns)


def to_frame(entries: list[Entry], categorical: set[str], numeric: set[str] = frozenset()) -> pd.DataFrame:
    return to_table(entries, categorical, numeric).to_pandas()


def _schema(schemas: dict[int, tuple[set[str], set[str]]], entries: list[Entry], default) -> tuple[set, set]:
    cat, num = set(), set()
    for v in {e.model_version for e in entries}:
        c, n = schemas.get(v, default)
        cat |= c
        num |= n
    return cat, num - cat


def convert(records: list[journal.Record], schemas: dict, default=(set(), set())):
    """Journal records -> ({day: Arrow table}, records that cannot be converted). A bad record never takes
    the others with it: when a day's table fails, each record is tried alone and only the failing ones
    are set apart."""
    entries: dict[str, list[tuple[journal.Record, Entry]]] = {}
    bad: list[journal.Record] = []
    for rec in records:
        try:
            entries.setdefault(_day(rec.ts_us), []).append((rec, entry_of(rec)))
        except (ValueError, TypeError, KeyError, UnicodeError):
            bad.append(rec)
    return _tables(entries, schemas, default, bad)


def _tables(by_day: dict[str, list[tuple[Any, Entry]]], schemas: dict, default, bad: list):
    tables = {}
    for day, pairs in sorted(by_day.items()):
        es = [e for _, e in pairs]
        try:
            tables[day] = to_table(es, *_schema(schemas, es, default))
            continue
        except Exception:  # Arrow/Unicode errors from one request's values; found below
            pass
        good = []
        for src, e in pairs:
            try:
                to_table([e], *_schema(schemas, [e], default))
                good.append(e)
            except Exception:
                bad.append(src)
        if good:
            tables[day] = to_table(good, *_schema(schemas, good, default))
    return tables, bad


# ---- reading ---------------------------------------------------------------------------------------------


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            c: pd.Series(dtype=t)
            for c, t in zip(FIXED, ["object", "datetime64[us, UTC]", "int64", "float64", "int64"], strict=True)
        }
    )


def _in_window(day: str, lo: pd.Timestamp | None, hi: pd.Timestamp | None) -> bool:
    start = pd.Timestamp(day).tz_localize("UTC")
    return not ((lo is not None and start + pd.Timedelta(days=1) <= lo) or (hi is not None and start >= hi))


def read_predictions(
    folder: Path | str, since: datetime | None = None, until: datetime | None = None, journal_rows: bool = True
) -> pd.DataFrame:
    """Logged predictions with `since <= ts < until` (naive datetimes are taken as UTC), oldest first.

    Rows still in the journal are included (`journal_rows`). A Parquet part or journal record that cannot
    be read is skipped with a warning, and listed in the result's `attrs["skipped"]`."""
    folder, lo, hi = Path(folder), _utc(since), _utc(until)
    skipped: dict[str, list[str]] = {"corrupt_parts": [], "journal_records": []}
    # segments first: one compacted after this listing has its parts written before it was deleted
    live = {p.stem: p for p in journal.segments(folder)} if journal_rows else {}
    frames = []
    parts = [
        f
        for d in sorted(folder.glob("date=*"))
        if _in_window(d.name.removeprefix("date="), lo, hi)
        for f in sorted(d.glob("part-*.parquet"))
    ]
    for f in parts:
        if f.stem.removeprefix("part-") in live:
            continue  # its segment is read below (it may be half compacted)
        try:
            frames.append(pd.read_parquet(f))
        except Exception as exc:  # a damaged part must not hide the rest of the store
            skipped["corrupt_parts"].append(str(f))
            log.warning("prediction store: skipped unreadable part %s (%s: %s)", f, exc.__class__.__name__, exc)
    for name, path in live.items():
        try:
            seg = journal.read_segment(path)
        except FileNotFoundError:  # compacted since the listing: its parts are complete now
            frames += [pd.read_parquet(f) for d in folder.glob("date=*") for f in d.glob(f"part-{name}.parquet")]
            continue
        tables, bad = convert(seg.records, seg.schemas)
        frames += [t.to_pandas() for day, t in tables.items() if _in_window(day, lo, hi)]
        for rec in bad:
            skipped["journal_records"].append(f"{path}:{rec.request_id}")
            log.warning("prediction store: skipped a journal record of %s (request %s)", path, rec.request_id)
    out = pd.concat(frames, ignore_index=True) if frames else _empty()
    if lo is not None:
        out = out[out["ts"] >= lo]
    if hi is not None:
        out = out[out["ts"] < hi]
    out = out.sort_values("ts", kind="stable").reset_index(drop=True)
    out.attrs["skipped"] = skipped
    return out


def replica_stores(folder: Path | str) -> dict[str, Path]:
    """The stores under `folder` by replica name: `folder` itself ("") when a service logs there, and
    each subfolder a replica logs to (`make stack` gives every replica its own)."""
    folder = Path(folder)

    def is_store(d: Path) -> bool:
        return any(d.glob("date=*")) or (d / journal.JOURNAL_DIR).exists()

    found = {"": folder} if is_store(folder) else {}
    if folder.is_dir():
        found |= {
            d.name: d
            for d in sorted(folder.iterdir())
            if d.is_dir() and not d.name.startswith(("date=", "_")) and is_store(d)
        }
    return found


def read_new(folder: Path | str, watermarks: dict[str, datetime]) -> tuple[pd.DataFrame, dict[str, datetime]]:
    """Rows each replica logged after its own watermark (its newest row read before), with a `replica`
    column, oldest first; and the watermarks moved to the newest row read per replica. A replica whose
    rows reach the store late (a slow flush, a replica that was down) is read from where it stopped, not
    from where the fastest replica got to, so every row is read once."""
    frames, marks, skipped = [], dict(watermarks), {"corrupt_parts": [], "journal_records": []}
    for name, path in replica_stores(folder).items():
        since = _utc(watermarks.get(name))
        rows = read_predictions(path, since=since)
        for key, items in rows.attrs.get("skipped", {}).items():
            skipped[key] += items
        if since is not None:  # `since` is inclusive: the newest row read last time is not new
            rows = rows[rows["ts"] > since]
        if len(rows):
            marks[name] = rows["ts"].max().tz_convert("UTC").tz_localize(None).to_pydatetime()
            frames.append(rows.assign(replica=name))
    out = pd.concat(frames, ignore_index=True) if frames else _empty().assign(replica=pd.Series(dtype=str))
    out = out.sort_values("ts", kind="stable").reset_index(drop=True)
    out.attrs["skipped"] = skipped
    return out, marks


def read_dead_letters(folder: Path | str) -> list[Entry]:
    """Requests the service answered whose rows could not be stored as Parquet (as they were sent)."""
    out = []
    for path in sorted((Path(folder) / DEAD_DIR).glob(f"*{journal.SUFFIX}")):
        for rec in journal.read_segment(path).records:
            try:
                out.append(entry_of(rec))
            except (ValueError, TypeError, KeyError):
                out.append(Entry(rec.request_id, rec.ts_us, rec.model_version, [], rec.scores, rec.labels))
    return out


# ---- writing ---------------------------------------------------------------------------------------------


def _write_atomic(path: Path, write) -> None:
    """Write to a hidden temporary, fsync, rename: readers never see half a file, a crash never loses it."""
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    try:
        with pa.OSFile(str(tmp), "wb") as sink:
            write(sink)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
        journal.fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_dead(folder: Path, name: str, schemas: dict, bad: list[journal.Record]) -> None:
    described = [{"version": v, "categorical": sorted(c), "numeric": sorted(n)} for v, (c, n) in schemas.items()]
    payload = b"".join(journal.frame(journal.SCHEMA, json.dumps(d).encode()) for d in described)
    payload += b"".join(r.raw for r in bad)
    _write_atomic(folder / DEAD_DIR / f"{name}{journal.SUFFIX}", lambda sink: sink.write(payload))


def write_parts(folder: Path, name: str, tables: dict) -> int:
    """`date=<day>/part-<name>.parquet` per day; the same segment always gives the same files, so a
    compaction cut short and done again leaves no duplicate rows."""
    import pyarrow.parquet as pq

    rows = 0
    for day, table in tables.items():
        _write_atomic(folder / f"date={day}" / f"part-{name}.parquet", lambda sink, t=table: pq.write_table(t, sink))
        rows += table.num_rows
    return rows


class PredictionLog:
    """Journal on the request path; one background thread compacts sealed segments into Parquet parts."""

    def __init__(
        self,
        folder: Path | str,
        categorical: set[str] | None = None,
        numeric: set[str] | None = None,
        flush_rows: int = 2000,
        flush_seconds: float = 5.0,
        fsync_seconds: float | None = None,
    ):
        self.folder = Path(folder)
        self.default_schema = (set(categorical or ()), set(numeric or ()))
        self.schemas: dict[int, tuple[set[str], set[str]]] = {}
        self._schema_lists: dict[int, tuple[list[str], list[str]]] = {}
        self.flush_rows, self.flush_seconds, self.fsync_seconds = flush_rows, flush_seconds, fsync_seconds
        self.journal = Journal(self.folder)
        self._sealed: list[Sealed] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._work = threading.Lock()  # one compaction at a time (thread, flush, close)
        self._thread: threading.Thread | None = None
        self.files_written = 0
        self.rows_written = 0  # rows in Parquet parts
        self.rows_journaled = 0
        self.recovered_rows = 0  # rows of segments left by a process that died, compacted by this one
        self.dead_letter_rows = 0
        self.errors = 0  # failed journal writes, failed compactions, records set apart
        self.journal_error: str | None = None  # set while the journal cannot take writes (/predict refuses)
        self.compaction_error: str | None = None  # set while sealed segments cannot become Parquet
        self._last_sync = time.monotonic()
        self._synced_size = 0
        self._retry_at = 0.0

    # -- request path

    def describe(self, version: int, categorical: list[str], numeric: list[str]) -> None:
        """Declare a model version's feature types (before its first request is logged)."""
        self.schemas[version] = (set(categorical), set(numeric))
        self._schema_lists[version] = (list(categorical), list(numeric))

    def append(self, request_id: str, ts_us: int, version: int, body: bytes, rows: list[dict], scores, labels):
        """Journal one answered request before its response is sent; raises LogUnavailable if it cannot."""
        schema = self._schema_lists.get(version) or tuple(sorted(s) for s in self.default_schema)
        record = journal.encode_record(request_id, ts_us, version, body, scores, labels)
        memo = Entry(request_id, ts_us, version, rows, scores, labels)
        try:
            self.journal.append(version, schema, record, len(rows), memo)
        except OSError as exc:
            self.errors += 1
            self.journal_error = f"{exc.__class__.__name__}: {exc}"
            self._wake.set()
            raise LogUnavailable(self.journal_error) from exc
        if self.journal_error is not None:
            self.journal_error = None
        self.rows_journaled += len(rows)
        if self.journal.rows >= self.flush_rows:
            self._wake.set()

    def put(self, request_id: str, ts: datetime, model_version: int, rows: list[dict], scores, labels) -> None:
        """`append` for callers that hold rows, not a request body."""
        ts_us = int(ts.timestamp() * 1_000_000)
        body = json.dumps({"rows": rows}).encode()
        self.append(request_id, ts_us, model_version, body, rows, np.asarray(scores, float), np.asarray(labels))

    def sync(self) -> None:
        """fsync the journal (the `journal_fsync_seconds: 0` policy calls it before every response)."""
        self.journal.sync()

    # -- lifecycle

    def start(self) -> None:
        try:  # dead letters an earlier process left keep the log degraded until repaired
            self.dead_letter_rows = sum(len(e.labels) for e in read_dead_letters(self.folder))
        except OSError:
            pass
        try:
            self.journal.open()
        except OSError as exc:  # the thread keeps trying; /ready says why meanwhile
            self.journal_error = f"{exc.__class__.__name__}: {exc}"
            log.error("prediction log: cannot open a journal in %s: %s", self.folder, self.journal_error)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and compact everything journaled (what cannot be compacted stays in the journal)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._work:
            self._seal(self.journal.close())
            self._compact_sealed()
            for s in self._sealed:  # left for the next start (or `repair`) to compact
                s.release(delete=False)
            self._sealed = []

    def flush(self) -> None:
        """Compact what is journaled now (tests, shutdown)."""
        with self._work:
            self._rotate()
            self._compact_sealed()

    def status(self) -> dict[str, Any]:
        return {
            "degraded": bool(self.journal_error or self.compaction_error or self.dead_letter_rows),
            "journal_error": self.journal_error,
            "compaction_error": self.compaction_error,
            "rows_journaled": self.rows_journaled,
            "rows_written": self.rows_written,
            "rows_pending": self.journal.rows + sum(s.rows for s in list(self._sealed)),
            "segments_pending": len(self._sealed),
            "recovered_rows": self.recovered_rows,
            "dead_letter_rows": self.dead_letter_rows,
            "errors": self.errors,
        }

    # -- the background thread

    def _run(self) -> None:
        next_scan = time.monotonic()  # first: segments a previous process left
        tick = min(0.2, self.flush_seconds / 2)
        while not self._stop.is_set():
            with self._work:
                try:
                    if time.monotonic() >= next_scan:  # and, later, those of a replica that died meanwhile
                        next_scan = time.monotonic() + 30
                        self._recover()
                    self._step()
                except Exception:  # the thread must outlive any one failure; counted, retried next tick
                    self.errors += 1
                    log.exception("prediction log: compaction step failed")
            self._wake.wait(tick)
            self._wake.clear()

    def _step(self) -> None:
        j = self.journal
        if self.journal_error is not None:
            self._probe()
        if j.rows and (j.rows >= self.flush_rows or time.monotonic() - j.first_at >= self.flush_seconds):
            self._rotate()
        if self.fsync_seconds and time.monotonic() - self._last_sync >= self.fsync_seconds:
            if j.size != self._synced_size:
                self._synced_size = j.size
                j.sync()
            self._last_sync = time.monotonic()
        if time.monotonic() >= self._retry_at:
            self._compact_sealed()

    def _rotate(self) -> None:
        try:
            sealed = self.journal.rotate()
        except OSError as exc:  # cannot start a new segment: keep appending to this one
            self.compaction_error = f"cannot start a journal segment: {exc.__class__.__name__}: {exc}"
            return
        self._seal(sealed)

    def _seal(self, sealed: Sealed | None) -> None:
        if sealed is not None:
            try:  # no one appends to it any more, so this stalls no request
                os.fsync(sealed.fd)
            except OSError as exc:
                log.warning("prediction log: cannot fsync %s: %s", sealed.path.name, exc)
            self._sealed.append(sealed)
        self._sealed += self.journal.abandoned
        self.journal.abandoned = []

    def _probe(self) -> None:
        """While the journal refuses writes, find out when it takes them again (space back, folder back)."""
        try:
            self.journal.folder.mkdir(parents=True, exist_ok=True)
            probe = self.journal.folder / ".probe"
            with open(probe, "wb") as f:
                f.write(b"\0" * 65536)
            probe.unlink()
            self.journal.open()
            self.journal_error = None
            log.warning("prediction log: the journal takes writes again")
        except OSError as exc:
            self.journal_error = f"{exc.__class__.__name__}: {exc}"

    def _compact_sealed(self) -> None:
        while self._sealed:
            s = self._sealed[0]
            try:
                self._compact(s)
            except OSError as exc:  # disk full, folder gone: the segment stays, retried in a second
                self.errors += 1
                self.compaction_error = f"{exc.__class__.__name__}: {exc}"
                self._retry_at = time.monotonic() + 1.0
                log.error("prediction log: cannot compact %s, kept for retry: %s", s.path.name, self.compaction_error)
                return
            self._sealed.pop(0)
            self.compaction_error = None

    def _compact(self, s: Sealed, recovered: bool = False) -> None:
        name = s.path.stem
        if s.memo is not None:
            by_day: dict[str, list[tuple[Entry, Entry]]] = {}
            for e in s.memo:
                by_day.setdefault(_day(e.ts_us), []).append((e, e))
            tables, bad_entries = _tables(by_day, self.schemas, self.default_schema, [])
            bad = []
            if bad_entries:  # rare: find their frames in the file to keep them whole
                ids = {(e.request_id, e.ts_us) for e in bad_entries}
                seg = journal.read_segment(s.path)
                bad = [r for r in seg.records if (r.request_id, r.ts_us) in ids]
            schemas = self.schemas
        else:
            seg = journal.read_segment(s.path)
            schemas = {**self.schemas, **seg.schemas}
            tables, bad = convert(seg.records, schemas, self.default_schema)
            if seg.torn_bytes:
                log.warning("prediction log: %s ends in %d bytes of an unfinished write", s.path.name, seg.torn_bytes)
        if bad:
            _write_dead(self.folder, name, schemas, bad)
        rows = write_parts(self.folder, name, tables)
        s.release(delete=True)
        if bad:
            n = sum(len(r.labels) for r in bad)
            self.dead_letter_rows += n
            self.errors += len(bad)
            log.error("prediction log: %d rows of %s could not become Parquet: kept in %s", n, name, DEAD_DIR)
        self.files_written += len(tables)
        self.rows_written += rows
        if recovered:
            self.recovered_rows += rows
            log.warning("prediction log: compacted %d rows a previous process left in %s", rows, s.path.name)

    def _recover(self) -> None:
        try:
            found = journal.orphans(self.folder)
        except OSError:
            return
        for i, s in enumerate(found):
            try:
                self._compact(s, recovered=True)
            except Exception as exc:  # left for the next scan; the others are released unread
                for rest in found[i:]:
                    rest.release(delete=False)
                self.errors += 1
                self.compaction_error = f"recovering {s.path.name}: {exc.__class__.__name__}: {exc}"
                raise


# ---- status and repair -----------------------------------------------------------------------------------


def store_status(folder: Path | str) -> dict[str, Any]:
    """What a prediction store holds, and what in it needs attention (reads every part)."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    parts, corrupt, rows = 0, [], 0
    for f in sorted(folder.glob("date=*/part-*.parquet")):
        try:
            rows += pq.ParquetFile(f).metadata.num_rows
            parts += 1
        except Exception:
            corrupt.append(str(f))
    segs = journal.segments(folder)
    orphans = journal.orphans(folder)
    orphan_names = [s.path.name for s in orphans]
    for s in orphans:
        s.release(delete=False)
    dead = read_dead_letters(folder)
    return {
        "parts": parts,
        "parquet_rows": rows,
        "corrupt_parts": corrupt,
        "journal_segments": len(segs),
        "orphan_segments": orphan_names,
        "dead_letter_requests": len(dead),
        "dead_letter_rows": sum(len(e.labels) for e in dead),
    }


def repair(folder: Path | str) -> dict[str, Any]:
    """Compact orphan segments, move corrupt parts aside to `_corrupt/`, and retry dead letters."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    plog = PredictionLog(folder)
    plog._recover()
    moved = []
    for f in sorted(folder.glob("date=*/part-*.parquet")):
        try:
            pq.ParquetFile(f).metadata  # noqa: B018 - reading the footer is the check
        except Exception:
            target = folder / CORRUPT_DIR / f.parent.name / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            f.replace(target)
            moved.append(str(target))
    retried = 0
    for path in sorted((folder / DEAD_DIR).glob(f"*{journal.SUFFIX}")):
        seg = journal.read_segment(path)
        tables, bad = convert(seg.records, seg.schemas)
        if not bad:
            retried += write_parts(folder, f"{path.stem}-repaired", tables)
            path.unlink()
    return {"recovered_rows": plog.recovered_rows, "moved_corrupt_parts": moved, "dead_letter_rows_stored": retried}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["status", "repair"])
    ap.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = store_status(args.folder) if args.command == "status" else repair(args.folder)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
