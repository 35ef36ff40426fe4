"""caption: batch image captioning against OpenAI-compatible vision endpoints."""

__version__ = "0.1.0"
