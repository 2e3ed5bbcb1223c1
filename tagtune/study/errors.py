"""An exception in a few words, for the one-line messages every refusal of tagtune prints."""

from __future__ import annotations


def first_line(e: BaseException, limit: int | None = 150) -> str:
    """``e``'s first line of text (at most ``limit`` characters; None: all of it), or its
    type's name where it has none: a library's multi-line traceback text must not break a
    one-line error."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]


__all__ = ["first_line"]
