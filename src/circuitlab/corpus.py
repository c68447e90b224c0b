"""The training text: a fixed snapshot of real Python (CPython's standard library), synthetic task-rich
snippets, their token streams, and a batch sampler that is a pure function of (seed, step).

The snapshot is `data/corpus/cpython-stdlib.tar.xz` with `MANIFEST.json` (every file's path, size, sha256
and split) and the PSF licence beside it; `python -m circuitlab.corpus snapshot` builds it from the running
interpreter's standard library. Token streams are derived files in `data/cache/` and are rebuilt whenever
the tokenizer changes (`python -m circuitlab.corpus tokens` builds them ahead of time).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import sysconfig
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from circuitlab.paths import CACHE_DIR, DATA_DIR

CORPUS_DIR = DATA_DIR / "corpus"
SNAPSHOT_PATH = CORPUS_DIR / "cpython-stdlib.tar.xz"
MANIFEST_PATH = CORPUS_DIR / "MANIFEST.json"
LICENSE_PATH = CORPUS_DIR / "LICENSE-PSF.txt"
TOKENS_DIR = CACHE_DIR / "tokens"

VAL_FRACTION = 0.05
SNAPSHOT_CHARS = 8_000_000  # about 2.7 M tokens with the 1024-token tokenizer
MAX_FILE_BYTES = 200_000
EXCLUDED_PARTS = {"test", "tests", "idlelib", "site-packages", "encodings", "turtledemo", "__pycache__"}
SYNTHETIC_TOKENS = {"train": 4_000_000, "val": 200_000}
SYNTHETIC_SEEDS = {"train": 1, "val": 2}
STREAM_NAMES = ("real/train", "real/val", "synthetic/train", "synthetic/val")


def file_split(path: str) -> str:
    """ "val" for a deterministic ~5% of files (by a hash of the path), else "train"."""
    digest = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    return "val" if digest < VAL_FRACTION * 2**64 else "train"


# ---------------------------------------------------------------------------------------------- snapshot


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
        "source": "CPython standard library (Lib/), selected by circuitlab.corpus.select_stdlib_files",
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
            f"No corpus manifest at {MANIFEST_PATH}; build it with: python -m circuitlab.corpus snapshot"
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
            data = archive.extractfile(member).read()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ValueError(
                    f"{member.name} does not match its sha256 in {MANIFEST_PATH.name}: the snapshot is corrupt"
                )
            yield member.name, data.decode("utf-8")


# ------------------------------------------------------------------------------------------ token streams


def _encode_documents(tokenizer, documents: list[str]) -> np.ndarray:
    """Token ids of the documents, each followed by the end-of-text id 0, as one uint16 array."""
    ids = []
    for encoding in tokenizer.encode_batch(documents, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(0)
    return np.asarray(ids, dtype=np.uint16)


def _synthetic_stream(tokenizer, split: str) -> np.ndarray:
    from circuitlab.synthetic import generate_snippets

    chunks, total, chunk = [], 0, 0
    while total < SYNTHETIC_TOKENS[split]:
        ids = _encode_documents(tokenizer, generate_snippets(2000, seed=SYNTHETIC_SEEDS[split] * 100_000 + chunk))
        chunks.append(ids)
        total += len(ids)
        chunk += 1
    return np.concatenate(chunks)[: SYNTHETIC_TOKENS[split]]


def build_token_streams(tokenizer_path: str | Path | None = None) -> dict:
    """Tokenise the real and synthetic text into uint16 files in data/cache/tokens; returns the metadata."""
    from circuitlab.tokenizer import DEFAULT_TOKENIZER_PATH, load_tokenizer

    tokenizer_path = Path(tokenizer_path or DEFAULT_TOKENIZER_PATH)
    tokenizer = load_tokenizer(tokenizer_path)
    start = time.perf_counter()
    streams = {
        f"real/{split}": _encode_documents(tokenizer, [text for _, text in iter_corpus_files(split)])
        for split in ("train", "val")
    }
    streams |= {f"synthetic/{split}": _synthetic_stream(tokenizer, split) for split in ("train", "val")}
    TOKENS_DIR.mkdir(parents=True, exist_ok=True)
    for name, ids in streams.items():
        ids.tofile(TOKENS_DIR / f"{name.replace('/', '_')}.bin")
    meta = {
        "tokenizer_sha256": hashlib.sha256(tokenizer_path.read_bytes()).hexdigest(),
        "tokens": {name: int(len(ids)) for name, ids in streams.items()},
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (TOKENS_DIR / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def load_token_streams(tokenizer_path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Memory-mapped uint16 token streams, keys `STREAM_NAMES`; built on first use or when the tokenizer changed."""
    from circuitlab.tokenizer import DEFAULT_TOKENIZER_PATH

    tokenizer_path = Path(tokenizer_path or DEFAULT_TOKENIZER_PATH)
    meta_path = TOKENS_DIR / "meta.json"
    digest = hashlib.sha256(tokenizer_path.read_bytes()).hexdigest()
    if not meta_path.is_file() or json.loads(meta_path.read_text())["tokenizer_sha256"] != digest:
        build_token_streams(tokenizer_path)
    return {
        name: np.memmap(TOKENS_DIR / f"{name.replace('/', '_')}.bin", dtype=np.uint16, mode="r")
        for name in STREAM_NAMES
    }


class TokenSampler:
    """Random context windows from the token streams; `batch(step, n)` depends only on (seed, step), so
    training resumes exactly and every distributed rank sees the same global batch."""

    def __init__(self, streams: dict[str, np.ndarray], split: str, n_ctx: int, synthetic_fraction: float, seed: int):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 <= synthetic_fraction <= 1:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {synthetic_fraction}")
        self.real, self.synthetic = streams[f"real/{split}"], streams[f"synthetic/{split}"]
        for name, stream in ((f"real/{split}", self.real), (f"synthetic/{split}", self.synthetic)):
            if len(stream) <= n_ctx:
                raise ValueError(f"n_ctx={n_ctx} is longer than the {name} stream ({len(stream)} tokens)")
        self.n_ctx, self.synthetic_fraction, self.seed = n_ctx, synthetic_fraction, seed

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step])
        from_synthetic = rng.random(batch_size) < self.synthetic_fraction
        offsets = np.arange(self.n_ctx)
        rows = np.empty((batch_size, self.n_ctx), dtype=np.int64)
        for use_synthetic, stream in ((False, self.real), (True, self.synthetic)):
            chosen = np.flatnonzero(from_synthetic == use_synthetic)
            starts = rng.integers(0, len(stream) - self.n_ctx, size=len(chosen))
            rows[chosen] = stream[starts[:, None] + offsets]
        return torch.from_numpy(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the corpus snapshot or its token streams.")
    parser.add_argument("command", choices=("snapshot", "tokens"))
    parser.add_argument("--force", action="store_true", help="replace an existing snapshot")
    parser.add_argument("--stdlib", type=Path, help="standard library folder (default: this interpreter's)")
    args = parser.parse_args()
    if args.command == "snapshot":
        build_snapshot(args.stdlib, force=args.force)
    else:
        print(json.dumps(build_token_streams()))


if __name__ == "__main__":
    main()
