"""Loading a data set from the Hugging Face hub, with an error a user can act on."""

from __future__ import annotations

from ..errors import UserError

NETWORK_WORDS = ("offline", "connection", "connect", "resolve", "network", "timed out", "timeout", "unreachable")


def is_network_error(e: BaseException) -> bool:
    """A failure to reach the hub (as opposed to a missing data set, a bad config, ...)."""
    import requests

    seen = e
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)):
            return True
        if type(seen).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(e).lower()
    return any(w in text for w in NETWORK_WORDS)


def load_hub(*args, offline_hint: str):
    """`datasets.load_dataset(*args)`; any failure is one line that keeps its message, and is
    called a network error only when it is one."""
    from datasets import load_dataset

    name = "/".join(str(a) for a in args)
    try:
        return load_dataset(*args)
    except Exception as e:  # noqa: BLE001 - reported below, with its message
        first = (str(e).strip().splitlines() or [""])[0][:200]
        detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
        if is_network_error(e):
            raise UserError(f"cannot reach the hub for '{name}' ({detail}); offline, {offline_hint}") from None
        raise UserError(f"cannot load '{name}' from the hub: {detail}") from None
