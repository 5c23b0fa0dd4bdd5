"""``polyroute conformance``: a fault suite for any OpenAI-compatible gateway.

It starts fault-injecting upstreams on fixed loopback ports, sends one streamed chat
request per fault through the gateway under test, and says what the client saw:
``complete``, ``continued``, ``visible_error`` or ``silent_truncation`` (a cut answer
that ended like a complete one). See docs/conformance.md.

Beside the CLI on the top floor: it imports ``polyroute.core`` and the simulator's
deterministic text, and nothing imports it but the command line. Private API except
through the command line.
"""
