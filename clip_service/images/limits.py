"""``FetchLimits``: what the images of one request may cost, with the service's defaults (``settings.fetch``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .url_policy import Allowlist


@dataclass(frozen=True)
class FetchLimits:
    """What one request's images may cost; config.py names each field's variable and says what it does."""

    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    concurrency: int = 8  # per request
    max_bytes: int = 20 * 1024 * 1024
    jpeg_draft: bool = True  # decode big JPEGs at a reduced scale that still covers the model's input
    max_image_pixels: int = 50_000_000
    decode_budget_mb: int = 400  # images being decoded at once per process (decoding.DecodeBudget)
    user_agent: str = "clip-service/1.0"
    total_timeout: float = 20.0  # one image, connect to last byte, redirects included
    request_timeout: float = 30.0  # all the images of one request
    max_redirects: int = 3
    worker_concurrency: int = 16  # per process, all requests together
    # Strings as the environment spells them (parsed by the fetcher), or parsed values.
    ports: str | Sequence[int] = "80,443"
    allow: str | Allowlist = ""
    max_url_chars: int = 2048
