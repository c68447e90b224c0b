"""A byte-level BPE tokenizer for Python, with the paper's `tinypython` pre-tokenizer.

Pre-tokens (BPE never merges across them), in the order the pattern tries them:

1. an optional single non-letter character followed by a run of letters: `.add`, `(n`, ` foo`;
2. one to three digits;
3. an optional space, a run of punctuation, then any trailing newlines: `]]\\n`, ` +=`, `')\\n`, `"\\n`;
4. a run of newlines;
5. a run of other whitespace (indentation).

So the tokens a task asks about can be single tokens, and a prompt that stops right before one of them
tokenises exactly like the same code with the answer written out. Rebuild with `python -m circuitlab.build tokenizer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from circuitlab.paths import DATA_DIR

DEFAULT_TOKENIZER_PATH = DATA_DIR / "tokenizer.json"
DEFAULT_VOCAB_SIZE = 1024
EOT = "<|endoftext|>"  # id 0: separates documents; also the BOS and padding token

PRETOKENIZE_PATTERN = r"[^A-Za-z\n]?[A-Za-z]+|[0-9]{1,3}| ?[^\sA-Za-z0-9]+\n*|\n+|\s+"


def new_tokenizer() -> Tokenizer:
    """An untrained tokenizer with the tinypython pre-tokenizer and a byte-level decoder."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train the BPE merges on `texts` (deterministic: the same texts give the same tokenizer)."""
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    path = Path(path or DEFAULT_TOKENIZER_PATH)
    if not path.is_file():
        raise FileNotFoundError(
            f"No tokenizer at {path}. Build it from the corpus with: python -m circuitlab.build tokenizer"
        )
    return Tokenizer.from_file(str(path))


def pretokenize(text: str) -> list[str]:
    """The pre-tokens of `text` (before BPE), for showing and testing the splitting rule."""
    return [piece for piece, _ in pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), "isolated").pre_tokenize_str(text)]
