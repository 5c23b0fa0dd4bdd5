"""The answer on stdout and the events on stderr sharing one terminal.

When both go to the same terminal, an event printed while the answer's line is still
open would land inside it; :class:`EventStream` ends that line first. When either is
redirected, nothing is added to the answer.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO


class AnswerLine:
    """Writes the answer to stdout and knows whether its last line is unfinished."""

    def __init__(self) -> None:
        self.open = False

    @staticmethod
    def shares_terminal() -> bool:
        return sys.stdout.isatty() and sys.stderr.isatty()

    def write(self, text: str) -> None:
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.open = not text.endswith("\n")

    def end(self) -> None:
        """End the open line (a newline on stdout), if there is one."""
        if self.open:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.open = False

    def finish(self) -> None:
        """After the answer: on a shared terminal a newline only if the line is open
        (an event may have ended it); otherwise always one, as the output's last byte."""
        if self.shares_terminal():
            self.end()
        else:
            sys.stdout.write("\n")
            self.open = False


class EventStream:
    """stderr for the event handler: ends the answer's open line before each event."""

    def __init__(self, answer: AnswerLine) -> None:
        self.answer = answer

    def write(self, text: str) -> int:
        if self.answer.open and self.answer.shares_terminal():
            self.answer.end()
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    """Columns padded to their widest cell, two spaces apart (stdout by default)."""
    out = out or sys.stdout
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        line = "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False))
        print(line.rstrip(), file=out)
