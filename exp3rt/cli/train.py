"""``exp3rt-train``: fine-tune the student (LoRA) on the teacher's annotations with Lightning.

exp3rt-train                                             # tiny student on CPU, synthetic world
exp3rt-train student=smollm2_135m trainer.max_steps=50
exp3rt-train ablation=no_reasoning                       # answer is the rating alone
exp3rt-train trainer=deepspeed_zero2 deepspeed=zero2 student=llama3_8b_instruct peft=lora_paper
exp3rt-train hydra.run.dir=outputs/train/<run> ckpt_path=last   # resume (same W&B run id)
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
from exp3rt.data.prepare import prepare_dataset
from exp3rt.data.splits import prepare_split
from exp3rt.devices import check_machine
from exp3rt.student.train import train
from exp3rt.teacher.annotate import find_annotation_dir
from exp3rt.threads import apply_threads

log = logging.getLogger("exp3rt.train")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    cfg = validate(cfg)
    apply_threads(cfg)  # before any torch work
    check_machine(cfg)  # a GPU trainer on a machine without one: one sentence before any data work
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)  # made once, reused by path
    result = train(
        cfg,
        out_dir,
        find_annotation_dir(cfg, prepared, prepare_split(prepared, cfg.split)),
        ckpt_path=cfg.ckpt_path,
        progress=cfg.progress,
        lock_wait=cfg.lock_wait,
    )
    if not result.get("is_global_zero", True):
        return result
    m = result["metrics"]
    print(
        f"trained {result['global_step']} steps in {result['seconds']} s on "
        f"{result['examples']['train']} examples"
    )
    for key in ("train/loss", "val/loss", "val/gen_rmse", "val/gen_mae", "val/gen_parse_rate"):
        if key in m:
            print(f"  {key}: {m[key]:.4f}")
    print(f"adapter: {out_dir / 'adapter'}")
    return result


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with fail_cleanly(log):
        run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
