"""docs/console.md says what the console does: its config loads, its policy is the one
served, the stream's fields are the ones sent, and its pictures are there and small."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from polyroute import load_config
from polyroute.router.router import EntryStatus
from polyroute.router.stats import EntryStats
from polyroute.server.console import CONTENT_SECURITY_POLICY
from polyroute.server.console_live import Tally

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "console.md"
MAX_PICTURE_BYTES = 60_000


def test_the_guides_config_turns_the_console_on() -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    config = load_config(yaml.safe_load(block))
    assert config.gateway.admin_key_env == "POLYROUTE_ADMIN_KEY"
    assert config.store is not None


def test_the_guide_states_the_policy_served() -> None:
    text = " ".join(GUIDE.read_text().split())
    assert f"`{CONTENT_SECURITY_POLICY}`" in text


def test_the_guide_names_every_field_of_an_entry() -> None:
    status = EntryStatus(
        name="up", type="openai", working=True, supports_stream=True, health="healthy",
        unusable=None, endpoint=None, stats=EntryStats(), missing_key=None,
        discovery_error=None, models=["m"], cooling_down=False,
    )  # fmt: skip
    (row,) = Tally().entry_rows([status])
    text = GUIDE.read_text()
    assert [field for field in row if f"`{field}`" not in text] == []


def test_every_picture_is_there_and_small() -> None:
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", GUIDE.read_text())
    assert len(pictures) == 6
    for picture in pictures:
        path = GUIDE.parent / picture
        assert path.is_file(), picture
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size < MAX_PICTURE_BYTES, picture
