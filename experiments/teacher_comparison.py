#!/usr/bin/env python
"""Teacher comparison: the same student trained on annotations from the offline extractive teacher, a
local transformers model (teacher=hf_local) and GPT-3.5 (teacher=gpt35_turbo, the paper's), with each
teacher's calls, tokens and cost beside the student's RMSE. A teacher that cannot run here is left out
with a note: gpt35_turbo without $OPENAI_API_KEY, hf_local without its model folder
(`make smollm2`, or teacher.model_path=DIR).

    python experiments/teacher_comparison.py                         # CPU demo on the small debug world
    OPENAI_API_KEY=... python experiments/teacher_comparison.py teacher.max_cost_usd=5
    python experiments/teacher_comparison.py --preset paper experiment=paper_imdb \\
        teacher=gpt35_turbo,vllm_local
"""

import os
import sys
from pathlib import Path

from exp3rt.recipes import REPO, Recipe, runs_view

TEACHERS = ["extractive", "hf_local", "gpt35_turbo"]
COLUMNS = [
    ("RMSE", "rating/student_expected/rmse"),
    ("MAE", "rating/student_expected/mae"),
    ("parse rate", "rating/student_expected/parse_rate"),
    ("teacher calls", "teacher/calls"),
    ("prompt tokens", "teacher/prompt_tokens"),
    ("completion tokens", "teacher/completion_tokens"),
    ("cost USD", "teacher/cost_usd"),
    ("teacher s", "teacher/wall_s"),
]


def _given(extra, key):
    return next((o.split("=", 1)[1] for o in extra if o.split("=", 1)[0].lstrip("+") == key), None)


def sweep(preset, extra):
    """The teachers that can run here; what is left out, and why, goes into the notes."""
    if _given(extra, "teacher") is not None:
        return [], []  # the user chose the teachers
    keep, notes = [], []
    for t in TEACHERS:
        if t == "gpt35_turbo":
            key_env = _given(extra, "teacher.api_key_env") or "OPENAI_API_KEY"
            if not os.environ.get(key_env):
                notes.append(
                    f"skipped teacher=gpt35_turbo: ${key_env} is not set (export it to include the paper's "
                    "teacher; spending stops at teacher.max_cost_usd, default 20 USD)"
                )
                continue
        if t == "hf_local":
            artifacts = Path(os.environ.get("EXP3RT_ARTIFACTS") or REPO / "artifacts")
            folder = Path(
                _given(extra, "teacher.model_path") or artifacts / "models" / "smollm2-135m-instruct"
            )
            if not (folder / "config.json").is_file():
                notes.append(
                    f"skipped teacher=hf_local: no model folder at {folder} "
                    "(`make smollm2` prepares SmolLM2-135M-Instruct, or pass teacher.model_path=DIR)"
                )
                continue
        keep.append(t)
    return [f"teacher={','.join(keep)}", "experiment_name=teacher_comparison"], notes


def view(cmp):
    for r in cmp.runs:
        r.label = r.lookup("teacher") or r.label
    return runs_view(cmp, "The student per teacher, and what each teacher cost", COLUMNS)


RECIPE = Recipe(
    name="teacher_comparison",
    title="Teacher comparison: extractive vs local LLM vs GPT-3.5",
    sweep=sweep,
    # a local LLM teacher annotates every training review on CPU: the demo uses the small debug world
    preset_overrides={"demo": ["debug=default", "hydra.job_logging.root.level=INFO"]},
    by=["teacher"],
    view=view,
    results_root=Path(__file__).resolve().parent / "results",
)

if __name__ == "__main__":
    sys.exit(RECIPE.main())
