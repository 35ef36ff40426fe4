"""PURE: what the simulated endpoint answers — captions, usage, filter results, error bodies.

Captions are derived from the image (its URL, or the bytes of an inlined one),
so a test can compute the caption every row must carry. Prompt tokens are
counted the way OpenAI counts them (text plus image tokens by detail level and
the image's real size when inlined; ``pipeline.tokens``), so costs from a
simulated run are realistic.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlparse

from PIL import Image, UnidentifiedImageError

from ..request import is_reasoning_model
from ..tokens import MESSAGE_OVERHEAD_TOKENS, TextCounter, image_tokens

_ADJECTIVES = ("red", "quiet", "sunlit", "blurry", "small", "crowded", "wooden", "snowy", "bright", "old")
_NOUNS = ("bicycle", "cat", "lighthouse", "kitchen", "mountain", "street", "teapot", "garden", "bridge", "robot")
_PLACES = ("a window", "the sea", "a market", "a forest", "a wall", "a river", "the city", "a table")
REASONING_TOKENS = 64
_SIM_RULE = re.compile(r"^([a-z0-9_]+?)(?:x(\d+))?$")


def image_key(url: str) -> str:
    """What identifies an image to the simulator: the URL, or a digest of inlined bytes."""
    if url.startswith("data:"):
        return "data:" + hashlib.sha256(url.partition(",")[2].encode()).hexdigest()[:16]
    return url


def caption_for(url: str) -> str:
    """Derived from the image (its bytes when inlined, else its URL without the host, so a
    simulator on another port gives the same captions)."""
    key = image_key(url)
    if not key.startswith("data:"):
        parsed = urlparse(key)
        key = parsed.path + ("?" + parsed.query if parsed.query else "")
    digest = hashlib.sha256(key.encode()).digest()
    adj = _ADJECTIVES[digest[0] % len(_ADJECTIVES)]
    noun = _NOUNS[digest[1] % len(_NOUNS)]
    place = _PLACES[digest[2] % len(_PLACES)]
    return f"A {adj} {noun} near {place} (#{digest[3:6].hex()})."


@dataclass(frozen=True, slots=True)
class ImagePart:
    url: str
    detail: str
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    model: str
    text: str
    images: tuple[ImagePart, ...]
    max_tokens: int | None
    n: int
    schema: dict[str, Any] | None = None  # response_format's JSON schema: answer with conforming JSON
    extras: tuple[tuple[str, Any], ...] = ()  # gateway fields such as ocr_model


class BadRequest(ValueError):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def _image_size(url: str) -> tuple[int | None, int | None]:
    if url.startswith("data:"):
        try:
            data = base64.b64decode(url.partition(",")[2], validate=True)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
            raise BadRequest(
                "Invalid base64 image_url or unsupported image.", param="url", code="invalid_image"
            ) from None
    # Remote images are not fetched (no network); a test may state the size in the URL.
    size = parse_qs(urlparse(url).query).get("size", [""])[0]
    if "x" in size:
        w, _, h = size.partition("x")
        if w.isdigit() and h.isdigit():
            return int(w), int(h)
    return None, None


# OpenAI's chat-completions body keys: anything else is refused with its words.
KNOWN_PARAMS = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop",
        "stream", "stream_options", "response_format", "seed", "user", "presence_penalty", "frequency_penalty",
        "logit_bias", "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "functions",
        "function_call", "reasoning_effort", "service_tier", "store", "metadata", "modalities", "audio",
        "prediction", "web_search_options", "verbosity", "prompt_cache_key", "safety_identifier",
    }
)  # fmt: skip
# How strictly a profile checks parameters: OpenAI's own API (and Azure, and an OpenAI upstream behind
# LiteLLM) refuses unknown keys and reasoning models' max_tokens / temperature; LiteLLM maps
# max_tokens itself but refuses a temperature; OpenRouter and vLLM accept and ignore.
ParamChecks = Literal["openai", "litellm", "lenient"]


def _check_parameters(body: dict[str, Any], model: str, *, checks: ParamChecks, extra_params: tuple[str, ...]) -> None:
    if body.get("stream") is True:
        # The pipeline never streams; a silent non-stream answer would hide a client bug.
        raise BadRequest(
            "This simulator does not stream: send 'stream': false (or leave it out).",
            param="stream",
            code="unsupported_value",
        )
    if checks == "lenient":
        return
    if checks == "openai":
        unknown = sorted(set(body) - KNOWN_PARAMS - set(extra_params))
        if unknown:
            raise BadRequest(f"Unrecognized request argument supplied: {unknown[0]}")
    if not is_reasoning_model(model):
        return
    # As the real API: o-series and gpt-5 models take max_completion_tokens and only the default
    # temperature / top_p.
    if "max_tokens" in body and checks == "openai":
        raise BadRequest(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    for knob in ("temperature", "top_p"):
        if knob in body and body[knob] != 1:
            raise BadRequest(
                f"Unsupported value: '{knob}' does not support {body[knob]} with this model. "
                "Only the default (1) value is supported.",
                param=knob,
                code="unsupported_value",
            )


def parse_request(
    body: Any, *, checks: ParamChecks = "openai", extra_params: tuple[str, ...] = ("ocr_model",)
) -> ParsedRequest:
    """Validate like the real API: model, messages, well-formed content parts, parameters."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    texts: list[str] = []
    images: list[ImagePart] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "developer"):
            raise BadRequest(f"Invalid value for 'messages[{i}].role'.", param=f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise BadRequest(f"Invalid type for 'messages[{i}].content'.", param=f"messages[{i}].content")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif (
                kind == "image_url"
                and isinstance(part.get("image_url"), dict)
                and isinstance(part["image_url"].get("url"), str)
            ):
                url = part["image_url"]["url"]
                detail = part["image_url"].get("detail", "auto")
                if detail not in ("low", "high", "auto"):
                    raise BadRequest(
                        f"Invalid value for 'detail': {detail!r}.", param=f"messages[{i}].content[{j}].image_url.detail"
                    )
                if not url.startswith(("http://", "https://", "data:image/")):
                    raise BadRequest(
                        "Invalid image URL: expected an http(s) URL or a base64 data URL.",
                        param=f"messages[{i}].content[{j}].image_url.url",
                        code="invalid_image_url",
                    )
                w, h = _image_size(url)
                images.append(ImagePart(url=url, detail=detail, width=w, height=h))
            else:
                raise BadRequest(
                    f"Invalid content part at 'messages[{i}].content[{j}]'.", param=f"messages[{i}].content[{j}]"
                )
    _check_parameters(body, model, checks=checks, extra_params=extra_params)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("Invalid 'max_tokens': must be a positive integer.", param="max_tokens")
    n = body.get("n", 1)
    if not isinstance(n, int) or n < 1:
        raise BadRequest("Invalid 'n': must be a positive integer.", param="n")
    response_format = body.get("response_format")
    schema = None
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
        elif response_format.get("type") == "json_object":
            schema = {"type": "object"}
    extras = tuple((k, body[k]) for k in ("ocr_model",) if k in body)
    return ParsedRequest(
        model=model,
        text="\n".join(texts),
        images=tuple(images),
        max_tokens=max_tokens,
        n=n,
        schema=schema,
        extras=extras,
    )


def answer_for(schema: dict[str, Any], seed: bytes) -> Any:
    """A value conforming to a JSON schema, derived from the image (so tests can predict it)."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if "enum" in schema:
        return schema["enum"][seed[0] % len(schema["enum"])]
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            name: answer_for(sub if isinstance(sub, dict) else {}, hashlib.sha256(seed + name.encode()).digest())
            for name, sub in props.items()
        }
    if kind == "array":
        found = schema.get("items")
        items: dict[str, Any] = found if isinstance(found, dict) else {"type": "string"}
        return [answer_for(items, hashlib.sha256(seed + bytes([i])).digest()) for i in range(1 + seed[0] % 3)]
    if kind == "integer":
        return seed[0] % 10
    if kind == "number":
        return round(seed[0] / 25.5, 2)
    if kind == "boolean":
        return bool(seed[0] % 2)
    return _NOUNS[seed[0] % len(_NOUNS)]


def prompt_tokens(req: ParsedRequest, counter: TextCounter) -> int:
    text = counter.count(req.text, model=req.model) if req.text else 0
    imgs = sum(image_tokens(req.model, detail=p.detail, width=p.width, height=p.height) for p in req.images)
    return text + imgs + MESSAGE_OVERHEAD_TOKENS


def fault_rule(url: str) -> tuple[str, int] | None:
    """``?sim=503x2`` → ("503", 2): fail the first 2 requests for this image; ``?sim=auth`` → every time."""
    if url.startswith("data:"):
        return None
    values = parse_qs(urlparse(url).query).get("sim")
    if not values:
        return None
    match = _SIM_RULE.match(values[0])
    if not match:
        return None
    return match.group(1), int(match.group(2)) if match.group(2) else 10**9


_FORMATS = {
    "png": ("PNG", "image/png"),
    "jpg": ("JPEG", "image/jpeg"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
    "gif": ("GIF", "image/gif"),
}


def image_spec(name: str, query: str) -> tuple[str, int, int, tuple[int, int, int]]:
    """(format, width, height, colour) of a generated image: ``NAME.png?size=WxH``, capped at 4096 px a side."""
    size = parse_qs(query).get("size", ["64x64"])[0]
    w, _, h = size.partition("x")
    width = max(1, min(4096, int(w))) if w.isdigit() else 64
    height = max(1, min(4096, int(h))) if h.isdigit() else 64
    fmt = name.rsplit(".", 1)[-1].lower()
    fmt = fmt if fmt in _FORMATS else "png"
    # A small palette, so a cache of generated images stays small.
    shade = hashlib.sha256(name.encode()).digest()[0] % 8
    return fmt, width, height, (40 + 25 * shade, 90, 200 - 20 * shade)


def encode_image(fmt: str, width: int, height: int, colour: tuple[int, int, int]) -> tuple[bytes, str]:
    pil_format, content_type = _FORMATS[fmt]
    out = io.BytesIO()
    options = {"compress_level": 1} if pil_format == "PNG" else {}
    Image.new("RGB", (width, height), colour).save(out, format=pil_format, **options)
    return out.getvalue(), content_type


def _filter_block(flag: str | None = None, severity: str = "high") -> dict[str, Any]:
    block: dict[str, Any] = {
        c: {"filtered": False, "severity": "safe"} for c in ("hate", "self_harm", "sexual", "violence")
    }
    if flag:
        block[flag] = {"filtered": True, "severity": severity}
    return block


def completion_body(
    req: ParsedRequest,
    *,
    response_id: str,
    created: int,
    prompt_tokens_: int,
    counter: TextCounter,
    filtered_category: str | None = None,
    plain_text: bool = False,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """An Azure-flavoured OpenAI completion, shaped like seed 000."""
    caption = caption_for(req.images[0].url) if req.images else "There is no image in this request."
    choices = []
    completion_tokens = 0
    for index in range(req.n):
        text, finish = (caption if index == 0 else f"{caption} Variant {index + 1}."), "stop"
        if req.schema is not None and not plain_text:
            seed = hashlib.sha256(caption.encode()).digest()
            text = json.dumps(answer_for(req.schema, seed))
        tokens = counter.count(text, model=req.model)
        if req.max_tokens is not None and tokens > req.max_tokens:
            words = text.split()
            text = " ".join(words[: max(1, req.max_tokens)])
            tokens, finish = req.max_tokens, "length"
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        results = _filter_block()
        if filtered_category:
            message["content"], finish, tokens = None, "content_filter", 0
            results = _filter_block(filtered_category)
        completion_tokens += tokens
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
                "content_filter_results": results,
            }
        )
    # A reasoning model thinks before it answers: those tokens are billed inside completion_tokens.
    reasoning_tokens = REASONING_TOKENS * req.n if is_reasoning_model(req.model) else 0
    completion_tokens += reasoning_tokens
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "system_fingerprint": "fp_simulated",
        "choices": choices,
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _filter_block()}],
        "usage": {
            "prompt_tokens": prompt_tokens_,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens_ + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
    }
