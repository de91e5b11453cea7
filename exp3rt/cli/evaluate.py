"""``exp3rt-evaluate``: reasoning then rating on the test pairs of a trained student's dataset.

exp3rt-evaluate run_dir=outputs/train/<run>
exp3rt-evaluate run_dir=outputs/train/<run> eval.mode=fast eval.failure_policy=exclude
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from exp3rt import CONF_DIR
from exp3rt.cli.common import fail_cleanly
from exp3rt.config import validate
from exp3rt.evaluation.evaluate import evaluate
from exp3rt.evaluation.report import markdown_table
from exp3rt.inference.predict import predict
from exp3rt.threads import apply_threads

log = logging.getLogger("exp3rt.evaluate")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    cfg = validate(cfg)
    apply_threads(cfg)  # before any torch work
    metrics = evaluate(cfg.eval, out_dir, run_dir=cfg.run_dir, adapter=cfg.adapter, predict_fn=predict)
    rows = [
        [name, r.get("rmse"), r.get("mae"), r.get("rmse_warm"), r.get("rmse_cold"), r.get("parse_rate", 1.0)]
        for name, r in metrics["rating"].items()
    ]
    print(markdown_table(["model", "RMSE", "MAE", "RMSE warm", "RMSE cold", "parse rate"], rows))
    print(f"\nreport: {out_dir / 'report.md'}")
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with fail_cleanly(log):
        run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
