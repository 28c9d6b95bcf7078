"""Models shared through the blob store (`models/` in the bucket), as the original kept them:
`smap-stt models push` uploads a model directory; a worker asked for a model it lacks fetches,
verifies and caches it (models on this machine's disk: local_models.py).

Layout: `models/<name>/<file>` for each file, then `models/<name>/manifest.json` (sizes and
sha256 of every file) written last, so a half-pushed model is never offered."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from smap_stt.blobs.base import BlobStore
from smap_stt.errors import BlobNotFound, ModelCorrupt, ModelNotFound
from smap_stt.stt.local_models import available_models, is_model_dir

log = logging.getLogger(__name__)

PREFIX = "models/"
MANIFEST = "manifest.json"
_BLOCK = 8 * 1024 * 1024


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _manifest(directory: Path) -> dict[str, dict[str, int | str]]:
    # Hidden files are bookkeeping (the bundled model's `.smap-stt-verified.json` marker),
    # not part of the model, and a fetch refuses such names.
    return {
        path.name: {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(directory.iterdir())
        if path.is_file() and not path.name.startswith(".")
    }


async def push(blobs: BlobStore, models_dir: Path, name: str) -> int:
    """Upload `models_dir/name`; returns the bytes uploaded."""
    directory = models_dir / name
    if not is_model_dir(directory):
        raise ModelNotFound(
            f"{directory} is not a complete model directory "
            "(model.bin, config.json, tokenizer.json)"
        )
    manifest = await asyncio.to_thread(_manifest, directory)
    for filename in manifest:
        await blobs.put_file(f"{PREFIX}{name}/{filename}", directory / filename)
    await blobs.put_bytes(
        f"{PREFIX}{name}/{MANIFEST}", json.dumps(manifest).encode(), content_type="application/json"
    )
    return sum(int(entry["size"]) for entry in manifest.values())


async def remote_models(blobs: BlobStore) -> list[str]:
    keys = await blobs.list_keys(PREFIX)
    return sorted(
        {key[len(PREFIX) :].split("/")[0] for key in keys if key.endswith(f"/{MANIFEST}")}
    )


async def all_models(blobs: BlobStore, models_dir: Path) -> list[str]:
    """Every model name a job may ask for: local, bundled, or in the blob store."""
    local = await asyncio.to_thread(available_models, models_dir)
    return sorted({*local, *await remote_models(blobs)})


async def ensure_local(
    blobs: BlobStore, models_dir: Path, name: str, *, allow_download: bool = False
) -> None:
    """Make `name` loadable from `models_dir`, fetching it from the blob store if needed.

    Raises ModelNotFound when it is in neither place (unless `allow_download`: then the
    engine may still fetch it from the hub), ModelCorrupt when a fetched file does not match
    the manifest, BackendUnavailable when the blob store does not answer.
    """
    if name in await asyncio.to_thread(available_models, models_dir):
        return
    try:
        manifest = json.loads(await blobs.get_bytes(f"{PREFIX}{name}/{MANIFEST}"))
    except BlobNotFound:
        if allow_download:
            return
        local = ", ".join(await asyncio.to_thread(available_models, models_dir))
        raise ModelNotFound(
            f"model {name!r} is neither installed (available: {local}) nor in "
            "the blob store (push it with `smap-stt models push NAME`)"
        ) from None
    log.info("fetching model %s from the %s blob store", name, blobs.name)
    started = time.monotonic()
    staging = models_dir / f".fetch-{name}-{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.to_thread(staging.mkdir, parents=True)
        size = 0
        for filename, expected in manifest.items():
            if "/" in filename or filename.startswith("."):
                raise ModelCorrupt(f"model {name!r}: bad file name {filename!r} in its manifest")
            target = staging / filename
            await blobs.get_file(f"{PREFIX}{name}/{filename}", target)
            actual = await asyncio.to_thread(_sha256, target)
            if actual != expected["sha256"] or target.stat().st_size != expected["size"]:
                raise ModelCorrupt(
                    f"model {name!r} failed verification: {filename} does not "
                    "match its manifest (push it again)"
                )
            size += int(expected["size"])
        if not is_model_dir(staging):
            raise ModelCorrupt(
                f"model {name!r} in the blob store is incomplete: it needs "
                "model.bin, config.json and tokenizer.json (push it again)"
            )
        await asyncio.to_thread(_publish, staging, models_dir / name)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)
    log.info(
        "fetched model %s (%.1f MB, verified) in %.1f s",
        name,
        size / 1e6,
        time.monotonic() - started,
    )


def _publish(staging: Path, final: Path) -> None:
    """Rename the verified directory into place. Another worker sharing the models directory
    may have won the race: its copy, verified the same way, is as good as ours."""
    try:
        os.rename(staging, final)
    except OSError as exc:
        if not is_model_dir(final):
            raise ModelCorrupt(
                f"cannot install model {final.name!r}: {final} exists and is not "
                f"a complete model directory ({exc}); remove it"
            ) from exc
