"""Settings for every inferbox process, read from ``INFERBOX_*`` environment variables.

One ``Settings`` object is built at a process's entry point and passed down (to
``create_app(settings)`` and ``local_worker(settings)``); nothing reads the environment elsewhere.
``Settings`` is the composition of one class per concern, a module each (``StoreSettings`` in
``stores.py``, ``WorkerSettings`` in ``worker.py``...): a field is read and reached the same
way whichever group declares it (``INFERBOX_REDIS_URL``, ``settings.redis_url``).
"""

from __future__ import annotations

from inferbox.config.api import ApiSettings
from inferbox.config.base import SettingsGroup
from inferbox.config.cache import CacheSettings
from inferbox.config.jobs import JobsSettings
from inferbox.config.limits import LimitsSettings
from inferbox.config.model_defaults import ModelDefaultsSettings
from inferbox.config.observability import ObservabilitySettings
from inferbox.config.registry import RegistrySettings
from inferbox.config.security import SecuritySettings
from inferbox.config.stores import StoreSettings
from inferbox.config.webhooks import WebhookSettings
from inferbox.config.worker import DEFAULT_PROVIDERS, WorkerSettings

__all__ = [
    "DEFAULT_PROVIDERS",
    "ApiSettings",
    "CacheSettings",
    "JobsSettings",
    "LimitsSettings",
    "ModelDefaultsSettings",
    "ObservabilitySettings",
    "RegistrySettings",
    "SecuritySettings",
    "Settings",
    "SettingsGroup",
    "StoreSettings",
    "WebhookSettings",
    "WorkerSettings",
]


class Settings(
    StoreSettings,
    RegistrySettings,
    ApiSettings,
    LimitsSettings,
    ModelDefaultsSettings,
    CacheSettings,
    SecuritySettings,
    WorkerSettings,
    JobsSettings,
    WebhookSettings,
    ObservabilitySettings,
):
    """Everything an inferbox process can be told: the groups, in the order docs/settings.md
    shows them, read together from one environment with flat access (``settings.redis_url``).
    A validator that spans groups belongs here."""
