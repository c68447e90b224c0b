"""Golden hashes of the generated text: synthetic snippets, every task's pairs, the tokenizer and its encoding.

The shipped tokenizer, token streams, models and circuits were made from this text, so moving code must leave
it byte-identical. A hash that changes on purpose is updated in the same commit, which says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from circuitlab import synthetic, tasks
from circuitlab.build import training_texts
from circuitlab.paths import CHECKPOINTS_DIR
from circuitlab.tokenizer import DEFAULT_TOKENIZER_PATH, load_tokenizer, train_tokenizer


def digest(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def snippets_digest(seed: int) -> str:
    return digest("\0".join(synthetic.generate_snippets(300, seed)))


def text_digest() -> str:
    return digest(synthetic.generate_text(300_000, seed=0))


def pairs_digest(name: str) -> str:
    task = tasks.get(name)
    pairs = task.pairs("test", 25) + task.pairs("train", 25, seed=1)
    return digest(json.dumps([[dataclasses.astuple(point) for point in pair] for pair in pairs]))


ENCODED_TEXT = "\n\n".join(
    [
        'def f(x, y=None):\n    s = set()\n    t = ""\n    s.add(x)\n    t += "a"\n    return [[1, 2], [3]]\n',
        "with open(path, 'r') as fh:\n    for i, line in enumerate(fh):\n        print(f\"{i}: {line}\")\n",
        "x = lambda k: k if k else None\nwhile True:\n    x, y = y, x\n",
    ]
)


def encoding_digest() -> str:
    """Token ids of a fixed text and of 100 synthetic snippets under the shipped tokenizer."""
    texts = [ENCODED_TEXT, *synthetic.generate_snippets(100, seed=5)]
    encodings = load_tokenizer().encode_batch(texts, add_special_tokens=False)
    return digest(json.dumps([encoding.ids for encoding in encodings]))


def file_digest(path) -> str:
    return digest(path.read_bytes())


# Seed 0 makes the tokenizer's synthetic text; 100_000 + chunk and 200_000 + chunk the train and val streams.
SNIPPETS = {
    0: "1592403f3df985d7",
    100_000: "9ad02ea8e562191a",
    100_001: "9431b0e0fa2c8acd",
    200_000: "c05d797784a2a7b5",
}
TEXT = "1793349daf1bb421"
TASK_PAIRS = {
    "single_double_quote": "454e544971d716b7",
    "final_kwarg": "0260ec032f05062c",
    "set_or_string": "6d155323c5cbec66",
    "set_or_string_fixedvarname": "ad2b28f7d0aa2f78",
    "class_init": "19cadda1b15b60ef",
    "with_as": "43897631ab6be1c2",
    "bracket_brace": "4f0ed25e5a3989d4",
    "with_open": "ff071c97ef640c0c",
    "bracket_counting": "223127ac28eeb926",
    "for_while": "64a0651dffbb1767",
    "else_elif": "f403b5eea83b16a9",
    "fstring_brace": "0110a02a342658ce",
    "if_ternary": "d1f5fc68362574e8",
    "var_swap": "ce938a5e120038bb",
    "indent_for": "b764bd40c8a83343",
    "lambda_func": "34db66bede37c19e",
    "if_equals": "52265bf5545af6ff",
    "enumerate_range": "29ebdc59c2c85d84",
    "var_if": "25f20cecc28b88b2",
    "while_return_true": "53b793797a9b631c",
    "paren_counting": "02c9d8356fb0bdde",
    "close_tuple_or_list": "0304e683b0b4b83f",
    "close_set_or_list": "37001f84fc378aa9",
    "paren_colon": "774d58ef21ab2a0b",
    "condition_colon": "a74dacd54968c67a",
    "dict_or_set_key": "3b7c72b16507c489",
    "quote_in_call": "4cd045e9b2807537",
    "quote_in_list": "f3eb930eced416c8",
    "bool_flip": "489e0de980aabf9d",
    "compare_or_assign": "9af0ae9cf7000e43",
    "for_in_or_assign": "3f523e3694848f20",
    "self_or_cls": "af067ce5ac66b739",
    "from_import_or_as": "47d527d9e1101e6a",
    "dict_items_unpack": "48ea5e7024ed2900",
    "call_arity": "8e0154556c3f1e74",
    "set_or_string_one_var": "5b6dd8d957e632c9",
    "set_or_string_fixedvarname_one_var": "fbd08a3acfb0ed5e",
    "list_or_set": "9e6338257f8082f4",
    "int_or_list": "1c6340dbfcadb936",
    "list_or_dict": "35f23d9cf1e75c88",
}
ENCODING = "6797ef3a37171758"
TOKENIZER_FILE = "0d0a5cb4f7be6e44"


@pytest.mark.parametrize("seed", SNIPPETS)
def test_synthetic_snippets_are_unchanged(seed):
    assert snippets_digest(seed) == SNIPPETS[seed]


def test_synthetic_text_is_unchanged():
    assert text_digest() == TEXT


@pytest.mark.parametrize("name", TASK_PAIRS)
def test_task_pairs_are_unchanged(name):
    assert pairs_digest(name) == TASK_PAIRS[name]


def test_the_shipped_tokenizer_and_its_encoding_are_unchanged():
    assert file_digest(DEFAULT_TOKENIZER_PATH) == TOKENIZER_FILE
    for model in ("sparse", "dense"):  # the checkpoints keep a compact copy of the same tokenizer
        assert load_tokenizer(CHECKPOINTS_DIR / model / "tokenizer.json").to_str() == load_tokenizer().to_str()
    assert encoding_digest() == ENCODING


@pytest.mark.slow
def test_rebuilding_the_tokenizer_gives_the_shipped_file():
    rebuilt = train_tokenizer(training_texts())
    assert rebuilt.to_str(pretty=True) + "\n" == DEFAULT_TOKENIZER_PATH.read_text()
