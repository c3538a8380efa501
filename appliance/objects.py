"""A cached object's metadata, and the on-disk format that keeps it with the body.

One file per object, so a rename publishes metadata and body together:

    b"SCDN\\x01" | 4-byte big-endian length n | n bytes of JSON metadata | body

A file whose length is not header + ``size`` is truncated and never indexed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass

MAGIC = b"SCDN\x01"
_LEN = struct.Struct(">I")
MAX_META_BYTES = 64 * 1024


@dataclass(frozen=True)
class ObjectMeta:
    key: str  # canonical path, "titles/{title}/{path}"
    size: int
    digest: str  # xxh3-128 hex of the body, as the upstream announced and we checked
    content_type: str
    cache_control: str
    fetched_at: float  # unix seconds when this copy arrived
    age_at_fetch: int = 0  # the upstream's Age header then (a parent's copy may be old)

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'

    @property
    def title(self) -> str:
        return self.key.split("/", 2)[1]

    def age_s(self, now: float) -> int:
        """RFC 9111 4.2.3: apparent age at the upstream plus time resident here."""
        return max(0, self.age_at_fetch + int(now - self.fetched_at))


def encode_header(meta: ObjectMeta) -> bytes:
    blob = json.dumps(asdict(meta), separators=(",", ":")).encode()
    return MAGIC + _LEN.pack(len(blob)) + blob


def decode_header(head: bytes) -> tuple[ObjectMeta, int]:
    """(meta, header length) from the first bytes of a file; ValueError if it is not ours."""
    if not head.startswith(MAGIC) or len(head) < len(MAGIC) + _LEN.size:
        raise ValueError("not a cache object")
    (n,) = _LEN.unpack_from(head, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if n > MAX_META_BYTES or len(head) < start + n:
        raise ValueError("truncated metadata")
    fields = json.loads(head[start : start + n])
    return ObjectMeta(**fields), start + n
