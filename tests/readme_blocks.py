"""The README's fenced code blocks, by section, and the shell commands in them (for tests/test_readme.py).

A block's language is its fence's info string. Shell blocks (`bash`, `sh`, `shell`) hold commands: lines with a
trailing `\\` are joined to the next, `#` comments (outside quotes) are dropped, blank lines skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SHELL_LANGUAGES = ("bash", "sh", "shell")
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([^`\s]*)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass
class Block:
    section: str  # the nearest heading above the block
    language: str  # "" when the fence names none
    line: int  # 1-based line of the opening fence
    text: str

    @property
    def commands(self) -> list:
        return shell_commands(self.text) if self.language in SHELL_LANGUAGES else []


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)

    @property
    def commands(self) -> list:
        return [c for b in self.blocks for c in b.commands]


def read_blocks(path: Path) -> list:
    """Every fenced block of a Markdown file, in order; a heading inside a block is not a heading."""
    blocks, section, fence, start, body = [], "(top)", None, 0, []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if fence is None:
            opening = _FENCE.match(line)
            if opening:
                fence, start, body = (opening.group(2), opening.group(3).lower(), number), number, []
            elif (heading := _HEADING.match(line)) and len(heading.group(1)) >= 2:
                section = heading.group(2)
        elif line.strip().startswith(fence[0]) and not line.strip().strip(fence[0][0]):
            blocks.append(Block(section, fence[1], start, "\n".join(body)))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise ValueError(f"{path}:{start}: a code block is never closed")
    return blocks


def sections(path: Path) -> list:
    """Sections (by heading, in order) that hold at least one fenced block."""
    out: dict = {}
    for block in read_blocks(path):
        out.setdefault(block.section, Section(block.section)).blocks.append(block)
    return list(out.values())


def strip_comment(line: str) -> str:
    """`line` without its shell comment: a `#` that starts a word (after a space or a tab, as bash splits words)
    outside quotes, and what follows it."""
    quote, escaped = None, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):  # bash's word separators, not str.isspace()
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(text: str) -> list:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    commands, pending = [], ""
    for raw in text.splitlines():
        line = strip_comment(raw)
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        command = (pending + line.strip()).strip()
        pending = ""
        if command:
            commands.append(command)
    if pending.strip():
        commands.append(pending.strip())
    return commands
