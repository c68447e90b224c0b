"""The real code in the corpus: a fixed snapshot of CPython's standard library, with its manifest and licence.

The snapshot is `data/corpus/cpython-stdlib.tar.xz` with `MANIFEST.json` (every file's path, size, sha256 and
split) and the PSF licence beside it; `python -m circuitlab.build snapshot` builds it from the running
interpreter's standard library.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import sysconfig
import tarfile
from collections.abc import Iterator
from pathlib import Path

from circuitlab.paths import DATA_DIR

CORPUS_DIR = DATA_DIR / "corpus"
SNAPSHOT_PATH = CORPUS_DIR / "cpython-stdlib.tar.xz"
MANIFEST_PATH = CORPUS_DIR / "MANIFEST.json"
LICENSE_PATH = CORPUS_DIR / "LICENSE-PSF.txt"

VAL_FRACTION = 0.05
SNAPSHOT_CHARS = 8_000_000  # about 2.7 M tokens with the 1024-token tokenizer
MAX_FILE_BYTES = 200_000
EXCLUDED_PARTS = {"test", "tests", "idlelib", "site-packages", "encodings", "turtledemo", "__pycache__"}


def file_split(path: str) -> str:
    """ "val" for a deterministic ~5% of files (by a hash of the path), else "train"."""
    digest = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    return "val" if digest < VAL_FRACTION * 2**64 else "train"


def select_stdlib_files(stdlib: Path, max_chars: int = SNAPSHOT_CHARS) -> list[tuple[str, bytes]]:
    """Sorted .py files of the standard library (no tests, no IDLE, no big or non-UTF-8 files) up to max_chars."""
    chosen, total = [], 0
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib).as_posix()
        if EXCLUDED_PARTS & set(Path(relative).parts[:-1]) or path.stat().st_size > MAX_FILE_BYTES:
            continue
        data = path.read_bytes()
        try:
            total += len(data.decode("utf-8"))
        except UnicodeDecodeError:
            continue
        chosen.append((relative, data))
        if total >= max_chars:
            break
    return chosen


def build_snapshot(stdlib: Path | None = None, force: bool = False) -> None:
    """Write the snapshot, its manifest and licence; refuses to replace an existing snapshot unless `force`."""
    if SNAPSHOT_PATH.exists() and not force:
        raise FileExistsError(f"{SNAPSHOT_PATH} exists; pass --force to rebuild it (the shipped models used it).")
    stdlib = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = select_stdlib_files(stdlib)
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for relative, data in files:
            info = tarfile.TarInfo(relative)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    SNAPSHOT_PATH.write_bytes(lzma.compress(buffer.getvalue(), preset=9))
    manifest = {
        "source": "CPython standard library (Lib/), selected by circuitlab.snapshot.select_stdlib_files",
        "python_version": sysconfig.get_python_version(),
        "licence": "Python Software Foundation License Version 2 (LICENSE-PSF.txt)",
        "files": [
            {"path": p, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest(), "split": file_split(p)}
            for p, d in files
        ],
    }
    MANIFEST_PATH.write_text(json.dumps(manifest, indent=1) + "\n")
    licence = stdlib / "LICENSE.txt"
    if licence.is_file():
        LICENSE_PATH.write_text(licence.read_text())
    print(f"wrote {SNAPSHOT_PATH} ({len(files)} files, {SNAPSHOT_PATH.stat().st_size / 1e6:.1f} MB)")


def load_manifest() -> dict:
    if not MANIFEST_PATH.is_file():
        raise FileNotFoundError(
            f"No corpus manifest at {MANIFEST_PATH}; build it with: python -m circuitlab.build snapshot"
        )
    return json.loads(MANIFEST_PATH.read_text())


def iter_corpus_files(split: str = "train") -> Iterator[tuple[str, str]]:
    """(path, source) of every snapshot file in `split` ("train", "val" or "all"), each checked against the
    manifest's sha256 so a corrupt snapshot fails loudly."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    entries = {entry["path"]: entry for entry in load_manifest()["files"]}
    try:
        archive_bytes = lzma.decompress(SNAPSHOT_PATH.read_bytes())
    except (lzma.LZMAError, OSError) as err:
        raise ValueError(f"{SNAPSHOT_PATH} is unreadable ({err}); restore it from git or rebuild the snapshot") from err
    with tarfile.open(fileobj=io.BytesIO(archive_bytes)) as archive:
        for member in archive:
            entry = entries.get(member.name)
            if entry is None:
                raise ValueError(f"{member.name} is in the snapshot but not in {MANIFEST_PATH.name}")
            if split != "all" and entry["split"] != split:
                continue
            handle = archive.extractfile(member)
            if handle is None:
                raise ValueError(f"{member.name} in the snapshot is not a regular file")
            data = handle.read()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ValueError(
                    f"{member.name} does not match its sha256 in {MANIFEST_PATH.name}: the snapshot is corrupt"
                )
            yield member.name, data.decode("utf-8")
