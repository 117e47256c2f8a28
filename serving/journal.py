"""The prediction log's append-only journal: every answered request is a frame in a segment file, written
(to the OS) before its response is sent, so killing the process loses nothing it answered.

A frame is `kind (1 byte) | length (u32) | crc32 (u32) | payload`. Kinds: `S` a schema (JSON: model version,
categorical and numeric features), written once per model version per segment before its first record, so
a segment converts to the store's columns on its own; `R` a record (see `encode_record`). A reader stops at
the first frame that is cut short or fails its CRC: that is a write the machine did not finish.

A segment is `<dir>/_journal/<stamp>-<uuid>.wal`, `flock`ed by the process that owns it until it has been
compacted into Parquet and deleted; one that nobody holds belongs to a process that died (`orphans`)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

JOURNAL_DIR = "_journal"
SUFFIX = ".wal"
_FRAME = struct.Struct("<cII")  # kind, payload length, crc32(kind + payload)
_RECORD = struct.Struct("<qqIH")  # ts (µs since the epoch, UTC), model version, rows, request id length
SCHEMA, RECORD = b"S", b"R"


def frame(kind: bytes, payload: bytes) -> bytes:
    return _FRAME.pack(kind, len(payload), zlib.crc32(payload, zlib.crc32(kind))) + payload


def encode_record(request_id: str, ts_us: int, version: int, body: bytes, scores: np.ndarray, labels: np.ndarray):
    """One answered request: its scores and labels as arrays, then the request body exactly as it was sent."""
    rid = request_id.encode()
    head = _RECORD.pack(ts_us, version, len(scores), len(rid))
    return b"".join((head, rid, scores.astype("<f8").tobytes(), labels.astype(np.uint8).tobytes(), body))


@dataclass
class Record:
    request_id: str
    ts_us: int
    model_version: int
    scores: list[float]
    labels: list[int]
    body: bytes
    raw: bytes = b""  # the whole frame, to copy into a dead-letter file


def decode_record(payload: bytes) -> Record:
    ts_us, version, n, rid_len = _RECORD.unpack_from(payload)
    at = _RECORD.size
    rid = payload[at : at + rid_len].decode()
    at += rid_len
    scores = np.frombuffer(payload, "<f8", n, at).tolist()
    at += 8 * n
    labels = np.frombuffer(payload, np.uint8, n, at).astype(int).tolist()
    return Record(rid, ts_us, version, scores, labels, payload[at + n :])


@dataclass
class Segment:
    """What a segment file holds: schemas by model version, records, and how it ended."""

    path: Path
    schemas: dict[int, tuple[set[str], set[str]]] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    torn_bytes: int = 0  # bytes after the last whole frame (a write in progress, or one a crash cut short)


def read_segment(path: Path) -> Segment:
    """Every whole frame of a segment, in order; raises FileNotFoundError when it is gone (compacted)."""
    data = path.read_bytes()
    seg, at = Segment(path), 0
    while at + _FRAME.size <= len(data):
        kind, length, crc = _FRAME.unpack_from(data, at)
        end = at + _FRAME.size + length
        if end > len(data) or zlib.crc32(data[at + _FRAME.size : end], zlib.crc32(kind)) != crc:
            break
        payload = data[at + _FRAME.size : end]
        if kind == SCHEMA:
            s = json.loads(payload)
            seg.schemas[int(s["version"])] = (set(s["categorical"]), set(s["numeric"]))
        elif kind == RECORD:
            rec = decode_record(payload)
            rec.raw = data[at:end]
            seg.records.append(rec)
        at = end
    seg.torn_bytes = len(data) - at
    return seg


def segment_name() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex}"


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


class Sealed:
    """A segment no longer written to, still locked by its owner until compacted."""

    def __init__(self, path: Path, fd: int, memo: list | None = None, rows: int = 0):
        self.path, self.fd, self.rows = path, fd, rows
        self.memo = memo  # what was appended, in order (None: read the file)

    def release(self, delete: bool) -> None:
        if delete:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


def fsync_dir(path: Path) -> None:
    """Make a new or renamed entry of `path` durable (the file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The segment this process appends to; `append` is the only call on the request path.

    New segments are made (and their directory entry synced) by `open`/`rotate`, off the request path."""

    def __init__(self, folder: Path):
        self.folder = Path(folder) / JOURNAL_DIR
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.path: Path | None = None
        self.size = 0
        self.rows = 0
        self.first_at = 0.0  # when the segment got its first record (its age, for flush_seconds)
        self._described: set[int] = set()
        self._memo: list = []
        self.abandoned: list[Sealed] = []  # segments whose failed write could not be undone

    def _new(self) -> tuple[int, Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{segment_name()}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        _lock(fd)  # a fresh name: nobody else can hold it
        try:
            fsync_dir(self.folder)  # the segment itself survives a crash, not only its bytes
        except OSError:
            pass
        return fd, path

    def _swap(self, fd: int | None, path: Path | None) -> Sealed | None:
        """Under the lock: make (fd, path) current; the old segment comes back sealed if it holds anything."""
        old = None
        if self._fd is not None:
            old = Sealed(self.path, self._fd, self._memo, self.rows) if self.size else None
            if old is None:
                os.close(self._fd)
                self.path.unlink(missing_ok=True)
        self._fd, self.path, self.size, self.rows, self._memo = fd, path, 0, 0, []
        self._described = set()
        return old

    def open(self) -> None:
        """Start a segment if there is none (raises OSError when the folder cannot take one)."""
        with self._lock:
            if self._fd is None:
                self._swap(*self._new())

    def append(self, version: int, schema: tuple[list[str], list[str]], record: bytes, rows: int, memo) -> None:
        """Write one record frame (the version's schema first, once per segment): all of it or none of it."""
        with self._lock:
            if self._fd is None:  # after a failed write, or before `open`
                self._swap(*self._new())
            data = frame(RECORD, record)
            if version not in self._described:
                cat, num = schema
                described = json.dumps({"version": version, "categorical": cat, "numeric": num}).encode()
                data = frame(SCHEMA, described) + data
            try:
                view, done = memoryview(data), 0
                while done < len(data):
                    done += os.write(self._fd, view[done:])
            except OSError:
                try:  # leave no half frame behind: later frames must stay readable
                    os.ftruncate(self._fd, self.size)
                except OSError:  # readers stop at the torn frame; the next append starts a new segment
                    self.abandoned.append(Sealed(self.path, self._fd, self._memo if self.size else None, self.rows))
                    self._fd, self.path, self.size, self.rows = None, None, 0, 0
                raise
            if not self.rows:
                self.first_at = time.monotonic()
            self.size += len(data)
            self.rows += rows
            self._described.add(version)
            self._memo.append(memo)

    def sync(self) -> None:
        """fsync the current segment (outside the lock, so appends never wait for the disk)."""
        with self._lock:
            fd = os.dup(self._fd) if self._fd is not None else None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def rotate(self) -> Sealed | None:
        """Seal the current segment if it holds anything, and start the next one."""
        if self._fd is not None and self.size == 0:
            return None
        fd, path = self._new()
        with self._lock:
            return self._swap(fd, path)

    def close(self) -> Sealed | None:
        """Seal the current segment (if it holds anything) and start none."""
        with self._lock:
            return self._swap(None, None)


def orphans(folder: Path) -> list[Sealed]:
    """Segments whose owner is gone (nobody holds their lock), now locked by the caller."""
    found = []
    for path in sorted((Path(folder) / JOURNAL_DIR).glob(f"*{SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        if _lock(fd) and os.fstat(fd).st_nlink > 0:  # nlink 0: compacted by someone else meanwhile
            found.append(Sealed(path, fd))
        else:
            os.close(fd)
    return found


def segments(folder: Path) -> list[Path]:
    return sorted((Path(folder) / JOURNAL_DIR).glob(f"*{SUFFIX}"))
