"""PURE: Azure OpenAI's wire format: OpenAI's, with the deployment in the URL, ``api-version`` in the
query and the key in an ``api-key`` header (providers.md §1.2).

``base_url`` is ``https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT`` (with
``endpoint.api_version``) or the v1 path ``https://RESOURCE.openai.azure.com/openai/v1``, which
takes no ``api-version``.
"""

from __future__ import annotations

import dataclasses

from . import openai
from .base import Dialect


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"api-key": api_key} if api_key else {}


DIALECT: Dialect = dataclasses.replace(openai.DIALECT, name="azure", auth_headers=auth_headers)
