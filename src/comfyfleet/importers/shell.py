"""A static reader of bash: words with line numbers, arrays, here-documents, and expansion.

Never runs the script. :func:`lex` splits the text into words, operators, array assignments
(``NAME=( … )``, ``declare -A NAME=( [k]=v … )``) and here-documents, following bash's quoting
rules (``'…'``, ``"…"``, ``\\``, ``$( … )``, ``${ … }``, backquotes, ``#`` comments, line
continuations). :func:`commands` groups words into simple commands. :func:`expand` performs
parameter expansion against the variables known so far; whatever cannot be known statically
(``$1``, ``$(cmd)``, an unset variable) becomes a marker (:data:`~comfyfleet.importers.folders.
UNRESOLVED`) instead of a guess, so callers can tell "unknown" from "empty".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from comfyfleet.importers.folders import UNRESOLVED

_OPERATOR_CHARS = ";&|()<>"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\+?)=")
SEPARATORS = frozenset({"\n", ";", "&&", "||", "|", "&", ";;", "(", ")"})


@dataclass
class Word:
    """One shell word as written (quotes included) and the line it starts on."""

    raw: str
    line: int


@dataclass
class Op:
    """An operator: a separator (``;``, ``&&``, newline, …), ``(``/``)``, or ``redirect``."""

    text: str
    line: int


@dataclass
class ArrayAssign:
    """``NAME=( … )`` or ``NAME+=( … )``; items are words, or ``[key]=value`` pairs."""

    name: str
    append: bool
    items: list[Word]
    line: int
    prefix: list[Word] = field(default_factory=list)  # declare/local/typeset and their flags


@dataclass
class HereDoc:
    """The body of a here-document (not read as commands)."""

    start: int
    end: int
    body: str


Token = Word | Op | ArrayAssign | HereDoc


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.line = 1

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.text[j] if j < len(self.text) else ""

    def advance(self, k: int = 1) -> None:
        for _ in range(k):
            if self.i < len(self.text) and self.text[self.i] == "\n":
                self.line += 1
            self.i += 1

    def skip_until(self, closing: str) -> None:
        """Advance past the next ``closing`` (for single quotes and backquotes)."""
        while self.i < len(self.text) and self.peek() != closing:
            if closing == "`" and self.peek() == "\\":
                self.advance()
            self.advance()
        self.advance()

    def skip_double_quoted(self) -> None:
        """Advance past a ``"…"`` string (the opening quote already consumed)."""
        while self.i < len(self.text):
            ch = self.peek()
            if ch == "\\":
                self.advance(2)
            elif ch == '"':
                self.advance()
                return
            elif ch == "$" and self.peek(1) in "({":
                self.advance()
                self.skip_group()
            elif ch == "`":
                self.advance()
                self.skip_until("`")
            else:
                self.advance()

    def skip_group(self) -> None:
        """Advance past a balanced ``( … )`` or ``{ … }`` starting at the current character."""
        opening = self.peek()
        closing = ")" if opening == "(" else "}"
        depth = 0
        while self.i < len(self.text):
            ch = self.peek()
            if ch == "\\":
                self.advance(2)
                continue
            if ch == "'" and opening == "(":
                self.advance()
                self.skip_until("'")
                continue
            if ch == '"':
                self.advance()
                self.skip_double_quoted()
                continue
            if ch == opening:
                depth += 1
            elif ch == closing:
                depth -= 1
                if depth == 0:
                    self.advance()
                    return
            self.advance()

    def word_end(self) -> None:
        """Advance to the end of the word starting here."""
        while self.i < len(self.text):
            ch = self.peek()
            if ch in " \t\n" or ch in _OPERATOR_CHARS:
                return
            if ch == "\\":
                self.advance(2)
            elif ch == "'":
                self.advance()
                self.skip_until("'")
            elif ch == '"':
                self.advance()
                self.skip_double_quoted()
            elif ch == "`":
                self.advance()
                self.skip_until("`")
            elif ch == "$" and self.peek(1) in "({":
                self.advance()
                self.skip_group()
            else:
                self.advance()


def lex(text: str) -> list[Token]:
    """The script's tokens in order (comments dropped, here-document bodies set aside)."""
    s = _Scanner(text)
    tokens: list[Token] = []
    heredocs: list[tuple[str, bool]] = []
    while s.i < len(text):
        ch = s.peek()
        if ch == "\\" and s.peek(1) == "\n":
            s.advance(2)
        elif ch in " \t\r":
            s.advance()
        elif ch == "#":
            while s.i < len(text) and s.peek() != "\n":
                s.advance()
        elif ch == "\n":
            tokens.append(Op("\n", s.line))
            s.advance()
            for delim, strip in heredocs:
                tokens.append(_read_heredoc(s, delim, strip))
            heredocs = []
        elif ch in "<>" or (ch == "&" and s.peek(1) == ">"):
            heredoc = _redirect(s)
            if heredoc:
                heredocs.append(heredoc)
            tokens.append(Op("redirect", s.line))
        elif ch in _OPERATOR_CHARS:
            two = text[s.i : s.i + 2]
            op = two if two in ("&&", "||", ";;") else ch
            tokens.append(Op(op, s.line))
            s.advance(len(op))
        else:
            start, line = s.i, s.line
            s.word_end()
            raw = text[start : s.i]
            if raw.isdigit() and s.peek() in "<>":
                continue  # the fd of a redirection (2>/dev/null)
            m = _ASSIGN_WORD.fullmatch(raw)
            if m and s.peek() == "(":
                s.advance()
                prefix = _declare_prefix(tokens)
                tokens.append(ArrayAssign(m[1], bool(m[2]), _array_items(s), line, prefix))
            else:
                tokens.append(Word(raw, line))
    return tokens


