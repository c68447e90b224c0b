"""Binary next-token tasks on Python code: contrast pairs, disjoint splits, the paper's task loss, harvesting.

One module per job: :mod:`~circuitlab.tasks.core` is the framework (``Task``, splits, batches, task loss,
registry), :mod:`~circuitlab.tasks.codegen` the code vocabulary and line generators that prompts and the
synthetic corpus share, one module per task family defines and registers its tasks, and
:mod:`~circuitlab.tasks.harvest` finds natural instances in the corpus snapshot. Importing the package
registers every task: the paper's twenty (``PAPER_TASKS``, the suite circuit sizes are averaged over) and the
extras; ``names()`` lists them all, the twenty first.
"""

from circuitlab.tasks import brackets, control, definitions, strings, syntax, variables  # noqa: F401  (register)
from circuitlab.tasks.brackets import nested
from circuitlab.tasks.codegen import (
    CALLABLES,
    CLASSES,
    FUNCTIONS,
    INDENT,
    MODULES,
    VARIABLES,
    WORDS,
    atom,
    following,
    frame,
    lead,
    literal,
    pick_name,
    sentence,
    statement,
    statements,
)
from circuitlab.tasks.core import (
    MAX_DRAWS_PER_PAIR,
    PAPER_TASKS,
    RENAMED,
    SPLITS,
    TEST_PROMPT_FRACTION,
    Datapoint,
    Instance,
    Sampler,
    Task,
    TaskBatch,
    define_task,
    get,
    make_batch,
    names,
    pair_split,
    prompt_split,
    register,
    relabelled,
    same_rest,
    task_accuracy,
    task_loss,
    with_random_labels,
)
from circuitlab.tasks.harvest import harvest, harvest_source

__all__ = [
    "CALLABLES",
    "CLASSES",
    "FUNCTIONS",
    "INDENT",
    "MAX_DRAWS_PER_PAIR",
    "MODULES",
    "PAPER_TASKS",
    "RENAMED",
    "SPLITS",
    "TEST_PROMPT_FRACTION",
    "VARIABLES",
    "WORDS",
    "Datapoint",
    "Instance",
    "Sampler",
    "Task",
    "TaskBatch",
    "atom",
    "define_task",
    "following",
    "frame",
    "get",
    "harvest",
    "harvest_source",
    "lead",
    "literal",
    "make_batch",
    "names",
    "nested",
    "pair_split",
    "pick_name",
    "prompt_split",
    "register",
    "relabelled",
    "same_rest",
    "sentence",
    "statement",
    "statements",
    "task_accuracy",
    "task_loss",
    "with_random_labels",
]
