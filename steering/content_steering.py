"""HLS Content Steering: a per-session master with one pathway per appliance, and the
steering manifest that reorders those pathways while the session plays. Pure: values
in, values out; no I/O, no clock.

Content Steering (Apple's "HLS Content Steering Specification", version 1.2, since
folded into draft-pantos-hls-rfc8216bis, 4.4.6.6) lets a server move a playing client
between redundant copies of the same content, called Pathways (here: one per cache
appliance), without a player reload. The master lists every variant once per pathway,
tagged PATHWAY-ID, and names a steering server in EXT-X-CONTENT-STEERING; the client
fetches a small JSON Steering Manifest from it, every TTL seconds, and plays from the
first pathway in its PATHWAY-PRIORITY that it can use.

Which rule each function follows (section names of the Apple spec):

- ``session_master``: "EXT-X-CONTENT-STEERING" (SERVER-URI, and PATHWAY-ID: the pathway
  to apply until the first manifest arrives) and "EXT-X-STREAM-INF,
  EXT-X-I-FRAME-STREAM-INF" (PATHWAY-ID on every variant). Rendition groups are copied
  per pathway under new GROUP-IDs, as "Pathway Cloning" does: a group's URIs sit on
  one appliance, so each pathway's variants must reference that pathway's own groups,
  or a switch would move the video and leave the audio behind. The master's own
  syntax is RFC 8216 4.2 (attribute lists) and 4.3.4.1-4.3.4.3 (EXT-X-MEDIA,
  EXT-X-STREAM-INF, EXT-X-I-FRAME-STREAM-INF).
- ``steering_manifest``: "Steering Manifest" (VERSION 1, TTL, RELOAD-URI,
  PATHWAY-PRIORITY: a non-empty list of unique, legal Pathway IDs).
- ``parse_steering_query`` and ``pathway_priority``: the client adds ``_HLS_pathway``
  (the pathway it applies now) and ``_HLS_throughput`` (the throughput it measured,
  bit/s) to every manifest request; the server may use them to decide.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

STEERING_VERSION = 1  # "Steering Manifest": VERSION, the only one defined
STICKY_TOP_N = 2  # a client stays on its pathway while it ranks this high or better
GROUP_SEP = "@"  # not a Pathway ID character, so "{group}@{pathway}" never collides

# "Steering Manifest": a Pathway ID uses only [a..z], [A..Z], [0..9], '.', '-' and '_'.
_PATHWAY_ID = re.compile(r"[A-Za-z0-9._-]+")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_DECIMAL_INTEGER = re.compile(r"[0-9]{1,20}")  # RFC 8216 4.2
_THROUGHPUT = re.compile(r"[0-9]{1,20}(\.[0-9]{0,20})?")  # decimal bit/s, as players send it
# RFC 8216 4.2: NAME=VALUE; a quoted-string holds no '"', CR or LF; other values
# (integers, floats, WxH, enumerated strings) hold no quote, comma or whitespace.
_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"\r\n]*"|[^",=\s]+)')
_URI_CHARS = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/?\[\]-]+")  # RFC 3986, no '#'
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

# RFC 8216 4.3.4.1-2: the EXT-X-MEDIA TYPEs, and the variant attribute, named the same,
# by which a variant names its group of that TYPE.
_MEDIA_TYPES = ("AUDIO", "VIDEO", "SUBTITLES", "CLOSED-CAPTIONS")
_MEDIA_PLAYLIST_TAGS = frozenset(
    {
        "#EXTINF",
        "#EXT-X-TARGETDURATION",
        "#EXT-X-MEDIA-SEQUENCE",
        "#EXT-X-PLAYLIST-TYPE",
        "#EXT-X-ENDLIST",
        "#EXT-X-MAP",
        "#EXT-X-BYTERANGE",
        "#EXT-X-DISCONTINUITY",
        "#EXT-X-KEY",
        "#EXT-X-BITRATE",
        "#EXT-X-PROGRAM-DATE-TIME",
        "#EXT-X-PART",
    }
)


def check_pathway_id(pathway_id: str) -> str:
    """Return ``pathway_id`` if it is a legal Pathway ID, else raise a ValueError naming it."""
    if not isinstance(pathway_id, str) or not _PATHWAY_ID.fullmatch(pathway_id):
        raise ValueError(f"pathway id {pathway_id!r}: use letters, digits, '.', '-' and '_' only")
    return pathway_id


@dataclass(frozen=True)
class Pathway:
    """One way to the title: ``base_url`` is the title's signed prefix on one appliance,
    ``{appliance}/s/{token}/titles/{title}/``."""

    id: str
    base_url: str

    def __post_init__(self) -> None:
        check_pathway_id(self.id)
        parts = urlsplit(self.base_url)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or parts.fragment
            or not self.base_url.endswith("/")
            or not _URI_CHARS.fullmatch(self.base_url)
        ):
            raise ValueError(
                f"pathway {self.id!r}: base_url {self.base_url!r} must be an absolute "
                "http(s) URL ending in '/', without query or fragment"
            )


# -- the per-session master -----------------------------------------------------------


@dataclass(frozen=True)
class _Master:
    global_tags: list[str]  # kept verbatim, once
    media: list[dict[str, str]]  # EXT-X-MEDIA attribute lists
    variants: list[tuple[dict[str, str], str]]  # EXT-X-STREAM-INF attributes, URI line
    iframes: list[dict[str, str]]  # EXT-X-I-FRAME-STREAM-INF attributes (URI inside)


def session_master(
    master: str,
    pathways: Sequence[Pathway],
    *,
    steering_uri: str,
    default_pathway: str | None = None,
) -> str:
    """The title's ``master`` with every variant and rendition once per pathway, first
    pathway first, and an EXT-X-CONTENT-STEERING tag pointing at ``steering_uri``.

    ``default_pathway`` (the first pathway unless given) is the one the client applies
    until its first Steering Manifest arrives. Raises ValueError, saying why, for a
    master this cannot steer safely: not a master, no variants, absolute or escaping
    URIs, malformed attribute lists, group references to missing groups, tags with
    URIs no pathway could rewrite, or a master that is already steered.
    """
    if not pathways:
        raise ValueError("a session master needs at least one pathway")
    ids = [p.id for p in pathways]
    if len(set(ids)) != len(ids):
        raise ValueError(f"pathway ids must be unique: {ids}")
    default = pathways[0].id if default_pathway is None else default_pathway
    if default not in ids:
        raise ValueError(f"default pathway {default!r} is not one of {ids}")
    if not _URI_CHARS.fullmatch(steering_uri):
        raise ValueError(f"steering_uri {steering_uri!r} is not a URI a playlist can carry")
    parsed = _parse_master(master)

    lines = ["#EXTM3U", *parsed.global_tags]
    lines.append(f'#EXT-X-CONTENT-STEERING:SERVER-URI="{steering_uri}",PATHWAY-ID="{default}"')
    for p in pathways:
        for attrs in parsed.media:
            media = {**attrs, "GROUP-ID": _group_id(attrs["GROUP-ID"], p)}
            if "URI" in media:
                media["URI"] = f'"{p.base_url}{media["URI"][1:-1]}"'
            lines.append("#EXT-X-MEDIA:" + _render_attributes(media))
    for p in pathways:
        for attrs, uri in parsed.variants:
            lines.append("#EXT-X-STREAM-INF:" + _render_attributes(_on_pathway(attrs, p)))
            lines.append(p.base_url + uri)
    for p in pathways:
        for attrs in parsed.iframes:
            iframe = _on_pathway(attrs, p)
            iframe["URI"] = f'"{p.base_url}{attrs["URI"][1:-1]}"'
            lines.append("#EXT-X-I-FRAME-STREAM-INF:" + _render_attributes(iframe))
    return "\n".join(lines) + "\n"


def _on_pathway(attrs: dict[str, str], pathway: Pathway) -> dict[str, str]:
    """A variant's attributes on ``pathway``: its own groups, and its PATHWAY-ID."""
    out = dict(attrs)
    for name in _MEDIA_TYPES:
        if out.get(name, "").startswith('"'):
            out[name] = _group_id(out[name], pathway)
    out["PATHWAY-ID"] = f'"{pathway.id}"'
    return out


