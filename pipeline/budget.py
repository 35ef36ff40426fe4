"""The spending cap: dispatch stops before spend plus what is in flight would pass ``max_cost_usd``.

Each request reserves its upper-bound cost (estimated prompt tokens, plus every
``max_tokens`` at the output price) before it is sent; when the answer comes
back the reservation is replaced by what it really cost. So the cap holds even
with many requests in flight: the reservations are what the cap is checked
against.

The cap covers the whole output folder: a resumed run starts from what the
folder already spent, so re-running a stopped command needs a higher cap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Budget:
    max_cost_usd: float | None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0

    def try_reserve(self, cost_usd: float) -> bool:
        """Reserve ``cost_usd`` if it fits under the cap with everything in flight; False if not."""
        if self.max_cost_usd is None:
            return True
        if self.spent_usd + self.reserved_usd + cost_usd > self.max_cost_usd:
            return False
        self.reserved_usd += cost_usd
        return True

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """Swap a reservation for what the request really cost (0 when it failed before an answer)."""
        if self.max_cost_usd is not None:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
        self.spent_usd += actual_usd

    def describe(self) -> str:
        cap = f"${self.max_cost_usd:.4f}" if self.max_cost_usd is not None else "no cap"
        return f"spent ${self.spent_usd:.4f} of {cap}"
