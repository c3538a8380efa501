"""Argument checks shared by every policy: one error message for each bad value."""

from __future__ import annotations


def check_capacity(capacity_bytes: int) -> int:
    if not isinstance(capacity_bytes, int) or capacity_bytes <= 0:
        raise ValueError(f"capacity_bytes must be a positive int, got {capacity_bytes!r}")
    return capacity_bytes


def check_size(size: int) -> int:
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a non-negative int (bytes), got {size!r}")
    return size
