"""The executor seam: how a prepared request becomes its result row.

The runner reads the manifest, prepares each row (image, body, dedup) and hands
a ``PreparedRequest`` to an executor; the executor returns the row's
``ResultRow`` or raises ``StopDispatch``. ``dispatch.OnlineExecutor`` sends each
request at once, paced and retried. A Batch-API executor (collect requests into
a batch file, submit, poll, parse the output file) or a sharded one is another
module beside it implementing ``Executor``, reusing request building
(``request.py``), parsing (``parse.py``), row building (``rows.py``), pricing
(``cost.py``) and the journal unchanged.
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import PipelineError
from .images import PreparedImage
from .models import Item, ResultRow
from .value_types import value_type


@value_type
class PreparedRequest:
    """One manifest row ready to send: its body, the image it carries, its dedup key."""

    item: Item
    body: dict[str, Any]
    image: PreparedImage
    key: str | None  # request_key, when dedup is on
    prior_cost_usd: float | None  # what earlier runs paid for this id
    payload: bytes | None = None  # the body already serialized (dedup's canonical_json), sent as it is


class StopDispatch(Exception):
    """The run is stopping: no more requests go out.

    ``reason`` is set when this request is why (a fatal answer, the budget, an open
    breaker); ``row`` is an answer already paid for that must still be recorded.
    """

    def __init__(self, reason: PipelineError | None = None, *, row: ResultRow | None = None) -> None:
        super().__init__(str(reason) if reason else "the run is stopping")
        self.reason = reason
        self.row = row


class Executor(Protocol):
    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered (they are paid for once answered)."""
        ...

    @property
    def requests(self) -> int:
        """Requests made so far, whatever their outcome."""
        ...

    async def execute(self, request: PreparedRequest) -> ResultRow:
        """The row's result, or ``StopDispatch`` once the run is stopping."""
        ...
