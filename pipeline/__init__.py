"""caption: batch image captioning against OpenAI-compatible vision endpoints."""

from importlib import metadata

__version__ = "0.1.0"


def version(distribution: str = "caption") -> str:
    """The installed package's version; the source tree's own when it runs uninstalled (a plain checkout)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return __version__
