"""circuitlab: weight-sparse transformers with interpretable circuits (Gao et al. 2025), on a CPU.

The boxes of the pipeline, one module each: `snapshot`, `tokenizer`, `tasks`, `synthetic`, `build`, `corpus`
(data); `model`, `abstopk`, `fused`, `config`, `checkpoint`, `compat` (the SparseTransformer); `sparsity`,
`train` (weight-sparse training); `prune`, `discretize`, `circuit`, `plotting`, `search`, `make_circuits`
(circuits, a per-task search of the pruner's settings, and the command that makes `data/circuits/`);
`settings` (reading configs, overrides and parameters).
"""

from circuitlab.circuit import Circuit
from circuitlab.config import SparseTransformerConfig
from circuitlab.model import NODE_LOCATIONS, SparseTransformer
from circuitlab.prune import PruneConfig, prune

__version__ = "0.1.0"

__all__ = ["Circuit", "NODE_LOCATIONS", "PruneConfig", "SparseTransformer", "SparseTransformerConfig", "prune"]
