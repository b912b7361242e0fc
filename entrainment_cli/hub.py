"""The Hugging Face hub when there is no network: caches only, at once.

Without this, every hub lookup on an offline machine retries for about 25 s before failing.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from urllib.parse import urlparse

log = logging.getLogger("entrain")

_unreachable = False  # set when this process went offline because the hub did not answer


def offline_reason() -> str | None:
    """Why the hub is not asked, for an error to say instead of blaming the network or
    HF_TOKEN: set offline by the user's HF_HUB_OFFLINE, or not reachable; None: online."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
    if _unreachable and offline:
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
        return f"{host} cannot be reached (no network), so only the local caches were read"
    if offline:
        return (
            f"the hub is offline by HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']}, so only "
            "the local caches were read"
        )
    return None


def offline_if_unreachable(timeout: float = 3.0) -> None:
    """Switch this process to the hub's offline mode when its host cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return
    except OSError:
        pass
    log.info("%s cannot be reached: using the local Hugging Face caches only", host)
    global _unreachable
    _unreachable = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    # modules imported already read the variable at import time
    for module in ("huggingface_hub.constants", "datasets.config"):
        if module in sys.modules:
            sys.modules[module].HF_HUB_OFFLINE = True
