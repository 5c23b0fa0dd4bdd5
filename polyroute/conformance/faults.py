"""The faults, the ports their upstreams listen on, and the answer each request expects.

Every answer is the simulator's deterministic filler (polyroute/simulator/text.py), keyed
by the fault's name alone, so the fault upstream, the backup and the suite agree on it to
the character whatever the gateway adds to the conversation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from polyroute.simulator.server import tool_call
from polyroute.simulator.text import answer_words, tag

DEFAULT_UPSTREAMS_PORT = 9100
DEFAULT_MODEL_PREFIX = "conformance"
HOST = "127.0.0.1"
ANSWER_WORDS = 40
"""Words in each answer after its tag: 41 chunks of text."""


@dataclass(frozen=True)
class Fault:
    """One way an upstream fails, as the fault upstream plays it."""

    name: str
    summary: str
    """What the upstream does, for the table in docs/conformance.md."""
    calls_a_tool: bool = False
    """The request offers a tool, and the expected answer is a call to it."""


FAULTS = (
    Fault("cut-mid-answer", "closes the connection after 12 chunks of text"),
    Fault(
        "cut-in-tool-call",
        "closes the connection inside a tool call's arguments",
        calls_a_tool=True,
    ),
    Fault("stall-before-first-chunk", "sends 200 and its headers, then nothing"),
    Fault("stall-after-first-chunk", "sends one chunk of text, then nothing"),
    Fault(
        "malformed-chunk",
        "after 8 chunks of text sends one that is not JSON, then the rest and [DONE]",
    ),
    Fault("error-event", "after 8 chunks of text sends an error event and ends the body"),
    Fault("rate-limited-429", "answers 429 with Retry-After: 1"),
    Fault("unavailable-503", "answers 503"),
    Fault("connection-refused", "nothing listens on its port"),
)
FAULTS_BY_NAME = {fault.name: fault for fault in FAULTS}
REFUSED = "connection-refused"


@dataclass(frozen=True)
class Ports:
    """The suite's fixed loopback ports: the fault upstream (one path per fault), the
    backup, and the port where nothing may listen (connection refused)."""

    faults: int
    backup: int
    refused: int

    @classmethod
    def from_base(cls, port: int) -> Ports:
        return cls(faults=port, backup=port + 1, refused=port + 2)

    def base_url(self, fault: str) -> str:
        """The OpenAI-style base URL of ``fault``'s upstream (what a gateway entry names)."""
        if fault == REFUSED:
            return f"http://{HOST}:{self.refused}/v1"
        return f"http://{HOST}:{self.faults}/{fault}/v1"

    @property
    def backup_url(self) -> str:
        return f"http://{HOST}:{self.backup}/v1"


def model_name(prefix: str, fault: str) -> str:
    """The gateway's model name for ``fault``'s requests."""
    return f"{prefix}-{fault}"


_MARKER = "polyroute conformance fault "
_MARKED = re.compile(re.escape(_MARKER) + r"([a-z0-9-]+)")


def prompt(fault: str) -> str:
    """The user message of ``fault``'s request; the backup reads the fault from it."""
    return f"{_MARKER}{fault}: answer with the suite's text."


def fault_named_in(messages: Any) -> str | None:
    """The fault a request's messages are about (``None`` when no known fault)."""
    found = _MARKED.search(json.dumps(messages))
    return found.group(1) if found and found.group(1) in FAULTS_BY_NAME else None


def answer_pieces(fault: str) -> list[str]:
    """The expected answer's text, one piece per chunk: the tag, then the words."""
    return [tag("conformance"), *answer_words(f"conformance:{fault}", ANSWER_WORDS)]


def expected_text(fault: str) -> str:
    return "".join(answer_pieces(fault))


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_forecast",
            "description": "The weather forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "hourly": {"type": "boolean"},
                },
                "required": ["city"],
            },
        },
    }
]


def expected_call() -> tuple[str, str]:
    """The tool call the tool fault's request expects: name and JSON arguments."""
    call = tool_call({"tools": TOOLS, "messages": [{"role": "user"}]})
    assert call is not None  # TOOLS offers a tool, and the last message is the user's
    return call
