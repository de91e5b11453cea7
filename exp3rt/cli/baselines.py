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
from exp3rt.baselines.report import baselines_report
from exp3rt.baselines.runner import baselines_stage
from exp3rt.cli.common import fail_cleanly
from exp3rt.config import validate
from exp3rt.data.prepare import prepare_dataset
from exp3rt.data.splits import prepare_split
from exp3rt.threads import apply_threads

log = logging.getLogger("exp3rt.baselines")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    cfg = validate(cfg)
    apply_threads(cfg)  # before any torch work
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    split = prepare_split(prepared, cfg.split)
    metrics = baselines_stage(prepared, split, cfg.baselines, cfg.eval, out_dir, config=cfg)
    print(baselines_report(metrics))
    print(f"\nmetrics: {out_dir / 'metrics.json'}")
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="baselines", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with fail_cleanly(log):
        run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
