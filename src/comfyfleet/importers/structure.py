"""Where a command sits in a script: inside a function, a loop, or a token branch.

A reader feeds every command's leading keyword (``if``, ``then``, ``else``, ``fi``, ``for``,
``do``, ``done``, ``case``, ``esac``, ``function``, ``{``, ``}``) to :meth:`Structure.keyword`.
An ``if`` whose condition tests a token (``[[ -n $HF_TOKEN ]]``, ``[ -z "$CIVITAI_TOKEN" ]``,
ai-dock's ``provisioning_has_valid_hf_token``) makes a token branch: each branch gets a
:class:`BranchTag` saying whether it runs with the token or without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from comfyfleet.importers.shell import Command, Word, array_ref, marker, unquote

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_TOKEN", "CIVITAI_API_TOKEN")
_TOKEN_CHECKS = re.compile(r"has_valid_(hf|civitai)_token|valid_(hf|civitai)_token")


@dataclass
class BranchTag:
    """Which token branch a thing was found in (None: not inside a token check)."""

    if_id: int
    needs_token: bool
    var: str
    line: int


@dataclass
class Block:
    """One open block: an if (with the tag of the branch being read), a loop, a case, a
    function body or a ``{ … }`` group."""

    kind: str  # if | loop | case | function | group
    line: int
    if_id: int = 0
    tag: BranchTag | None = None
    #: token need of the first condition (for the else branch)
    first: BranchTag | None = None


@dataclass
class Structure:
    """The stack of blocks the reader is in."""

    blocks: list[Block] = field(default_factory=list)
    #: a function definition's name was seen; its body's ``{`` comes next
    pending_function: bool = False
    next_if: int = 0
    #: ifs with a branch that needs a token
    token_ifs: set[int] = field(default_factory=set)

    @property
    def in_function(self) -> bool:
        """Inside a function body (whose values are only known when it is called)."""
        return any(b.kind == "function" for b in self.blocks)

    @property
    def in_loop(self) -> bool:
        """Inside a for/while/until loop."""
        return any(b.kind == "loop" for b in self.blocks)

    @property
    def tag(self) -> BranchTag | None:
        """The innermost token branch being read, if any."""
        for block in reversed(self.blocks):
            if block.kind == "if" and block.tag is not None:
                return block.tag
        return None

    def token_need(self, words: list[Word], line: int) -> BranchTag | None:
        """The tag of the branch a condition opens, when the condition tests a token."""
        text = " ".join(w.raw for w in words)
        var = next((v for v in TOKEN_VARS if v in text), None)
        check = _TOKEN_CHECKS.search(text)
        if var is None:
            if check is None:
                return None
            var = "HF_TOKEN" if "hf" in check.group() else "CIVITAI_TOKEN"
        raws = [unquote(w.raw) for w in words]
        negated = "-z" in raws or "!" in raws
        return BranchTag(self.next_if, not negated, var, line)

    def keyword(self, kw: str, cmd: Command) -> tuple[list[Word], tuple[str, str] | None]:
        """Update the block stack for a keyword; return the words of the command after it,
        and a ``for`` loop's variable with the value it stands for."""
        return self._keyword(kw, cmd), self._loop_var(kw, cmd)

    @staticmethod
    def _loop_var(kw: str, cmd: Command) -> tuple[str, str] | None:
        raws = [w.raw for w in cmd.words[1:]]
        if kw != "for" or len(raws) < 3 or raws[1] != "in":
            return None
        ref = array_ref(raws[2]) if len(raws) == 3 else None
        return raws[0], marker("@" + ref) if ref else marker(raws[0])

    def _keyword(self, kw: str, cmd: Command) -> list[Word]:
        rest = cmd.words[1:]
        if kw == "if":
            self.next_if += 1
            tag = self.token_need(rest, cmd.line)
            block = Block("if", cmd.line, self.next_if, tag, tag)
            if tag:
                tag.if_id = self.next_if
                if tag.needs_token:
                    self.token_ifs.add(self.next_if)
            self.blocks.append(block)
            return self.condition(rest)
        if kw == "elif":
            block = self._top("if")
            if block:
                tag = self.token_need(rest, cmd.line)
                if tag:
                    tag.if_id = block.if_id
                    if tag.needs_token:
                        self.token_ifs.add(block.if_id)
                block.tag = tag
            return self.condition(rest)
        if kw == "else":
            block = self._top("if")
            if block and block.first:
                first = block.first
                block.tag = BranchTag(block.if_id, not first.needs_token, first.var, cmd.line)
                if block.tag.needs_token:
                    self.token_ifs.add(block.if_id)
            elif block:
                block.tag = None
            return rest
        if kw == "fi":
            self._pop("if")
            return rest
        if kw in ("while", "until"):
            self.blocks.append(Block("loop", cmd.line))
            return self.condition(rest)
        if kw == "for":  # the variable is handled by _loop_var
            self.blocks.append(Block("loop", cmd.line))
            return []
        if kw == "done":
            self._pop("loop")
            return rest
        if kw == "case":
            self.blocks.append(Block("case", cmd.line))
            return []
        if kw == "esac":
            self._pop("case")
            return rest
        if kw == "function":
            self.pending_function = True
            rest = [w for w in rest[1:] if w.raw not in ("()",)]
            return (
                self._keyword("{", Command(rest, cmd.line)) if rest and rest[0].raw == "{" else []
            )
        if kw == "{":
            self.blocks.append(Block("function" if self.pending_function else "group", cmd.line))
            self.pending_function = False
            return rest
        if kw == "}":
            for kind in ("function", "group"):
                if self.blocks and self.blocks[-1].kind == kind:
                    self.blocks.pop()
                    break
            return rest
        return rest  # then, do, !, time

    @staticmethod
    def condition(words: list[Word]) -> list[Word]:
        """The command a condition runs (``if ! wget …``), or nothing for a test (``[[ … ]]``)."""
        while words and unquote(words[0].raw) == "!":
            words = words[1:]
        if not words or unquote(words[0].raw) in ("[[", "[", "test", "true", "false"):
            return []
        return words

    def _top(self, kind: str) -> Block | None:
        for block in reversed(self.blocks):
            if block.kind == kind:
                return block
        return None

    def _pop(self, kind: str) -> None:
        for i in range(len(self.blocks) - 1, -1, -1):
            if self.blocks[i].kind == kind:
                del self.blocks[i:]
                return
