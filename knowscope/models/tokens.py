"""Tokens as a reader sees them: each id decoded to its text, spaces and line breaks made visible.

A byte-level BPE tokenizer's *pieces* (``convert_ids_to_tokens``) spell a leading space ``Ġ``, a
newline ``Ċ`` and a non-breaking space ``Âł``: they are the tokenizer's internal alphabet, not text.
Every token knowscope shows or saves is instead the text of that one id (:func:`decode_each`), and
what is drawn marks its whitespace (:func:`visible`) so that ``" Paris"`` and ``"Paris"`` can be told
apart on a chart. :func:`piece_text` turns a piece back into its text without a tokenizer, for results
saved before tokens were decoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

SPACE, NEWLINE, TAB, NBSP = "␣", "↵", "⇥", "⍽"


def decode_each(tokenizer: Any, ids: Iterable[int]) -> list[str]:
    """The text of each id on its own (``tokenizer.decode([id])``), special tokens included."""
    return [tokenizer.decode([int(i)]) for i in ids]


def visible(text: str) -> str:
    """``text`` with spaces as ``␣``, non-breaking spaces as ``⍽``, newlines as ``↵`` and tabs as ``⇥``.

    Only for display: a token's saved text stays the plain string.
    """
    return text.replace(" ", SPACE).replace("\u00a0", NBSP).replace("\n", NEWLINE).replace("\t", TAB)


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table (GPT-2's scheme)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def piece_text(piece: str) -> str:
    """The text of a byte-level BPE piece (``"ĠParis"`` -> ``" Paris"``); other strings unchanged.

    A string with a character outside the byte alphabet is not a byte-level piece and is returned
    as it is, as is a piece whose bytes are not valid UTF-8 on their own (a part of a character).
    """
    table = _byte_of_char()
    if not piece or any(ch not in table for ch in piece):
        return piece
    try:
        return bytes(table[ch] for ch in piece).decode("utf-8")
    except UnicodeDecodeError:
        return piece


def pieces_text(pieces: Sequence[Any]) -> Any:
    """:func:`piece_text` over nested lists of pieces (a saved result's token tables)."""
    return [pieces_text(p) if isinstance(p, list) else piece_text(p) for p in pieces]
