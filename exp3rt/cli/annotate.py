"""``exp3rt-annotate``: the teacher stages extract → user_profile → item_profile → rationale.

exp3rt-annotate                                        # synthetic world, extractive teacher
exp3rt-annotate teacher=gpt35_turbo dry_run=true       # calls, tokens and cost per stage; no calls
exp3rt-annotate teacher=vllm_local teacher.base_url=http://gpu01:8000/v1 teacher.concurrency=64
exp3rt-annotate -m stage=extract shard=0,1,2,3 num_shards=4   # then: stage=extract merge=true num_shards=4
exp3rt-annotate teacher=gpt35_turbo retry_failed=true  # re-send only the rows that failed (docs/teacher.md)
exp3rt-annotate dataset=release_imdb split=predefined teacher=release   # import published annotations
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from exp3rt import CONF_DIR
from exp3rt.artifacts import save_config, write_json_atomic
from exp3rt.cli.common import fail_cleanly
from exp3rt.config import validate
from exp3rt.data.prepare import prepare_dataset
from exp3rt.data.splits import prepare_split
from exp3rt.evaluation.report import markdown_table
from exp3rt.teacher.annotate import annotate, check_run_options
from exp3rt.threads import apply_threads

log = logging.getLogger("exp3rt.annotate")


def annotation_table(result: dict) -> str:
    if "estimate" in result:
        rows = []
        modes = set()
        for stage, e in result["estimate"].items():
            modes.add(e.get("price_mode", "sync"))
            rows.append(
                [
                    stage,
                    e.get("calls"),
                    e.get("cached"),
                    e.get("prompt_tokens"),
                    e.get("completion_tokens"),
                    e.get("cost_usd_sync"),
                    e.get("cost_usd_batch"),
                    "estimate" if e.get("estimated") else "exact prompts",
                ]
            )
        mode = "/".join(sorted(modes)) or "sync"
        return (
            f"Dry run — nothing was sent (teacher.mode={mode}; the budget check uses {mode} prices)\n"
            + markdown_table(
                [
                    "stage",
                    "calls to send",
                    "cached",
                    "prompt tokens",
                    "max completion tokens",
                    "max cost USD sync",
                    "max cost USD batch (within 24 h)",
                    "basis",
                ],
                rows,
            )
        )
    if "merged" in result:
        return f"merged shards into {result['merged']}"
    rows = []
    for stage, r in result.get("report", {}).items():
        u = r.get("usage", {})
        st = r.get("status", {})
        rows.append(
            [
                stage,
                r.get("rows"),
                st.get("ok", r.get("rows") if r.get("imported") else 0),
                st.get("failed", 0),
                st.get("failed_upstream", 0) + st.get("missing_input", 0),
                "skipped (exists)"
                if r.get("skipped")
                else ("imported" if r.get("imported") else u.get("calls")),
                u.get("cached"),
                u.get("cost_usd"),
                r.get("seconds"),
            ]
        )
    return markdown_table(
        [
            "stage",
            "rows",
            "ok",
            "failed",
            "failed upstream",
            "calls sent",
            "cache hits",
            "cost USD",
            "seconds",
        ],
        rows,
    )


def run(cfg: DictConfig, out_dir: Path) -> dict:
    cfg = validate(cfg)
    apply_threads(cfg)  # before any torch work
    check_run_options(cfg.stage, cfg.shard, cfg.num_shards, cfg.merge)  # before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    split = prepare_split(prepared, cfg.split)
    result = annotate(
        cfg,
        prepared,
        split,
        stage=cfg.stage,
        dry_run=cfg.dry_run,
        shard=cfg.shard,
        num_shards=cfg.num_shards,
        merge=cfg.merge,
        force=cfg.force,
        retry_failed=cfg.retry_failed,
        progress=cfg.progress,
        lock_wait=cfg.lock_wait,
    )
    write_json_atomic(out_dir / "annotate.json", result)
    if result.get("report") or "batch_pending" not in result:  # nothing finished yet: no empty table
        print(annotation_table(result))
    if "batch_pending" in result:
        print(f"\n{result['batch_pending']['message']}")
    print(f"\nannotations: {result['directory']}")
    return result


@hydra.main(config_path=str(CONF_DIR), config_name="annotate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with fail_cleanly(log):
        run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
