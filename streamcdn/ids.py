"""Title ids: the one name a title has in URLs, on disk and in the catalog.

A title id becomes a directory name and a URL path segment, so it is kept to a
small safe alphabet: no ``/``, no ``..``, no spaces, no leading dot, <= 64 chars.
"""

import re

from streamcdn.errors import UserError

MAX_TITLE_ID_LEN = 64
MAX_PATH_LEN = 512
_TITLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_valid_title_id(title: str) -> bool:
    return bool(_TITLE_ID.fullmatch(title)) and ".." not in title


def check_title_id(title: str) -> str:
    """Return ``title`` if it is a valid title id, else raise a UserError saying why."""
    if len(title) > MAX_TITLE_ID_LEN:
        raise UserError(f"title id is {len(title)} characters long; at most {MAX_TITLE_ID_LEN}")
    if not is_valid_title_id(title):
        raise UserError(
            f"invalid title id {title!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, and no '..'"
        )
    return title


def is_valid_rel_path(rel: str) -> bool:
    """A path inside a title: plain segments, no '.', '..', empty parts, backslashes or controls.

    Servers still look paths up (in a manifest, in a cache index) rather than join them to
    a directory; this check only turns malformed paths into a clear 400 early.
    """
    if not rel or len(rel) > MAX_PATH_LEN or "\\" in rel or not rel.isprintable():
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))
