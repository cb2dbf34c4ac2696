"""The base every settings group shares: one environment prefix, unknown variables ignored."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsGroup(BaseSettings):
    """Base of the settings groups: every field is read from ``INFERBOX_<FIELD NAME>``, so a
    group read on its own and ``Settings`` read the same variables."""

    model_config = SettingsConfigDict(env_prefix="INFERBOX_", extra="ignore")
