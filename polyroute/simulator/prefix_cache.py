"""A simulated upstream's prompt cache: which prefixes of earlier prompts it holds, and
how many of a new prompt's tokens it reads from them.

Modelled on what OpenAI documents (a prompt of 1024 tokens or more is cached; a hit
covers the longest cached prefix, in steps of 128 tokens; an unused prefix goes after
minutes) and reported in each API's own usage fields by the server. Each upstream has
its own cache, so the same conversation sent to another upstream starts cold there:
what affinity routing (docs/router.md) is for.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from polyroute.simulator.profile import PromptCache

CHARS_PER_TOKEN = 4
"""The simulation's tokenizer: every 4 characters of the prompt are one token."""


class CacheRead(NamedTuple):
    """One prompt as the cache saw it: its tokens, those read from the cache, and those
    written to it (the cacheable part that was not there yet)."""

    prompt_tokens: int
    cached_tokens: int
    written_tokens: int


class PrefixCache:
    """Prefixes of the prompts seen, by hash, each until ``ttl_s`` after its last use.
    ``clock`` is injectable for tests."""

    def __init__(self, config: PromptCache, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()
        """Prefix hash -> when it expires, least recently used first."""

    def __len__(self) -> int:
        return len(self._expiry)

    def read(self, prompt: str) -> CacheRead:
        """Look ``prompt`` up (the longest cached prefix counts as read) and cache its
        own prefixes for the prompts that follow."""
        tokens = math.ceil(len(prompt) / CHARS_PER_TOKEN)
        config = self.config
        if tokens < config.min_tokens:
            return CacheRead(tokens, 0, 0)
        now = self._clock()
        prefixes = list(self._prefixes(prompt, tokens))
        cached = 0
        for size, digest in prefixes:
            expires = self._expiry.get(digest)
            if expires is not None and expires > now:
                cached = size  # every shorter prefix of a cached one was cached with it
        for _, digest in prefixes:
            self._expiry[digest] = now + config.ttl_s
            self._expiry.move_to_end(digest)
        while len(self._expiry) > config.max_prefixes:
            self._expiry.popitem(last=False)
        longest = prefixes[-1][0]
        return CacheRead(tokens, cached, longest - cached)

    def _prefixes(self, prompt: str, tokens: int) -> Iterator[tuple[int, bytes]]:
        """(size in tokens, hash) of each cacheable prefix of ``prompt``, shortest first:
        ``min_tokens``, then every ``step_tokens`` up to the prompt's length."""
        config = self.config
        hasher = hashlib.blake2b(digest_size=16)
        done = 0
        for size in range(config.min_tokens, tokens + 1, config.step_tokens):
            end = size * CHARS_PER_TOKEN
            hasher.update(prompt[done:end].encode())
            done = end
            yield size, hasher.copy().digest()

    def first_chunk_extra_ms(self, read: CacheRead) -> float:
        """What reading the prompt costs before the first chunk: its uncached tokens."""
        uncached = read.prompt_tokens - read.cached_tokens
        return uncached / 1000 * self.config.ms_per_1k_uncached


def prompt_text(tools: Any, messages: list[tuple[str, str]]) -> str:
    """The prompt as the cache sees it, in the order an API caches it: the tools, then
    each message, so that every later turn of a conversation starts with this one."""
    head = f"tools: {tools!r}\n" if tools else ""
    return head + "".join(f"{role}: {content}\n" for role, content in messages)
