"""exp3rt: reproduce and extend EXP3RT (arXiv 2408.06276) — review-driven preference reasoning for
recommendation, with a teacher LLM distilling preferences into a LoRA student."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository's Hydra config directory (the package is installed in editable mode from the repo).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    # ${exp3rt_root:} is the repository root, so paths do not depend on the working directory
    if not OmegaConf.has_resolver("exp3rt_root"):
        OmegaConf.register_new_resolver("exp3rt_root", lambda: str(CONF_DIR.parent))
    # ${exp3rt_slurm_tasks_per_node:}: trainer.slurm_tasks_per_node's default (exp3rt.config)
    if not OmegaConf.has_resolver("exp3rt_slurm_tasks_per_node"):
        OmegaConf.register_new_resolver("exp3rt_slurm_tasks_per_node", _slurm_tasks_per_node)


def _slurm_tasks_per_node(*, _root_):
    return _tasks_per_node(_root_)


_register_resolvers()

from exp3rt.config import register_schemas as _register_schemas  # noqa: E402
from exp3rt.config import slurm_tasks_per_node as _tasks_per_node  # noqa: E402

_register_schemas()