def _group_id(quoted_group: str, pathway: Pathway) -> str:
    return f'"{quoted_group[1:-1]}{GROUP_SEP}{pathway.id}"'


def _parse_master(master: str) -> _Master:
    lines = [line.strip() for line in master.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError("not an HLS playlist: the first line must be #EXTM3U")
    for line in lines:
        if not line.isprintable():
            raise ValueError(f"line {line!r} has control characters")
    parsed = _Master([], [], [], [])
    rest = iter(lines[1:])
    for line in rest:
        if not line.startswith("#"):
            raise ValueError(f"URI line {line!r} does not follow an EXT-X-STREAM-INF tag")
        if not line.startswith("#EXT"):
            continue  # a comment (RFC 8216 4.1)
        tag, _, value = line.partition(":")
        if tag == "#EXT-X-STREAM-INF":
            uri = next(rest, "#")
            if uri.startswith("#"):
                raise ValueError(f"{line!r} is not followed by its URI line")
            parsed.variants.append((_parse_variant(value, tag), _relative_uri(uri)))
        elif tag == "#EXT-X-I-FRAME-STREAM-INF":
            attrs = _parse_variant(value, tag)
            _relative_uri(_unquote(attrs, "URI", tag))
            parsed.iframes.append(attrs)
        elif tag == "#EXT-X-MEDIA":
            attrs = _parse_attributes(value, tag)
            _unquote(attrs, "GROUP-ID", tag)
            if attrs.get("TYPE") not in _MEDIA_TYPES:
                raise ValueError(f"{tag}: unknown TYPE {attrs.get('TYPE')!r}")
            if "URI" in attrs:
                _relative_uri(_unquote(attrs, "URI", tag))
            parsed.media.append(attrs)
        elif tag in _MEDIA_PLAYLIST_TAGS:
            raise ValueError(f"{tag} belongs in a media playlist; expected a master playlist")
        elif tag == "#EXT-X-CONTENT-STEERING":
            raise ValueError("the master is already steered (it has EXT-X-CONTENT-STEERING)")
        elif tag == "#EXT-X-DEFINE":
            raise ValueError("EXT-X-DEFINE is not supported: variables could hide URIs")
        elif "URI=" in value:
            raise ValueError(f"{tag} carries a URI that cannot be placed on a pathway")
        else:
            parsed.global_tags.append(line)
    if not parsed.variants:
        raise ValueError("the master has no variants (no EXT-X-STREAM-INF)")
    _check_group_refs(parsed)
    return parsed


def _parse_variant(value: str, tag: str) -> dict[str, str]:
    attrs = _parse_attributes(value, tag)
    if "PATHWAY-ID" in attrs:
        raise ValueError(f"{tag} already has a PATHWAY-ID: the master is already steered")
    if not _DECIMAL_INTEGER.fullmatch(attrs.get("BANDWIDTH", "")):
        raise ValueError(
            f"{tag}: BANDWIDTH must be a decimal integer, got {attrs.get('BANDWIDTH')!r}"
        )
    return attrs


def _check_group_refs(parsed: _Master) -> None:
    """RFC 8216 4.3.4.2: AUDIO="g" names an EXT-X-MEDIA group of TYPE=AUDIO, and so on."""
    groups = {(m["TYPE"], m["GROUP-ID"]) for m in parsed.media}
    every = [attrs for attrs, _ in parsed.variants] + parsed.iframes
    for attrs in every:
        for media_type in _MEDIA_TYPES:
            value = attrs.get(media_type)
            if value is None or (media_type == "CLOSED-CAPTIONS" and value == "NONE"):
                continue
            if not value.startswith('"') or (media_type, value) not in groups:
                raise ValueError(f"{media_type}={value} names no EXT-X-MEDIA group of that TYPE")


def _parse_attributes(text: str, tag: str) -> dict[str, str]:
    """RFC 8216 4.2 attribute list -> {NAME: raw value}, quotes kept, order kept."""
    attrs: dict[str, str] = {}
    pos = 0
    while True:
        m = _ATTRIBUTE.match(text, pos)
        if m is None:
            raise ValueError(f"{tag}: malformed attribute list at {text[pos : pos + 40]!r}")
        name, value = m.groups()
        if name in attrs:
            raise ValueError(f"{tag}: attribute {name} appears twice")
        attrs[name] = value
        pos = m.end()
        if pos == len(text):
            return attrs
        if text[pos] != ",":
            raise ValueError(f"{tag}: malformed attribute list at {text[pos : pos + 40]!r}")
        pos += 1


def _render_attributes(attrs: dict[str, str]) -> str:
    return ",".join(f"{name}={value}" for name, value in attrs.items())


def _unquote(attrs: dict[str, str], name: str, tag: str) -> str:
    value = attrs.get(name)
    if value is None:
        raise ValueError(f"{tag}: {name} is missing")
    if not value.startswith('"'):
        raise ValueError(f"{tag}: {name} must be a quoted-string, got {value!r}")
    return value[1:-1]


def _relative_uri(uri: str) -> str:
    """A URI inside the title: relative, no '..', nothing that breaks a playlist line."""
    if not _URI_CHARS.fullmatch(uri):
        raise ValueError(f"URI {uri!r} is empty or has characters a playlist cannot carry")
    if _SCHEME.match(uri) or uri.startswith("/"):
        raise ValueError(f"URI {uri!r} is absolute; a steerable master has relative URIs only")
    if ".." in uri.split("?", 1)[0].split("/"):
        raise ValueError(f"URI {uri!r} leaves the title's directory")
    return uri


# -- the steering manifest ------------------------------------------------------------


def steering_manifest(
    priority: Sequence[str], *, ttl_s: int, reload_uri: str | None
) -> dict[str, object]:
    """The Steering Manifest JSON object: pathways best first, reload after ``ttl_s``.

    ``reload_uri`` (omitted when None) is where the client asks next; relative URIs
    resolve against the manifest's own URI.
    """
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive whole number of seconds, got {ttl_s!r}")
    if not priority:
        raise ValueError("PATHWAY-PRIORITY needs at least one pathway")
    ids = [check_pathway_id(p) for p in priority]
    if len(set(ids)) != len(ids):
        raise ValueError(f"PATHWAY-PRIORITY ids must be unique: {ids}")
    manifest: dict[str, object] = {"VERSION": STEERING_VERSION, "TTL": ttl_s}
    if reload_uri is not None:
        if not _URI_CHARS.fullmatch(reload_uri):
            raise ValueError(f"reload_uri {reload_uri!r} is not a URI")
        manifest["RELOAD-URI"] = reload_uri
    manifest["PATHWAY-PRIORITY"] = ids
    return manifest


def manifest_uri(base_url: str, session: str) -> str:
    """Where the steering service serves ``session``'s manifest:
    ``{base_url}/content-steering/{session}.json``. Use it as SERVER-URI (and RELOAD-URI)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError(f"steering base_url {base_url!r} must be an absolute http(s) URL")
    if not _SESSION_ID.fullmatch(session):
        raise ValueError(f"session {session!r}: use 1-128 letters, digits, '-' and '_'")
    return f"{base_url.rstrip('/')}/content-steering/{session}.json"


# -- what the client tells us, and the order we answer with ------------------------------


@dataclass(frozen=True)
class SteeringQuery:
    """The client's steering request parameters; None where absent or not believable."""

    pathway: str | None = None
    throughput_bps: float | None = None


def parse_steering_query(query: Mapping[str, str], *, known: Collection[str]) -> SteeringQuery:
    """``_HLS_pathway`` and ``_HLS_throughput`` from a request's query; never raises.

    A pathway counts only if it is one of the session's ``known`` ids; a throughput
    only if it is a plain positive decimal number of bit/s (no sign, exponent, nan or
    inf). Anything else is ignored as if it had not been sent.
    """
    pathway = query.get("_HLS_pathway")
    if not isinstance(pathway, str) or pathway not in known:
        pathway = None
    raw = query.get("_HLS_throughput")
    throughput = None
    if isinstance(raw, str) and _THROUGHPUT.fullmatch(raw) and float(raw) > 0:
        throughput = float(raw)  # at most 20 digits each side: always finite
    return SteeringQuery(pathway, throughput)


def pathway_priority(
    ranked: Sequence[str],
    *,
    current: str | None = None,
    throughput_bps: float | None = None,
    known: Collection[str],
    sufficient_bps: float | None = None,
) -> list[str]:
    """The PATHWAY-PRIORITY to send: the session's healthy pathways, best first.

    ``ranked`` is the steering service's ranking of the session's pathways now (a
    downed appliance is absent); ids not in ``known`` are dropped, duplicates kept once.

    Stickiness: the client's ``current`` pathway goes first while it is still ranked
    in the top STICKY_TOP_N, because switching costs a cold connection (and often a
    cold cache) for no gain when two appliances rank close; once it falls lower, or
    is down, the ranking decides and the client moves.

    Throughput: a client measuring less than ``sufficient_bps`` on its current
    pathway (pass the title's top BANDWIDTH: below it, the player cannot hold the
    best rendition) is not kept sticky, so it moves to the best-ranked pathway, where
    it may do better. That is at most one switch, since the best-ranked pathway is
    first anyway. None for either value ignores throughput.

    May return an empty list when nothing known is healthy; a manifest must name at
    least one pathway, so the caller decides what to answer then.
    """
    order = list(dict.fromkeys(p for p in ranked if p in known))
    starved = (
        throughput_bps is not None
        and sufficient_bps is not None
        and throughput_bps < sufficient_bps
    )
    if current is None or current not in order[:STICKY_TOP_N] or starved:
        return order
    return [current, *(p for p in order if p != current)]
