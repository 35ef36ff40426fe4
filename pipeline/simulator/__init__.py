"""A local OpenAI-compatible vision endpoint: realistic latency, enforced limits, faults, filter results.

Used by ``caption simulate``, ``caption run --simulate``, the tests and the benchmarks.
"""

from .app import SimulatorApp
from .behaviour import caption_for, image_key
from .config import FAULT_KINDS, SimConfig
from .server import SimulatorServer

__all__ = ["FAULT_KINDS", "SimConfig", "SimulatorApp", "SimulatorServer", "caption_for", "image_key"]