def _declare_prefix(tokens: list[Token]) -> list[Word]:
    """Pop ``declare -A`` (and flags) just before an array assignment off ``tokens``."""
    prefix: list[Word] = []
    while tokens and isinstance(tokens[-1], Word) and tokens[-1].raw.startswith("-"):
        prefix.insert(0, tokens.pop())  # type: ignore[arg-type]
    if (
        tokens
        and isinstance(tokens[-1], Word)
        and tokens[-1].raw
        in {
            "declare",
            "typeset",
            "local",
            "readonly",
            "export",
        }
    ):
        prefix.insert(0, tokens.pop())  # type: ignore[arg-type]
    elif prefix:  # flags without a declare: they belonged to something else
        tokens.extend(prefix)
        prefix = []
    return prefix


def _array_items(s: _Scanner) -> list[Word]:
    items: list[Word] = []
    while s.i < len(s.text):
        ch = s.peek()
        if ch in " \t\r\n":
            s.advance()
        elif ch == "\\" and s.peek(1) == "\n":
            s.advance(2)
        elif ch == "#":
            while s.i < len(s.text) and s.peek() != "\n":
                s.advance()
        elif ch == ")":
            s.advance()
            return items
        else:
            start, line = s.i, s.line
            s.word_end()
            if s.i == start:  # an operator character inside an array: keep it as a word
                s.advance()
            items.append(Word(s.text[start : s.i], line))
    return items


def _redirect(s: _Scanner) -> tuple[str, bool] | None:
    """Consume a redirection and its target; return (delimiter, strip-tabs) for ``<<``."""
    if s.peek() == "&":
        s.advance()
    here = s.text.startswith("<<", s.i) and not s.text.startswith("<<<", s.i)
    while s.peek() in "<>":
        s.advance()
    strip = False
    if here and s.peek() == "-":
        strip = True
        s.advance()
    if s.peek() in "&|":
        s.advance()
    while s.peek() in " \t":
        s.advance()
    start = s.i
    s.word_end()
    target = s.text[start : s.i]
    if here:
        return target.strip("'\"").replace("\\", ""), strip
    return None


def _read_heredoc(s: _Scanner, delim: str, strip: bool) -> HereDoc:
    start = s.line
    lines = []
    while s.i < len(s.text):
        nl = s.text.find("\n", s.i)
        end = len(s.text) if nl < 0 else nl
        raw = s.text[s.i : end]
        s.advance(end - s.i + (1 if nl >= 0 else 0))
        if (raw.lstrip("\t") if strip else raw).rstrip("\r") == delim:
            break
        lines.append(raw)
    return HereDoc(start, start + max(len(lines), 1) - 1, "\n".join(lines))


@dataclass
class Command:
    """A simple command: its words (redirections removed), where it starts."""

    words: list[Word]
    line: int


def commands(tokens: list[Token]) -> Iterator[Command | ArrayAssign | HereDoc | Op]:
    """Simple commands, array assignments and here-documents in order; ``(``/``)`` operators
    are passed through (function definitions and subshells)."""
    words: list[Word] = []
    for tok in tokens:
        if isinstance(tok, Word):
            words.append(tok)
            continue
        if isinstance(tok, Op) and tok.text == "redirect":
            continue
        if words:
            yield Command(words, words[0].line)
            words = []
        if isinstance(tok, ArrayAssign | HereDoc) or (isinstance(tok, Op) and tok.text in "()"):
            yield tok
    if words:
        yield Command(words, words[0].line)


# --- expansion -------------------------------------------------------------------------------

Lookup = Callable[[str], str | None]


def marker(name: str) -> str:
    """The text an unresolvable ``$name`` expands to."""
    return f"{UNRESOLVED}{name}{UNRESOLVED}"


