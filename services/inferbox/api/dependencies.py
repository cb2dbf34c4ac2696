"""What the routes receive by dependency injection: the services ``open_serving`` (and the
app's lifespan) put on the application's state, each under the parameter name a handler asks
for (``registry: RegistryService``, ``jobs: JobService``, ...)."""

from __future__ import annotations

import redis.asyncio as aioredis
from litestar.datastructures import State
from litestar.di import Provide

from inferbox.config import Settings
from inferbox.frontend.health import Dependencies
from inferbox.inference.directory import ModelDirectory
from inferbox.jobs.service import JobService
from inferbox.keys import Keys
from inferbox.registry.service import RegistryService
from inferbox.security.audit import AuditLog
from inferbox.security.keystore import KeyCache, KeyStore


def _registry(state: State) -> RegistryService:
    return state.registry


def _directory(state: State) -> ModelDirectory:
    return state.directory


def _jobs(state: State) -> JobService:
    return state.jobs


def _keystore(state: State) -> KeyStore:
    return state.keystore


def _audit(state: State) -> AuditLog:
    return state.audit


def _redis(state: State) -> aioredis.Redis:
    return state.redis


def _redis_keys(state: State) -> Keys:
    return state.redis_keys


def _readiness(state: State) -> Dependencies | None:
    return state.dependencies


def _key_cache(state: State) -> KeyCache | None:
    return state.key_cache


def _settings(state: State) -> Settings:
    return state.settings


DEPENDENCIES = {
    "registry": Provide(_registry, sync_to_thread=False),
    "directory": Provide(_directory, sync_to_thread=False),
    "jobs": Provide(_jobs, sync_to_thread=False),
    "keystore": Provide(_keystore, sync_to_thread=False),
    "audit": Provide(_audit, sync_to_thread=False),
    "redis": Provide(_redis, sync_to_thread=False),
    "redis_keys": Provide(_redis_keys, sync_to_thread=False),
    "readiness": Provide(_readiness, sync_to_thread=False),
    "key_cache": Provide(_key_cache, sync_to_thread=False),
    "settings": Provide(_settings, sync_to_thread=False),
}
"""The app-level dependencies (``Litestar(dependencies=DEPENDENCIES)``)."""
