"""The two cache tiers: memory (bytes in a dict) and disk (one file per object).

Each tier's *contents* are decided by its eviction policy (appliance/policies); the
tier only holds data and keeps it consistent with the policy. Index and policy are
touched on the event loop only; the disk tier's blocking file work is in the
``*_blocking`` functions, which the server runs in a thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from appliance.objects import ObjectMeta, decode_header, encode_header
from appliance.policies import make_policy
from streamcdn.digest import digest_bytes

log = logging.getLogger("streamcdn.appliance.tiers")

HEADER_PEEK_BYTES = 4096
DISK_RETRY_S = 30.0  # after a failed write, how long the disk tier rests before trying again


class MemoryTier:
    def __init__(self, capacity_bytes: int, policy: str) -> None:
        self.policy = make_policy(policy, capacity_bytes)
        self._objects: dict[str, tuple[ObjectMeta, bytes]] = {}

    @property
    def capacity_bytes(self) -> int:
        return self.policy.capacity_bytes

    @property
    def used_bytes(self) -> int:
        return self.policy.used_bytes

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, key: str) -> bool:
        return key in self._objects

    def get(self, key: str) -> tuple[ObjectMeta, bytes] | None:
        if self.policy.hit(key):
            return self._objects[key]
        return None

    def put(self, meta: ObjectMeta, data: bytes) -> bool:
        """Offer an object; the policy may decline it. True if it is now resident."""
        for evicted in self.policy.admit(meta.key, meta.size):
            self._objects.pop(evicted, None)
        if meta.key in self.policy:
            self._objects[meta.key] = (meta, data)
            return True
        self._objects.pop(meta.key, None)
        return False

    def remove(self, key: str) -> None:
        self.policy.remove(key)
        self._objects.pop(key, None)

    def size_of(self, key: str) -> int:
        return self._objects[key][0].size

    def peek(self, key: str) -> tuple[ObjectMeta, bytes] | None:
        """The object without counting an access (admin, read-ahead)."""
        return self._objects.get(key)

    def sizes(self) -> list[tuple[str, int]]:
        return [(k, meta.size) for k, (meta, _) in self._objects.items()]

    def keys(self) -> list[str]:
        return list(self._objects)


Stamp = tuple[int, int, int]  # a file's (st_ino, st_size, st_mtime_ns)


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class DiskEntry:
    meta: ObjectMeta
    path: Path
    body_offset: int
    # The file's stamp when its digest last matched (or when this process wrote it). A hit
    # whose fstat differs is checked again before it is served: a file rewritten or
    # truncated under the appliance is never sent. None: not checked since start.
    stamp: Stamp | None = None

    @property
    def verified(self) -> bool:
        return self.stamp is not None


@dataclass
class LoadReport:
    objects: int = 0
    bytes: int = 0
    dropped: list[str] = field(default_factory=list)  # files removed as truncated or foreign


def key_hash(key: str) -> str:
    return xxhash.xxh3_64_hexdigest(key.encode())


def new_object_path(objects_dir: Path, key: str) -> Path:
    """A fresh name per write, so deleting an evicted copy can never hit its successor."""
    h = key_hash(key)
    return objects_dir / h[:2] / f"{h}.{uuid.uuid4().hex[:12]}.obj"


def read_entry_blocking(path: Path) -> DiskEntry:
    with path.open("rb") as f:
        head = f.read(HEADER_PEEK_BYTES)
        meta, offset = decode_header(head)
        if offset > len(head):
            raise ValueError("header larger than the peek")
        size = os.fstat(f.fileno()).st_size
    if size != offset + meta.size:
        raise ValueError(f"length {size} is not header {offset} + body {meta.size}")
    return DiskEntry(meta, path, offset)


def verify_blocking(entry: DiskEntry) -> tuple[bytes, Stamp] | None:
    """The body and the file's stamp if it still matches its digest, else None. The stamp
    is taken before the read, so any later change to the file changes it."""
    try:
        with entry.path.open("rb") as f:
            stamp = stamp_of(os.fstat(f.fileno()))
            f.seek(entry.body_offset)
            data = f.read(entry.meta.size + 1)
    except OSError:
        return None
    if len(data) != entry.meta.size or digest_bytes(data) != entry.meta.digest:
        return None
    return data, stamp


class DiskTier:
    def __init__(self, root: Path, capacity_bytes: int, policy: str) -> None:
        self.root = root
        self.objects_dir = root / "objects"
        self.tmp_dir = root / "tmp"
        self.policy = make_policy(policy, capacity_bytes)
        self._index: dict[str, DiskEntry] = {}
        self.degraded: str | None = None  # why writes are off, if they are
        self._retry_at = 0.0

    @property
    def capacity_bytes(self) -> int:
        return self.policy.capacity_bytes

    @property
    def used_bytes(self) -> int:
        return self.policy.used_bytes

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def keys(self) -> list[str]:
        return list(self._index)

    # -- start ---------------------------------------------------------------------

    def load_blocking(self) -> tuple[list[DiskEntry], LoadReport]:
        """Scan the cache dir: clear temp files (a crash's partial objects), read every header."""
        report = LoadReport()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        entries = []
        for path in sorted(self.objects_dir.glob("*/*.obj"), key=lambda p: p.stat().st_mtime):
            try:
                entry = read_entry_blocking(path)
                if not path.name.startswith(key_hash(entry.meta.key) + "."):
                    raise ValueError("stored under the wrong name")
            except (OSError, ValueError, TypeError) as exc:
                report.dropped.append(f"{path.name}: {exc}")
                path.unlink(missing_ok=True)
                continue
            entries.append(entry)
        return entries, report

    def adopt(self, entries: list[DiskEntry], report: LoadReport) -> list[str]:
        """Index loaded entries, oldest first, through the policy; returns files to delete."""
        doomed = []
        for e in entries:
            doomed += self._index_entry(e)
        report.objects = len(self._index)
        report.bytes = self.used_bytes
        return doomed

    def _index_entry(self, entry: DiskEntry) -> list[str]:
        doomed = []
        previous = self._index.pop(entry.meta.key, None)
        if previous is not None:  # a newer copy of the same object replaces the older file
            doomed.append(str(previous.path))
        for evicted in self.policy.admit(entry.meta.key, entry.meta.size):
            gone = self._index.pop(evicted, None)
            if gone is not None:
                doomed.append(str(gone.path))
        if entry.meta.key in self.policy:
            self._index[entry.meta.key] = entry
        else:
            doomed.append(str(entry.path))
        return doomed

    # -- serving -------------------------------------------------------------------

    def get(self, key: str) -> DiskEntry | None:
        if self.policy.hit(key):
            return self._index[key]
        return None

    def peek(self, key: str) -> DiskEntry | None:
        """The entry without counting an access."""
        return self._index.get(key)

    def sizes(self) -> list[tuple[str, int]]:
        return [(k, e.meta.size) for k, e in self._index.items()]

    def remove(self, key: str) -> str | None:
        """Forget ``key``; returns the file to delete (in a thread), if there was one."""
        self.policy.remove(key)
        entry = self._index.pop(key, None)
        return str(entry.path) if entry else None

    # -- writing -------------------------------------------------------------------

    def writable(self, now: float) -> bool:
        return self.degraded is None or now >= self._retry_at

    def write_blocking(self, meta: ObjectMeta, data: bytes) -> DiskEntry:
        """Write to a temp file, fsync, rename into place: a crash leaves no partial object."""
        final = new_object_path(self.objects_dir, meta.key)
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        header = encode_header(meta)
        try:
            with tmp.open("wb") as f:
                f.write(header)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                stamp = stamp_of(os.fstat(f.fileno()))  # a rename changes none of it
            final.parent.mkdir(exist_ok=True)
            tmp.rename(final)
        finally:
            tmp.unlink(missing_ok=True)
        return DiskEntry(meta, final, len(header), stamp)

    def write_failed(self, exc: OSError, now: float) -> None:
        self.degraded = f"disk writes failing: {exc.strerror or exc}"
        self._retry_at = now + DISK_RETRY_S
        log.warning("disk tier degraded", extra={"reason": self.degraded})

    def admit(self, entry: DiskEntry) -> list[str]:
        """Index a freshly written entry; returns files to delete (evictions, or itself)."""
        self.degraded = None
        return self._index_entry(entry)


def unlink_all_blocking(paths: list[str]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)
