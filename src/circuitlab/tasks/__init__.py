"""Binary next-token tasks on Python code: contrast pairs, disjoint splits, the paper's task loss, harvesting.

One module per job: :mod:`~circuitlab.tasks.core` is the framework (``Task``, splits, batches, task loss,
registry), :mod:`~circuitlab.tasks.codegen` the code vocabulary and line generators that prompts and the
synthetic corpus share, one module per task family defines and registers its tasks, and
:mod:`~circuitlab.tasks.harvest` finds natural instances in the corpus snapshot. Importing the package
registers every task: the paper's twenty (``PAPER_TASKS``, the suite circuit sizes are averaged over) and the
extras; ``names()`` lists them all, the twenty first, and ``HARVESTED`` the paper's tasks with natural
instances. The package exports the framework and the harvester; the code vocabulary is imported from
:mod:`~circuitlab.tasks.codegen` itself.
"""

from circuitlab.tasks import brackets, control, definitions, strings, syntax, variables  # noqa: F401  (register)
from circuitlab.tasks.core import (
    CHANCE_LOSS,
    MAX_DRAWS_PER_PAIR,
    PAPER_TASKS,
    RENAMED,
    SPLITS,
    TEST_PROMPT_FRACTION,
    Datapoint,
    FramedPair,
    FramedSampler,
    Instance,
    Sampler,
    Task,
    TaskBatch,
    define_framed_task,
    define_task,
    get,
    length_buckets,
    make_batch,
    names,
    pair_rows,
    pair_split,
    prompt_split,
    register,
    relabelled,
    same_rest,
    select_rows,
    task_accuracy,
    task_loss,
    with_random_labels,
)
from circuitlab.tasks.harvest import HARVESTED, harvest, harvest_source

__all__ = [
    "CHANCE_LOSS",
    "HARVESTED",
    "MAX_DRAWS_PER_PAIR",
    "PAPER_TASKS",
    "RENAMED",
    "SPLITS",
    "TEST_PROMPT_FRACTION",
    "Datapoint",
    "FramedPair",
    "FramedSampler",
    "Instance",
    "Sampler",
    "Task",
    "TaskBatch",
    "define_framed_task",
    "define_task",
    "get",
    "harvest",
    "harvest_source",
    "length_buckets",
    "make_batch",
    "names",
    "pair_rows",
    "pair_split",
    "prompt_split",
    "register",
    "relabelled",
    "same_rest",
    "select_rows",
    "task_accuracy",
    "task_loss",
    "with_random_labels",
]
