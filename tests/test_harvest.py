"""Harvesting natural task instances from real code: each harvester on hand-written code (what it must find and
what it must not), the candidates, token boundaries, and the tasks left out."""

import pytest

from circuitlab import tasks
from circuitlab.tasks.harvest.scan import Code
from circuitlab.tokenizer import DEFAULT_TOKENIZER_PATH, load_tokenizer, pretokenize

NOT_HARVESTED = {"var_swap", "set_or_string_fixedvarname"}


@pytest.fixture(scope="module")
def tokenizer():
    if not DEFAULT_TOKENIZER_PATH.exists():
        pytest.skip(f"{DEFAULT_TOKENIZER_PATH} does not exist yet; build it with python -m circuitlab.build tokenizer")
    return load_tokenizer()


def last_line(prompt: str) -> str:
    """The prompt's last line, with its newline if the prompt ends with one."""
    return prompt[prompt.rfind("\n", 0, len(prompt) - 1) + 1 :]


def found(name: str, source: str) -> list[tuple[str, str, str]]:
    """(last line of the prompt, target, alternative) for each instance harvested from ``source``."""
    points = tasks.harvest_source(name, source)
    assert all(source.startswith(p.prompt) for p in points)
    return [(last_line(p.prompt), p.target, p.alternative) for p in points]


SOURCE = """import os


def collect(items):
    name = "hello world"
    other = 'ends with a dot.'
    seen = set()
    text = ""
    count = 0
    for x in items:
        seen.add(x)
        text += x
        count += 1
    matrix = [[1, 2], [3, 4]]
    flat = [1, 2, c]
    pick = table[k]
    nested = [
        [1, 2],
        [3, x]]
    return seen
"""

# Each case: a task, code in which it must find exactly the listed instances, and near misses it must skip
# (named in the comment after the code).
CASES = {
    "single_double_quote": (SOURCE, [('    name = "hello world', '"\n', "'\n")]),  # a string ending in "."
    "bracket_counting": (
        SOURCE,
        [
            ("    matrix = [[1, 2], [3, 4", "]]\n", "]\n"),
            ("    flat = [1, 2, c", "]\n", "]]\n"),
            ("        [3, x", "]]\n", "]\n"),
        ],  # the subscript table[k], a bracket closing its own line
    ),
    "set_or_string": (SOURCE, [("        seen", ".add", " +="), ("        text", " +=", ".add")]),  # count: an int
    "fstring_brace": (
        """def report(name, count):
    print(f"found {count} files in {name}")
    print("all done")
    print(f"{name} ok")
    print('single quoted')
    log("total is {}".format(count))
""",  # a placeholder after a quote, an f-string's end, single quotes, a string ending in `}`
        [
            ('    print(f"found', " {", '")\n'),
            ('    print(f"found {count} files in', " {", '")\n'),
            ('    print("all done', '")\n', " {"),
        ],
    ),
    "bracket_brace": (
        """CONFIG = {"name": "demo", "tags": ["alpha", "beta"], 'single': 1}\n""",  # a value, a last element, 'single'
        [
            ('CONFIG = {"name', '":', '",'),
            ('CONFIG = {"name": "demo", "tags', '":', '",'),
            ('CONFIG = {"name": "demo", "tags": ["alpha', '",', '":'),
        ],
    ),
    "class_init": (
        """class Point:
    def __init__(self, name, value, size):
        self.name = name
        self.value = value
        self.label = name

    def rename(self, name):
        self.name = name
""",  # self.label = name, and self.name = name outside __init__
        [("        self.name =", " name", " value"), ("        self.value =", " value", " name")],
    ),
    "with_as": (
        """with open(path) as f:
    data = f.read()
out = open(target)
log = open(path, "w")
fd = os.open(path)
with open(path):
    pass
""",  # a mode string before `)`, os.open, a with without `as`
        [("with open(path", ")", ")\n"), ("out = open(target", ")\n", ")")],
    ),
    "with_open": (
        """with open(source, 'r') as f:
    text = f.read()
with open(target, mode="w") as f:
    f.write(text)
with open(target, "wb") as f:
    pass
data = gzip.open(source, "r")
""",  # the mode "wb" (one token), gzip.open
        [("with open(source, '", "r", "w"), ('with open(target, mode="', "w", "r")],
    ),
    "for_while": (
        """for item in items:
    total += item
for key, value in pairs:
    pass
while running:
    step()
while count > 0:
    count -= 1
""",  # two loop names, a comparison after while
        [("for item", " in", ":\n"), ("while running", ":\n", " in")],
    ),
    "else_elif": (
        """if a:
    x = 1
elif not b:
    x = 2
elif c:
    x = 3
else:
    x = 4
y = 1 if a else 2
""",  # elif c, a ternary's else
        [("elif", " not", ":\n"), ("else", ":\n", " not")],
    ),
    "if_ternary": (
        """if ready:
    go()
value = left if flag else right
if check(x):
    pass
if a: b()
""",  # a condition ending in `)`, a body on the header's line
        [("if ready", ":\n", " "), ("value = left if flag", " ", ":\n")],
    ),
    "indent_for": (
        """def total(rows):
    for row in rows:
        yield row
    for row in rows: pass


class Table:
    def rows(self):
        for row in self.data:
            yield row


for line in lines:
    print(line)
for line in lines:  # a comment
    pass
""",  # a body on the header's line, a loop at column 8, a comment after the colon
        [("    for row in rows:\n", "        ", "    "), ("for line in lines:\n", "    ", "        ")],
    ),
    "lambda_func": (
        """key = lambda item: item[0]
pair = lambda a, b: a
def reset():
    pass
def run(self):
    pass
""",  # a lambda of two parameters, a def with one
        [("key = lambda item", ":", "():\n"), ("def reset", "():\n", ":")],
    ),
    "if_equals": (
        """count = 0
if count == 0:
    count += 1
if count is None:
    pass
a = b = 2
self.x = 1
""",  # is, a chained assignment, an attribute
        [("count", " =", " =="), ("if count", " ==", " =")],
    ),
    "enumerate_range": (
        """for i in range(10):
    pass
for i, x in enumerate(xs):
    pass
for x in sorted(xs):
    pass
for i in self.range(3):
    pass
""",  # another function, a method called range
        [("for i in", " range", " enumerate"), ("for i, x in", " enumerate", " range")],
    ),
    "var_if": (
        """done = False
if done == True:
    pass
if done is False:
    pass
if done:
    pass
x = y = True
self.ok = True
flag = True  # a comment
""",  # a bare condition, a chained assignment, an attribute, a comment after the value
        [("done = False", "\n", ":\n"), ("if done == True", ":\n", "\n"), ("if done is False", ":\n", "\n")],
    ),
    "while_return_true": (
        """def poll():
    while True:
        if ready():
            return True
        wait()
    return True

def other():
    return True  # always
""",  # a blank line after the value (one token: two newlines), a comment after it
        [("    while True", ":\n", "\n"), ("            return True", "\n", ":\n")],
    ),
    "final_kwarg": (
        """def f(a, b=None, c=None):
    return a


def g(a, b):
    return b


def h(a, b=0, c=1, *, d):
    pass
""",  # the first default (no rule decides it), a default other than None, a keyword-only parameter
        [("def f(a, b=None, c", "=None", "):\n"), ("def g(a, b", "):\n", "=None")],
    ),
}


