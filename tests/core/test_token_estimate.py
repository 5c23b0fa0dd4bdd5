"""`estimated_input_tokens` against a real LLM tokenizer: the gateway's count_tokens
promises an estimate within 25% on English prose where no exact count can be had.

The reference is Mistral's Tekken tokenizer (a tiktoken-style byte-level BPE with a
131k vocabulary), whose files ship inside the pinned `mistral-common` wheel, so the
count needs no network. On English prose it counts within a few per cent of OpenAI's
o200k_base and cl100k_base and of Anthropic's published Claude tokenizer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mistral_common.tokens.tokenizers.base import Tokenizer
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from polyroute.core.request import ChatRequest, estimated_input_tokens

PROSE = Path(__file__).with_name("english_prose.txt")


def load_samples(path: Path) -> dict[str, str]:
    """The file's "## name" sections, each paragraph's hard-wrapped lines joined by
    spaces the way a chat client would send them (a line break is a token of its own
    where a space is not)."""
    samples = {}
    for section in re.split(r"^## ", path.read_text(), flags=re.MULTILINE)[1:]:
        name, _, body = section.partition("\n")
        paragraphs = (" ".join(paragraph.split("\n")) for paragraph in body.strip().split("\n\n"))
        samples[name.strip()] = "\n\n".join(paragraphs)
    return samples


SAMPLES = load_samples(PROSE)


@pytest.fixture(scope="module")
def reference() -> Tokenizer:
    """Tekken as released with Mistral NeMo, loaded from the package's own data folder."""
    return MistralTokenizer.v3(is_tekken=True).instruct_tokenizer.tokenizer


def estimate(text: str, params: dict[str, object] | None = None) -> int:
    return estimated_input_tokens(
        ChatRequest.build([{"role": "user", "content": text}], params or {})
    )


def test_the_prose_samples_are_several_and_of_the_sizes_meant() -> None:
    sizes = {name: len(text) for name, text in SAMPLES.items()}
    assert len(sizes) >= 6, sizes
    assert all(200 <= size <= 2000 for size in sizes.values()), sizes
    assert not any("\n" in text.replace("\n\n", "") for text in SAMPLES.values())


def test_the_reference_is_a_real_subword_tokenizer(reference: Tokenizer) -> None:
    # Whole common words are single tokens, a rare one is split: neither a character
    # nor a word count would pass.
    assert len(reference.encode("The weather was good", bos=False, eos=False)) == 4
    assert len(reference.encode(" antidisestablishmentarianism", bos=False, eos=False)) > 2


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_estimate_is_within_a_quarter_of_a_real_tokenizer_on_english_prose(
    name: str, reference: Tokenizer
) -> None:
    text = SAMPLES[name]
    estimated = estimate(text)
    counted = len(reference.encode(text, bos=False, eos=False))
    assert 0.75 <= estimated / counted <= 1.25, (
        f"{name} ({len(text)} characters): estimated {estimated} tokens, "
        f"Tekken counts {counted} (ratio {estimated / counted:.2f})"
    )


def test_estimate_grows_with_tool_definitions() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city, in degrees Celsius.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city's name."}},
                "required": ["city"],
            },
        },
    }
    text = SAMPLES["chat"]
    without = estimate(text)
    with_one = estimate(text, {"tools": [tool]})
    with_two = estimate(text, {"tools": [tool, {**tool, "function": {"name": "get_time"}}]})
    assert without < with_one < with_two, (without, with_one, with_two)
