"""``Authorization`` headers for API keys."""

from __future__ import annotations


def bearer(key: str) -> dict[str, str]:
    """The ``Authorization`` header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


def auth_headers(appliance) -> dict[str, str]:
    """The appliance's API key as a header, where the appliance has one."""
    key = getattr(appliance, "api_key", None)
    return {"Authorization": f"Bearer {key}"} if key else {}
