"""The title store: one directory per title, each with a manifest.json that lists every file.

Publishing is atomic. A ladder is built in a hidden staging directory inside the store
(same filesystem), its manifest written and flushed, and one ``rename`` makes the
title visible. Readers therefore see either no title or a complete one. Staging
directories left by a killed ingest carry the ingesting pid in their name and are
swept away once that process is gone.

The manifest is the only way in: a request path is served only if it is a key of
the manifest's ``files``, so no path from a URL is ever joined to the filesystem blindly.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from media.transcode import MASTER, Ladder
from streamcdn.digest import ALGORITHM, digest_file
from streamcdn.errors import UserError
from streamcdn.ids import check_title_id, is_valid_title_id

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
STAGING_PREFIX = ".ingest-"
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class FileEntry:
    size: int
    digest: str  # xxh3-128, hex


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_manifest(
    title: str,
    name: str,
    ladder: Ladder,
    root: Path,
    source: dict[str, Any],
    *,
    tags: tuple[str, ...] = (),
    poster: str | None = None,
) -> dict[str, Any]:
    """The manifest of a finished ladder in ``root``: titles, renditions, every file's digest."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            files[rel] = {"size": path.stat().st_size, ALGORITHM: digest_file(path)}
    return {
        "version": MANIFEST_VERSION,
        "title": title,
        "name": name,
        "duration_s": ladder.duration_s,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "master": MASTER,
        "tags": list(tags),
        "poster": poster,
        "source": source,
        "renditions": [
            {k: v for k, v in asdict(r).items() if v is not None} for r in ladder.renditions
        ],
        "files": files,
    }


class TitleStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        # title -> ((inode, mtime_ns), manifest, files); a re-publish changes the inode.
        self._cache: dict[str, tuple[tuple[int, int], dict[str, Any], dict[str, FileEntry]]] = {}

    def ensure(self, *, writable: bool = True) -> TitleStore:
        """Create the store directory if needed; raise UserError if it cannot be used.

        An origin only reads, so it may serve a read-only store (``writable=False``).
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"store {self.root}: cannot create: {exc.strerror}") from None
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise UserError(f"store {self.root}: not readable")
        if os.access(self.root, os.W_OK):
            self.sweep()
        elif writable:
            raise UserError(f"store {self.root}: not writable")
        return self

    # -- reading -------------------------------------------------------------------

    def titles(self) -> list[str]:
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        return [t for t in entries if is_valid_title_id(t) and (self.root / t / MANIFEST).is_file()]

    def exists(self, title: str) -> bool:
        return is_valid_title_id(title) and (self.root / title / MANIFEST).is_file()

    def _load(self, title: str) -> tuple[dict[str, Any], dict[str, FileEntry]] | None:
        if not is_valid_title_id(title):
            return None
        path = self.root / title / MANIFEST
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            self._cache.pop(title, None)
            return None
        key = (st.st_ino, st.st_mtime_ns)
        cached = self._cache.get(title)
        if cached and cached[0] == key:
            return cached[1], cached[2]
        manifest = json.loads(path.read_bytes())
        files = {
            rel: FileEntry(int(e["size"]), str(e[ALGORITHM]))
            for rel, e in manifest["files"].items()
        }
        self._cache[title] = (key, manifest, files)
        return manifest, files

    def manifest(self, title: str) -> dict[str, Any] | None:
        loaded = self._load(title)
        return loaded[0] if loaded else None

    def manifest_path(self, title: str) -> Path:
        return self.root / title / MANIFEST

    def lookup(self, title: str, rel: str) -> tuple[Path, FileEntry] | None:
        """The file at ``rel`` in ``title`` if the manifest lists it, else None."""
        loaded = self._load(title)
        if loaded is None:
            return None
        entry = loaded[1].get(rel)
        if entry is None:
            return None
        return self.root / title / rel, entry

    # -- writing -------------------------------------------------------------------

    def new_staging(self, title: str) -> Path:
        check_title_id(title)
        path = self.root / f"{STAGING_PREFIX}{title}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def publish(self, title: str, staging: Path, manifest: dict[str, Any], *, force: bool) -> None:
        """Write the manifest into ``staging`` and rename it to ``title`` in one step."""
        check_title_id(title)
        tmp = staging / f".{MANIFEST}.tmp"
        with tmp.open("w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(staging / MANIFEST)
        final = self.root / title
        trash = None
        if final.exists():
            if not force:
                raise UserError(f"title {title!r} already exists; use --force to replace it")
            # No rename can swap two directories; move the old one aside first. Readers
            # see a brief 404, never a mix of old and new files.
            trash = self.root / f"{TRASH_PREFIX}{title}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
        try:
            staging.rename(final)
        except OSError:
            if trash is not None:
                trash.rename(final)  # put the old title back rather than lose it
            raise
        _fsync_dir(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def sweep(self) -> None:
        """Remove staging and trash directories whose ingesting process is gone."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for e in entries:
            if not e.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                continue
            parts = e.name.rsplit("-", 2)
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
            if pid is None or not _pid_alive(pid) or pid == os.getpid():
                shutil.rmtree(e.path, ignore_errors=True)
