"""exp3rt: reproduce and extend EXP3RT (arXiv 2408.06276) — review-driven preference reasoning for
recommendation, with a teacher LLM distilling preferences into a LoRA student."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository's Hydra config directory (the package is installed in editable mode from the repo).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
