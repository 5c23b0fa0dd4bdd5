from __future__ import annotations

import io
import json

from structlog.testing import capture_logs

from polyroute import UpstreamConnectionError
from polyroute.core.logging import get_logger
from polyroute.core.redaction import redact, redact_value, register_secret


def test_url_credentials_are_masked() -> None:
    assert redact("via http://bob:pa55word@proxy:8080/x") == "via http://***@proxy:8080/x"


def test_bearer_tokens_and_key_shapes_are_masked() -> None:
    text = redact("Authorization: Bearer abc.def-123 and sk-proj-ABCDEFGH12345678")
    assert "abc.def-123" not in text
    assert "ABCDEFGH12345678" not in text


def test_registered_secrets_are_masked_anywhere() -> None:
    register_secret("plain-looking-token-value")
    assert redact("x=plain-looking-token-value;") == "x=***;"


def test_secret_headers_are_masked() -> None:
    assert redact_value({"Authorization": "Bearer x", "Accept": "text/plain"}) == {
        "Authorization": "***",
        "Accept": "text/plain",
    }


def test_exception_messages_are_redacted() -> None:
    error = UpstreamConnectionError("cannot reach http://u:topsecret@127.0.0.1:1", provider="p")
    assert "topsecret" not in str(error)
    assert "topsecret" not in repr(error)


def test_library_is_silent_until_configured(capsys: object) -> None:
    get_logger().info("probe.event", detail=1)
    captured = capsys.readouterr()  # type: ignore[attr-defined]
    assert captured.out == ""
    assert captured.err == ""


def test_configured_json_logging_redacts_every_value(json_log: io.StringIO) -> None:
    get_logger().info("probe.event", proxy="http://u:hunter2@h:1", headers={"Authorization": "k"})
    event = json.loads(json_log.getvalue().splitlines()[-1])
    assert event["event"] == "probe.event"
    assert event["proxy"] == "http://***@h:1"
    assert event["headers"] == {"Authorization": "***"}


def test_events_reach_structlog_capture() -> None:
    with capture_logs() as logs:
        get_logger().warning("probe.captured", n=3)
    assert logs == [{"event": "probe.captured", "n": 3, "log_level": "warning"}]
