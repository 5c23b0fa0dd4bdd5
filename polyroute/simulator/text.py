"""Deterministic filler text, visibly a simulation.

Words are drawn by a bigram walk over the opening of Lewis Carroll's "Alice's
Adventures in Wonderland" (1865, public domain), so the output reads like prose
but is never mistaken for a model's answer: it always starts with a
``[simulated <name>]`` tag. The words depend only on the conversation (not on the
upstream), so a simulated continuation can be checked to the character.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import defaultdict
from functools import cache

_SOURCE = """
Alice was beginning to get very tired of sitting by her sister on the bank, and of
having nothing to do: once or twice she had peeped into the book her sister was
reading, but it had no pictures or conversations in it, and what is the use of a
book, thought Alice, without pictures or conversations? So she was considering in
her own mind, as well as she could, for the hot day made her feel very sleepy and
stupid, whether the pleasure of making a daisy-chain would be worth the trouble of
getting up and picking the daisies, when suddenly a White Rabbit with pink eyes ran
close by her. There was nothing so very remarkable in that; nor did Alice think it
so very much out of the way to hear the Rabbit say to itself, Oh dear! Oh dear! I
shall be late! But when the Rabbit actually took a watch out of its
waistcoat-pocket, and looked at it, and then hurried on, Alice started to her feet,
for it flashed across her mind that she had never before seen a rabbit with either
a waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she
ran across the field after it, and fortunately was just in time to see it pop down
a large rabbit-hole under the hedge.
"""


@cache
def _followers() -> dict[str, list[str]]:
    words = _SOURCE.split()
    table: dict[str, list[str]] = defaultdict(list)
    for current, following in itertools.pairwise(words):
        table[current].append(following)
    return dict(table)


def answer_words(conversation_key: str, count: int) -> list[str]:
    """The body of the answer to a conversation: ``count`` words, each with its leading
    space. Every simulated upstream gives the same words for the same conversation, so
    one can continue exactly where another stopped."""
    rng = random.Random(conversation_key)
    followers = _followers()
    starts = sorted(followers)
    word = rng.choice(starts)
    words = []
    for _ in range(count):
        words.append(" " + word)
        word = rng.choice(followers.get(word) or starts)
    return words


def tag(name: str) -> str:
    """The marker every simulated answer starts with."""
    return f"[simulated {name}]"


def simulated_words(name: str, conversation_key: str, count: int) -> list[str]:
    """A whole simulated answer as chunks: the tag, then the words."""
    return [tag(name), *answer_words(conversation_key, count)]


def words_already_given(partial: str, words: list[str]) -> int:
    """How many of ``words`` the ``partial`` answer (tag included) already holds."""
    body = re.sub(r"^\[simulated [^\]]*\]", "", partial)
    given = 0
    while given < len(words) and body.startswith(words[given]):
        body = body[len(words[given]) :]
        given += 1
    return given
