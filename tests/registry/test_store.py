"""RegistryStore against a real PostgreSQL: versions, aliases, config, traffic split."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from inferbox.errors import BadRequest
from inferbox.models.spec import ModelConfig, TensorSpec
from inferbox.registry.errors import (
    AliasInUse,
    AliasNotFound,
    Conflict,
    ModelNotFound,
    VersionNotFound,
)
from inferbox.registry.store import merge_config

pytestmark = pytest.mark.integration

INPUTS = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]
OUTPUTS = [TensorSpec(name="y", datatype="FP32", shape=[-1, 2])]


async def add(store, name: str, seed: str = "a", **kwargs):
    return await store.create_version(
        name,
        sha256=hashlib.sha256(seed.encode()).hexdigest(),
        size=123,
        inputs=INPUTS,
        outputs=OUTPUTS,
        config=kwargs.pop("config", ModelConfig(max_batch_size=8)),
        **kwargs,
    )


async def test_create_get_and_list(store, model_name) -> None:
    v1 = await add(store, model_name, created_by="key-1")
    v2 = await add(store, model_name, seed="b")
    assert (v1.version, v2.version) == (1, 2)
    assert v1.state == "ready" and v1.loaded and v1.capacity is None
    assert v1.created_by == "key-1" and v1.inputs == INPUTS and v1.outputs == OUTPUTS
    model = await store.get_model(model_name)
    assert [v.version for v in model.versions] == [1, 2]
    assert model.aliases == [] and model.traffic == []
    assert await store.get_version(model_name, 2) == v2
    summary = next(m for m in await store.list_models() if m.name == model_name)
    assert (summary.versions, summary.latest_ready, summary.aliases) == (2, 2, {})


async def test_unknown_and_invalid_names(store, model_name) -> None:
    with pytest.raises(ModelNotFound):
        await store.get_model(model_name)
    with pytest.raises(VersionNotFound):
        await store.get_version(model_name, 1)
    with pytest.raises(BadRequest, match="invalid model name"):
        await add(store, "Bad/Name")
    with pytest.raises(BadRequest, match="sha256"):
        await store.create_version(
            model_name, sha256="xyz", size=1, inputs=INPUTS, outputs=OUTPUTS, config=ModelConfig()
        )


async def test_concurrent_uploads_get_distinct_numbers(store, model_name) -> None:
    versions = await asyncio.gather(*(add(store, model_name, seed=str(i)) for i in range(8)))
    assert sorted(v.version for v in versions) == list(range(1, 9))


async def test_deleted_numbers_are_never_reused(store, model_name) -> None:
    await add(store, model_name)
    await add(store, model_name)
    deleted = await store.delete_version(model_name, 2)
    assert deleted.version == 2
    with pytest.raises(VersionNotFound):
        await store.get_version(model_name, 2)
    assert (await store.get_version(model_name, 2, include_deleted=True)).state == "deleted"
    assert (await add(store, model_name)).version == 3
    with pytest.raises(VersionNotFound):
        await store.delete_version(model_name, 2)


async def test_alias_rules(store, model_name) -> None:
    await add(store, model_name)
    await add(store, model_name)
    alias = await store.set_alias(model_name, "production", 1)
    assert (alias.name, alias.version) == ("production", 1)
    assert (await store.resolve(model_name)).version == 1
    moved = await store.set_alias(model_name, "production", 2)
    assert moved.version == 2 and moved.updated_at >= alias.updated_at
    await store.set_alias(model_name, "canary", 2)
    assert (await store.resolve(model_name, "canary")).version == 2
    assert (await store.resolve(model_name, "1")).version == 1

    with pytest.raises(AliasInUse) as caught:
        await store.delete_version(model_name, 2)
    assert caught.value.status == 409 and caught.value.aliases == ["canary", "production"]
    assert (await store.get_version(model_name, 2)).state == "ready"  # untouched

    await store.delete_version(model_name, 2, force=True)
    assert (await store.get_model(model_name)).aliases == []
    # Without a production alias the newest ready version serves.
    assert (await store.resolve(model_name)).version == 1

    with pytest.raises(VersionNotFound):
        await store.set_alias(model_name, "production", 2)  # deleted
    with pytest.raises(VersionNotFound):
        await store.set_alias(model_name, "production", 9)  # never existed
    with pytest.raises(BadRequest, match="invalid alias"):
        await store.set_alias(model_name, "7", 1)  # would shadow a version number
    with pytest.raises(AliasNotFound):
        await store.delete_alias(model_name, "canary")
    with pytest.raises(AliasNotFound):
        await store.resolve(model_name, "canary")
    await store.set_alias(model_name, "stable", 1)
    await store.delete_alias(model_name, "stable")
    await store.set_state(model_name, 1, "failed", "cannot load")
    with pytest.raises(Conflict, match="failed"):
        await store.set_alias(model_name, "production", 1)
    with pytest.raises(VersionNotFound, match="no ready version"):
        await store.resolve(model_name)


async def test_config_round_trip_and_validation(store, model_name) -> None:
    await add(store, model_name)
    config = ModelConfig(
        max_batch_size=32,
        max_queue_delay_microseconds=500,
        preferred_batch_size=[8, 16],
        instance_count=2,
        execution_providers=["CPUExecutionProvider"],
        graph_optimization_level="basic",
        timeout_ms=250,
        warmup=False,
    )
    updated = await store.update_config(model_name, 1, config)
    assert updated.config == config
    assert (await store.get_version(model_name, 1)).config == config
    with pytest.raises(BadRequest, match="preferred_batch_size"):
        await store.update_config(
            model_name, 1, ModelConfig(max_batch_size=4, preferred_batch_size=[8])
        )
    with pytest.raises(BadRequest, match="graph_optimization_level"):
        await store.update_config(model_name, 1, ModelConfig(graph_optimization_level="max"))
    assert merge_config(config, {"instance_count": 3}).instance_count == 3
    with pytest.raises(BadRequest, match="instance_count"):
        merge_config(config, {"instance_count": "many"})


async def test_batching_needs_dynamic_first_dimension(store, model_name) -> None:
    fixed = [TensorSpec(name="x", datatype="FP32", shape=[1, 4])]
    with pytest.raises(BadRequest, match="dynamic dimension 0"):
        await store.create_version(
            model_name,
            sha256="0" * 64,
            size=1,
            inputs=fixed,
            outputs=fixed,
            config=ModelConfig(max_batch_size=8),
        )
    created = await store.create_version(
        model_name, sha256="0" * 64, size=1, inputs=fixed, outputs=fixed, config=ModelConfig()
    )
    assert created.version == 1


async def test_loaded_capacity_state(store, model_name) -> None:
    await add(store, model_name)
    assert (await store.set_loaded(model_name, 1, False)).loaded is False
    card = {"batch_sizes": [1, 2], "latency_ms": [1.5, 2.0], "throughput": 900.0}
    assert (await store.set_capacity(model_name, 1, card)).capacity == card
    failed = await store.set_state(model_name, 1, "failed", "out of memory")
    assert (failed.state, failed.reason) == ("failed", "out of memory")
    with pytest.raises(BadRequest):
        await store.set_state(model_name, 1, "deleted")
    with pytest.raises(VersionNotFound):
        await store.set_loaded(model_name, 5, True)


async def test_traffic_split(store, model_name) -> None:
    await add(store, model_name)
    await add(store, model_name, seed="b")
    shares = await store.set_traffic(model_name, {1: 90, 2: 10})
    assert [(s.version, s.weight) for s in shares] == [(1, 90), (2, 10)]
    assert (await store.get_model(model_name)).traffic == shares
    with pytest.raises(BadRequest):
        await store.set_traffic(model_name, {1: 100})
    with pytest.raises(AliasInUse) as caught:
        await store.delete_version(model_name, 2)
    assert caught.value.in_traffic_split and caught.value.aliases == []
    await store.delete_version(model_name, 2, force=True)
    assert (await store.get_model(model_name)).traffic == []


async def test_sha256_in_use(store, model_name) -> None:
    v1 = await add(store, model_name, seed="shared-" + model_name)
    await add(store, model_name, seed="shared-" + model_name)
    await store.delete_version(model_name, 1)
    assert await store.sha256_in_use(v1.sha256)
    await store.delete_version(model_name, 2)
    assert not await store.sha256_in_use(v1.sha256)
