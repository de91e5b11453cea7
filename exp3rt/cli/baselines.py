"""``exp3rt-baselines``: prepare data, split, fit rating baselines and retrievers, print one table.

    exp3rt-baselines                                  # synthetic world
    exp3rt-baselines dataset=ml100k dataset.path=/data/ml-100k.inter
    exp3rt-baselines -m split=random,per_user         # multirun → multirun/baselines/<time>/<n>/
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from exp3rt import CONF_DIR
from exp3rt.cli.common import fail_cleanly

log = logging.getLogger("exp3rt.baselines")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from exp3rt.artifacts import save_config, write_json_atomic, write_text_atomic
    from exp3rt.baselines.runner import run_baselines
    from exp3rt.config import SplitStrategy, validate
    from exp3rt.data.prepare import prepare_dataset
    from exp3rt.data.schema import scale_of
    from exp3rt.data.splits import prepare_split
    from exp3rt.evaluation.report import baselines_report
    from exp3rt.threads import apply_threads

    cfg = validate(cfg)
    apply_threads(cfg)  # before any torch work
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    split = prepare_split(prepared, cfg.split)
    results = run_baselines(split, cfg.baselines, cfg.eval, scale_of(cfg.dataset), out_dir=out_dir)
    metrics = {
        "task": "baselines",
        "dataset": prepared.dataset.summary(),
        "data_dir": str(prepared.directory),
        "data_report": {k: prepared.report.get(k) for k in ("skipped_total", "skipped", "notes")},
        "split": {
            "strategy": SplitStrategy(cfg.split.strategy).value,
            "seed": int(cfg.split.seed),
            "dir": str(split.directory),
            "stats": split.meta["stats"],
        },
        **results,
    }
    table = baselines_report(metrics)
    write_text_atomic(out_dir / "report.md", "# exp3rt baselines\n\n" + table + "\n")
    write_json_atomic(out_dir / "metrics.json", metrics, default=None)  # last: the pipeline's "finished" marker
    print(table)
    print(f"\nmetrics: {out_dir / 'metrics.json'}")
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="baselines", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with fail_cleanly(log):
        run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
