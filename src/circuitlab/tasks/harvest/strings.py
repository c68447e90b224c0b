"""Natural instances of the string tasks: which quote closes a string, whether a placeholder comes."""

from __future__ import annotations

import ast
import tokenize
from collections.abc import Iterator

from circuitlab.tasks.harvest.scan import Code, Cut, harvests

_STRING_ENDS = {tokenize.STRING} | ({tokenize.FSTRING_END} if hasattr(tokenize, "FSTRING_END") else set())


def _string_closings(code: Code) -> Iterator[tuple[int, str, bool]]:
    """(offset of the closing quote, the quote, whether an f-string) for each string written on one line between
    single quote characters whose text ends with a word."""
    for token in code.tokens:
        if token.type not in _STRING_ENDS or token.start[0] != token.end[0]:
            continue
        quote = token.string[-1]
        close = code.offset(*token.end) - 1
        if not token.string.endswith(quote * 3) and code.after_word(close):
            prefix = token.string[: token.string.index(quote)]
            yield close, quote, token.type != tokenize.STRING or "f" in prefix.lower()


@harvests("single_double_quote")
def _quote_closing_a_line(code: Code) -> Iterator[Cut]:
    """A string that ends its line: closed by the quote that opened it."""
    for close, quote, _ in _string_closings(code):
        yield close, "'\"".index(quote)


@harvests("fstring_brace")
def _placeholder_or_string_end(code: Code) -> Iterator[Cut]:
    """A word then ` {` opening a placeholder in a one-line f-string; a word then `")` and the line's end in a
    plain double-quoted string."""
    for joined in code.nodes(ast.JoinedStr):
        if joined.lineno != joined.end_lineno:
            continue  # (before Python 3.12, parts of multi-line f-strings may be misplaced)
        for placeholder in (part for part in joined.values if isinstance(part, ast.FormattedValue)):
            space = code.start(placeholder.value) - 2  # where ` {` starts, if the expression follows `{` at once
            if code.text.startswith(" {", space) and code.after_word(space):
                yield space, 0
    for close, quote, is_fstring in _string_closings(code):
        if quote == '"' and not is_fstring:
            yield close, 1
