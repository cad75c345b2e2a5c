"""Strings from a model folder or a user, made safe to print.

Labels, model names and token strings come from untrusted files; printed raw, an escape
sequence among them reaches the user's terminal (a title change, a cleared screen), and bidi
controls reorder what is shown. :func:`printable` writes every control character (C0, DEL,
C1), every bidi control and every other format character as a visible ``\\xNN`` / ``\\uNNNN``
escape; ordinary text, accents and non-Latin scripts pass unchanged.
"""

from __future__ import annotations

import re
import unicodedata

#: bidi embeddings, overrides and isolates, marks, and other invisible format characters
_FORMAT = {"Cc", "Cf", "Cs", "Co", "Cn"}
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]")


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with control and format characters escaped (newlines and tabs kept when
    ``keep_newlines``)."""
    if text.isprintable() and not _UNSAFE.search(text):
        return text
    out = []
    for ch in text:
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif _UNSAFE.match(ch) or (not ch.isprintable() and unicodedata.category(ch) in _FORMAT) or ch in "\n\t\r":
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


def json_safe(document: str) -> str:
    """A JSON text with the C1 controls, bidi controls and format characters it would carry raw
    (JSON escapes only C0) written as ``\\uNNNN`` escapes: the same data, safe on a terminal."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", document)
