"""Content digests: xxh3-128, the checksum every file carries from ingest to the viewer."""

from __future__ import annotations

from pathlib import Path

import xxhash

ALGORITHM = "xxh3-128"
CHUNK_BYTES = 1 << 20


def digest_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def digest_file(path: Path) -> str:
    h = xxhash.xxh3_128()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def header_value(hexdigest: str) -> str:
    """The ``X-Content-Digest`` header value: ``xxh3-128=<hex>``."""
    return f"{ALGORITHM}={hexdigest}"
