"""Artifact integrity: atomic writes, and checksums recorded at save and verified at load.

Every artifact file is written under a temporary name in the same folder, flushed to disk and
renamed over the final name, so a crash leaves either the old file or the new one, never half
of one. The manifest that records the files' SHA-256 checksums (meta.json of a trained
artifact, serving.json of its serving folder) is written last: a save interrupted between
files leaves checksums that no longer match, and the load refuses it with a clear error
instead of serving a model mixed from two trainings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKSUMS_KEY = "checksums"
_CHUNK = 1 << 20


class ArtifactError(ValueError):
    """An artifact that is missing files, corrupt, truncated or from an incompatible version."""


# The two remedies, worded once: every command and the service say the same thing, and each
# names a command that fixes what it is said about (`starsrec index` cannot mend a model).
def retrain_remedy(root: str | Path) -> str:
    """How to fix a trained model that is damaged, missing or of another format."""
    return f"retrain it with `starsrec train DATA_DIR --out {root}`"


def reindex_remedy(root: str | Path) -> str:
    """How to fix an artifact's serving files (`serving/`) that are damaged, missing, of
    another format or built for another training."""
    return f"rebuild its serving files with `starsrec index {root}`"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends
    without an error (after an fsync), removed otherwise."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:  # the bytes reach the disk before the rename
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(temporary_path)`, then move the result onto `path` atomically."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def write_json_atomic(path: str | Path, record: dict) -> Path:
    """`record` as indented JSON at `path`, atomically."""
    return write_atomic(path, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(root: str | Path, names: Iterable[str]) -> dict[str, str]:
    """{relative name: SHA-256} of the files `names` under `root`."""
    return {name: sha256_file(Path(root) / name) for name in sorted(names)}


def verify(root: str | Path, manifest: dict, manifest_name: str, remedy: str) -> None:
    """Check every file the `manifest`'s checksums name under `root`; raise ArtifactError
    naming the first missing or changed file and how to fix it (`remedy`)."""
    recorded = manifest.get(CHECKSUMS_KEY)
    if recorded is None:  # written before checksums existed: loadable, but say so once
        logger.warning("%s has no checksums: its files cannot be verified (%s)", root, remedy)
        return
    for name, expected in recorded.items():
        path = Path(root) / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing ({manifest_name} lists it): {remedy}")
        if sha256_file(path) != expected:
            raise ArtifactError(
                f"{path} does not match the checksum in {manifest_name} (corrupt, truncated "
                f"or written by an interrupted save): {remedy}"
            )


def read_manifest(path: str | Path, remedy: str) -> dict:
    """A manifest JSON file, or ArtifactError when it is missing or unreadable."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: {remedy}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path} is unreadable ({error}): {remedy}") from None
    if not isinstance(record, dict):
        raise ArtifactError(f"{path} is not a JSON object: {remedy}")
    return record
