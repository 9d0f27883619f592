"""Plugin-supplied strings shown as text, never as instructions to a terminal or a renderer.

Everything a plugin (or a store it could have written) provides is untrusted text: names,
papers, docstrings, parameter help and defaults, error messages, progress stages. The CLI,
the leaderboards and ``advarena compare`` pass it through one of these functions:

* :func:`printable`: control characters written as visible escapes (``\\x1b``, ``\\u202e``):
  C0 and C1 controls and DEL (ANSI/OSC escape sequences, carriage returns, bells), Unicode
  format characters (bidi overrides and isolates, zero-width spaces and joiners, the BOM),
  line and paragraph separators and lone surrogates. A terminal then shows an escape
  sequence instead of obeying it, and a right-to-left override cannot reorder what is shown.
* :func:`rich_text`: :func:`printable`, as a ``rich`` ``Text`` (rich parses markup such as
  ``[/bold]`` or ``[link=...]`` in plain strings; a ``Text`` is shown as it is).
* :func:`markdown`: :func:`printable`, then every character Markdown or inline HTML would
  interpret escaped, on one line (HTML output is escaped by jinja's autoescape, after
  :func:`printable`).

Plugin names are further restricted to :data:`NAME_RE` (checked by the registry at start-up),
so a name cannot imitate another with a homoglyph or an invisible character.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# Registry names and aliases: ASCII letters and digits, then also '-', '_' and '.', at most 100
# characters. The first character is a letter or digit, so no name is '.', '..' or '-x' (an
# option); '+' is left out because it composes defenses ('a+b').
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = ("ASCII letters, digits, '-', '_' and '.', starting with a letter or digit, at most "
             "100 characters")

# Unicode categories escaped: controls, format characters (bidi, zero-width), separators of
# lines and paragraphs, surrogates.
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def name_problem(name: Any) -> str | None:
    """Why ``name`` is not an acceptable plugin name, or None."""
    if not isinstance(name, str):
        return f"is not a string ({type(name).__name__})"
    if NAME_RE.fullmatch(name):
        return None
    return f"{printable(ascii(name))} is not made of {NAME_RULE}"


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: Any, *, newlines: bool = False) -> str:
    """``str(text)`` with every control or format character written as a visible escape;
    ``newlines=True`` keeps line feeds (multi-line help text), otherwise they are escaped
    too."""
    s = str(text)
    if s.isprintable():  # the common case: nothing to do (tabs and newlines are not printable)
        return s
    return "".join(ch if (newlines and ch == "\n")
                   or unicodedata.category(ch) not in _ESCAPED_CATEGORIES
                   else _escape_char(ch) for ch in s)


def rich_text(text: Any, style: str = "") -> Any:
    """``text`` as a rich ``Text``: no markup parsed, control characters escaped."""
    from rich.text import Text

    return Text(printable(text), style=style)


def rich_escape(text: Any) -> str:
    """``text`` for interpolation into a rich markup string (``f"[red]{rich_escape(x)}[/]"``)."""
    from rich.markup import escape

    return escape(printable(text))


def markdown(text: Any) -> str:
    """A plugin-supplied string neutralised for Markdown: one line, control characters
    escaped, no table-cell breaks, no inline HTML, no link, image, code or emphasis syntax."""
    s = printable(str(text).replace("\r\n", " ").replace("\n", " ").replace("\r", " "))
    s = s.replace("\\", "\\\\")
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "|[]`*":
        s = s.replace(ch, "\\" + ch)
    return s
