"""The one place a secret is masked: every string leaving the pipeline passes a ``Scrubber``.

Servers and proxies echo what they were sent: an error message quoting the
``Authorization`` header, a body cut to 200 characters with the key straddling
the cut. So a ``Scrubber`` masks, in any text:

- each secret as given and stripped of surrounding whitespace;
- any run of ``min_fragment`` or more characters copied from a secret (a key
  cut at either end by someone's truncation still leaks most of itself);
- ``Bearer <token>``: whatever was in an Authorization header is a credential.

Masking must happen *before* any truncation; the fragment rule is the second
line of defence for truncations done by others (a proxy, a gateway).
Used by: the client (failure messages), the runner (each row before it is
written), and the CLI (log records, the final error line).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from typing import Any

from .models import ResultRow

MASK = "***"
# Eight characters of a random key are a fragment worth hiding (48+ bits); shorter
# runs also occur in ordinary text by chance ("sk-proj-" aside) and masking them would
# mangle captions.
MIN_FRAGMENT = 8
_BEARER = re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=:-]{8,}")
_ROW_TEXT_FIELDS = (
    "url",
    "caption",
    "model",
    "finish_reason",
    "max_severity",
    "filter_results",
    "error_type",
    "error_message",
    "response_id",
    "labels",
    "dedup_of",
)
_ROW_LIST_FIELDS = ("captions", "flagged_categories")


class Scrubber:
    """Masks secrets in text; cheap when the text holds none (a few substring searches)."""

    def __init__(self, secrets: Iterable[str | None] = (), *, min_fragment: int = MIN_FRAGMENT) -> None:
        keys = {s for raw in secrets if raw for s in (raw, raw.strip()) if s}
        self._keys = tuple(sorted(keys, key=len, reverse=True))
        self._min_fragment = min_fragment
        # Every fragment of >= min_fragment characters contains one of these probes (a
        # substring starting at a multiple of ``step``), so a text with no probe in it has no
        # fragment: the common case costs a handful of C-speed `in` checks.
        step = max(1, (min_fragment + 1) // 2)
        self._probes = tuple(
            {k[i : i + step] for k in self._keys if len(k) >= min_fragment for i in range(0, len(k) - step + 1, step)}
        )
        self._byte_probes = tuple(p.encode() for p in (*self._probes, *self._keys, "earer", "EARER"))
        self._grams = frozenset(k[i : i + min_fragment] for k in self._keys for i in range(len(k) - min_fragment + 1))

    @property
    def active(self) -> bool:
        return bool(self._keys)

    def __call__(self, text: str) -> str:
        if not self._keys:
            return text
        for key in self._keys:
            if key in text:
                text = text.replace(key, MASK)
        if any(p in text for p in self._probes):
            text = self._mask_fragments(text)
        if "earer" in text or "EARER" in text:
            text = _BEARER.sub(f"Bearer {MASK}", text)
        return text

    def _mask_fragments(self, text: str) -> str:
        """Replace every stretch of text covered by a ``min_fragment``-long piece of a secret.

        Only the windows around a probe's occurrences are checked: every such piece holds a
        probe, and scanning a long caption position by position would cost seconds.
        """
        n = self._min_fragment
        starts: set[int] = set()
        for probe in self._probes:
            j = text.find(probe)
            while j != -1:
                starts.update(i for i in range(max(0, j - n + 1), j + 1) if text[i : i + n] in self._grams)
                j = text.find(probe, j + 1)
        spans: list[list[int]] = []
        for i in sorted(starts):
            if spans and i <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], i + n)
            else:
                spans.append([i, i + n])
        for start, end in reversed(spans):
            text = text[:start] + MASK + text[end:]
        return text

    def scrub_bytes(self, data: bytes) -> bytes:
        """A body, masked before anyone parses or cuts it (UTF-8; undecodable bytes replaced)."""
        if not self._keys or not any(p in data for p in self._byte_probes):
            return data
        return self(data.decode("utf-8", "replace")).encode()

    def row(self, row: ResultRow) -> ResultRow:
        """The row with every text field masked (the id stays: it is the resume key, from the manifest)."""
        if not self._keys:
            return row
        texts = [getattr(row, name) or "" for name in _ROW_TEXT_FIELDS]
        texts.extend(item for name in _ROW_LIST_FIELDS for item in (getattr(row, name) or ()))
        joined = "\x00".join(texts)
        if self(joined) == joined:
            return row
        changes: dict[str, Any] = {
            name: self(getattr(row, name)) for name in _ROW_TEXT_FIELDS if getattr(row, name) is not None
        }
        changes.update(
            {name: [self(v) for v in getattr(row, name)] for name in _ROW_LIST_FIELDS if getattr(row, name) is not None}
        )
        return dataclasses.replace(row, **changes)


class ScrubbingFilter(logging.Filter):
    """Masks secrets in a log record's message and traceback; installed on the CLI's handler."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self._scrub = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self._scrub(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Formatted here so the traceback's text (exception messages quote headers) is masked too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self._scrub(record.stack_info)
        return True
