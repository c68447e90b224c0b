"""The tinypython pre-tokenizer: its splitting rule, and that the shipped BPE never merges across it."""

import itertools

import pytest

from circuitlab.synthetic import generate_text
from circuitlab.tokenizer import load_tokenizer, pretokenize


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("x.add(y)\n", ["x", ".add", "(y", ")\n"]),  # one non-letter, then letters
        ("s += 'a')\n", ["s", " +=", " '", "a", "')\n"]),  # a space, punctuation, trailing newlines
        ("x = [[1, 2]]\n\n", ["x", " =", " [[", "1", ",", " ", "2", "]]\n\n"]),
        ("n = 12345", ["n", " =", " ", "123", "45"]),  # at most three digits
        ("if x:\n\n        return", ["if", " x", ":\n\n", "        ", "return"]),  # indentation on its own
    ],
)
def test_pretokens_follow_the_tinypython_rule(text, pieces):
    assert pretokenize(text) == pieces


def test_the_shipped_tokenizer_never_merges_across_pretokens():
    text = generate_text(3000, seed=0)
    pieces = pretokenize(text)
    assert "".join(pieces) == text
    pretoken_starts = set(itertools.accumulate((len(piece) for piece in pieces[:-1]), initial=0))
    token_starts = {start for start, _ in load_tokenizer().encode(text).offsets}
    assert pretoken_starts <= token_starts
    assert len(token_starts) > len(pretoken_starts)  # and BPE does split some pre-tokens further