def test_every_paper_task_but_two_is_harvested_and_each_has_a_case():
    assert set(tasks.HARVESTED) == set(tasks.PAPER_TASKS) - NOT_HARVESTED
    assert list(tasks.HARVESTED) == [name for name in tasks.PAPER_TASKS if name in tasks.HARVESTED]
    assert set(CASES) == set(tasks.HARVESTED)


@pytest.mark.parametrize("name", sorted(CASES))
def test_harvester_finds_its_instances_and_skips_near_misses(name):
    source, expected = CASES[name]
    assert found(name, source) == expected


@pytest.mark.parametrize("name", tasks.HARVESTED)
def test_harvested_answers_are_the_tasks_candidates_and_end_on_token_boundaries(tokenizer, name):
    candidates = tasks.get(name).candidates
    points = tasks.harvest(name, "train", limit=20)
    assert points, f"no natural instance of {name} in the train split"
    assert {(p.target, p.alternative) for p in points} <= {candidates, candidates[::-1]}
    tasks.make_batch(tokenizer, points, n_ctx=128)  # checks single tokens and token boundaries


def test_pretokens_follow_the_tokenizers_splitting_rule():
    text = CASES["indent_for"][0] + CASES["fstring_brace"][0] + SOURCE + "x = 'é' if a else b\n\n\n"
    assert list(Code(text).pretokens.values()) == pretokenize(text)


def test_the_ternary_candidate_is_the_first_token_of_else(tokenizer):
    assert tokenizer.encode(" else", add_special_tokens=False).tokens == ["Ġ", "else"]


def test_harvest_skips_unparsable_code():
    assert tasks.harvest_source("set_or_string", "def f(:\n") == []
    assert tasks.harvest_source("else_elif", "x = 1\0\n") == []


@pytest.mark.parametrize("name", sorted(NOT_HARVESTED | {"bool_flip"}))
def test_a_task_without_a_harvester_is_a_clear_error(name):
    with pytest.raises(ValueError, match=f"task '{name}' has no harvester; natural instances exist for"):
        tasks.harvest_source(name, SOURCE)
