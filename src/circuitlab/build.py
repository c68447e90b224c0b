"""Build the data files: the corpus snapshot, the tokenizer and the token streams.

`python -m circuitlab.build snapshot | tokenizer | tokens`. The tokenizer is trained on the snapshot's training
files and as much synthetic text; the token streams (uint16 files in the git-ignored `data/cache/tokens`) hold
the snapshot's files and synthetic snippets, and are rebuilt whenever the tokenizer changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from circuitlab.checkpoint import write_atomic, write_text_atomic
from circuitlab.paths import CACHE_DIR
from circuitlab.snapshot import build_snapshot, iter_corpus_files
from circuitlab.synthetic import MIXES, generate_snippets, generate_text
from circuitlab.tokenizer import DEFAULT_TOKENIZER_PATH, DEFAULT_VOCAB_SIZE, load_tokenizer, train_tokenizer

TOKENS_DIR = CACHE_DIR / "tokens"
SPLITS = ("train", "val")
STREAM_NAMES = tuple(f"{source}/{split}" for source in ("real", *MIXES) for split in SPLITS)
SYNTHETIC_TOKENS = {"train": 4_000_000, "val": 200_000}
SYNTHETIC_SEEDS = {
    ("templates", "train"): 1,
    ("templates", "val"): 2,
    ("python", "train"): 3,
    ("python", "val"): 4,
    ("python_case_studies", "train"): 5,
    ("python_case_studies", "val"): 6,
    ("python_focus", "train"): 7,
    ("python_focus", "val"): 8,
}


def training_texts() -> list[str]:
    """What the shipped tokenizer is trained on: the corpus' training files and as much synthetic text."""
    real = [text for _, text in iter_corpus_files("train")]
    return real + [generate_text(sum(map(len, real)), seed=0)]


def build_tokenizer(out: Path = DEFAULT_TOKENIZER_PATH, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train the tokenizer on :func:`training_texts` and write it to ``out`` (byte-identical on every rebuild)."""
    tokenizer = train_tokenizer(training_texts(), vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(tokenizer.to_str(pretty=True) + "\n")
    return tokenizer


# ------------------------------------------------------------------------------------------ token streams


def stream_path(name: str) -> Path:
    """The file of the token stream ``name`` (one of `STREAM_NAMES`)."""
    return TOKENS_DIR / f"{name.replace('/', '_')}.bin"


def _encode_documents(tokenizer: Tokenizer, documents: list[str]) -> np.ndarray:
    """Token ids of the documents, each followed by the end-of-text id 0, as one uint16 array."""
    ids = []
    for encoding in tokenizer.encode_batch(documents, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(0)
    return np.asarray(ids, dtype=np.uint16)


def _synthetic_stream(tokenizer: Tokenizer, mix: str, split: str) -> np.ndarray:
    chunks, total, chunk = [], 0, 0
    while total < SYNTHETIC_TOKENS[split]:
        seed = SYNTHETIC_SEEDS[mix, split] * 100_000 + chunk
        ids = _encode_documents(tokenizer, generate_snippets(2000, seed, MIXES[mix]))
        chunks.append(ids)
        total += len(ids)
        chunk += 1
    return np.concatenate(chunks)[: SYNTHETIC_TOKENS[split]]


def build_token_streams(tokenizer_path: str | Path | None = None) -> dict:
    """Tokenise the real and synthetic text into uint16 files in data/cache/tokens; returns the metadata."""
    tokenizer_path = Path(tokenizer_path or DEFAULT_TOKENIZER_PATH)
    tokenizer = load_tokenizer(tokenizer_path)
    start = time.perf_counter()
    streams = {
        f"real/{split}": _encode_documents(tokenizer, [text for _, text in iter_corpus_files(split)])
        for split in SPLITS
    }
    streams |= {f"{mix}/{split}": _synthetic_stream(tokenizer, mix, split) for mix in MIXES for split in SPLITS}
    TOKENS_DIR.mkdir(parents=True, exist_ok=True)
    for name, ids in streams.items():  # renamed into place: a running job's memory map keeps the old file
        write_atomic(stream_path(name), ids.tofile)
    meta = {
        "tokenizer_sha256": hashlib.sha256(tokenizer_path.read_bytes()).hexdigest(),
        "tokens": {name: int(len(ids)) for name, ids in streams.items()},
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    write_text_atomic(TOKENS_DIR / "meta.json", json.dumps(meta, indent=1) + "\n")
    return meta


def token_streams_are_current(tokenizer_path: Path) -> bool:
    """Whether every token stream exists and was built with the tokenizer at ``tokenizer_path``."""
    meta_path = TOKENS_DIR / "meta.json"
    digest = hashlib.sha256(tokenizer_path.read_bytes()).hexdigest()
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return meta["tokenizer_sha256"] == digest and sorted(meta["tokens"]) == sorted(STREAM_NAMES)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the corpus snapshot, the tokenizer or the token streams.")
    parser.add_argument("command", choices=("snapshot", "tokenizer", "tokens"))
    parser.add_argument("--force", action="store_true", help="snapshot: replace an existing snapshot")
    parser.add_argument("--stdlib", type=Path, help="snapshot: standard library folder (default: this interpreter's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_TOKENIZER_PATH, help="tokenizer: where to write it")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="tokenizer: vocabulary size")
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        build_snapshot(args.stdlib, force=args.force)
    elif args.command == "tokenizer":
        tokenizer = build_tokenizer(args.out, args.vocab_size)
        print(f"wrote {args.out} ({tokenizer.get_vocab_size()} tokens)")
    else:
        print(json.dumps(build_token_streams()))


if __name__ == "__main__":
    main()