def array_ref(raw: str) -> str | None:
    """``NAME`` when the word is exactly ``"${NAME[@]}"`` (or ``[*]``, quoted or not)."""
    m = re.fullmatch(r'"?\$\{([A-Za-z_][A-Za-z0-9_]*)\[[@*]\]\}"?', raw)
    return m[1] if m else None


def unquote(raw: str) -> str:
    """The word with quotes removed and no expansion (``$X`` kept as text)."""
    return expand(raw, lambda name: "$" + name, keep_dollar=True)


def expand(raw: str, lookup: Lookup, *, keep_dollar: bool = False) -> str:
    """Quote removal and parameter expansion of one word, against ``lookup``."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "'":
            j = raw.find("'", i + 1)
            j = n if j < 0 else j
            out.append(raw[i + 1 : j])
            i = j + 1
        elif ch == '"':
            i += 1
            while i < n and raw[i] != '"':
                c = raw[i]
                if c == "\\" and i + 1 < n:
                    nxt = raw[i + 1]
                    if nxt == "\n":
                        pass
                    elif nxt in '$`"\\':
                        out.append(nxt)
                    else:
                        out.append("\\" + nxt)
                    i += 2
                elif c == "$":
                    text, i = _dollar(raw, i, lookup, keep_dollar)
                    out.append(text)
                elif c == "`":
                    j = raw.find("`", i + 1)
                    i = n if j < 0 else j + 1
                    out.append(marker("`…`"))
                else:
                    out.append(c)
                    i += 1
            i += 1
        elif ch == "\\":
            if i + 1 < n and raw[i + 1] != "\n":
                out.append(raw[i + 1])
            i += 2
        elif ch == "$":
            if raw.startswith("$'", i):  # ANSI-C quoting: backslash escapes are decoded
                j = raw.find("'", i + 2)
                j = n if j < 0 else j
                out.append(_ansi_c(raw[i + 2 : j]))
                i = j + 1
            else:
                text, i = _dollar(raw, i, lookup, keep_dollar)
                out.append(text)
        elif ch == "`":
            j = raw.find("`", i + 1)
            i = n if j < 0 else j + 1
            out.append(marker("`…`"))
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _ansi_c(body: str) -> str:
    try:
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        return body


def readable(value: str) -> str:
    """``value`` with unresolved markers shown as ``${NAME}`` again (for messages)."""
    return re.sub(f"{UNRESOLVED}([^{UNRESOLVED}]*){UNRESOLVED}", r"${\1}", value)


def _closing(raw: str, i: int, opening: str, closing: str) -> int:
    depth = 0
    for j in range(i, len(raw)):
        if raw[j] == opening:
            depth += 1
        elif raw[j] == closing:
            depth -= 1
            if depth == 0:
                return j
    return len(raw) - 1


def _dollar(raw: str, i: int, lookup: Lookup, keep: bool) -> tuple[str, int]:
    """Expand the ``$…`` at ``raw[i]``; return its text and the index after it."""
    nxt = raw[i + 1 : i + 2]
    if nxt == "(":
        j = _closing(raw, i + 1, "(", ")")
        return (raw[i : j + 1] if keep else marker("$(…)")), j + 1
    if nxt == "{":
        j = _closing(raw, i + 1, "{", "}")
        body = raw[i + 2 : j]
        return (raw[i : j + 1] if keep else _braced(body, lookup)), j + 1
    m = _NAME.match(raw, i + 1)
    if m:
        name = m.group()
        if keep:
            return "$" + name, m.end()
        value = lookup(name)
        return (marker(name) if value is None else value), m.end()
    if nxt and (nxt.isdigit() or nxt in "@*#?!$-"):
        return ("$" + nxt if keep else marker(nxt)), i + 2
    return "$", i + 1


def _braced(body: str, lookup: Lookup) -> str:
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*|\d+|[@*#?!$-])(.*)", body, re.DOTALL)
    if not m or body.startswith("#"):
        return marker("${" + body + "}")
    name, rest = m[1], m[2]
    if re.fullmatch(r"\[[@*]\]", rest):
        return marker("@" + name)  # a whole array: only meaningful to the caller
    value = lookup(name) if _NAME.fullmatch(name) else None
    if rest == "":
        return marker(name) if value is None else value
    op = re.match(r":?[-=+?]", rest)
    if op:
        word = expand(rest[op.end() :], lookup)
        colon = op.group().startswith(":")
        unset = value is None or (colon and value == "")
        kind = op.group()[-1]
        if kind in "-=":
            return word if unset else value  # type: ignore[return-value]
        if kind == "+":
            return "" if unset else word
        return marker(name) if value is None else value
    if value is None:
        return marker(name)
    if rest == "##*/":
        return value.rsplit("/", 1)[-1]
    if rest == "%/*":
        return value.rsplit("/", 1)[0] if "/" in value else value
    if rest == "%/":
        return value.removesuffix("/")
    return marker(name + rest)
