"""Train the tiny Llama (LoRA on q_proj/v_proj) with DeepSpeed ZeRO on 2 CPU processes; for
tests/test_strategies.py.

Lightning's launcher re-runs this script once per extra device (LOCAL_RANK=1 …), so it must be the
entry point of its process, which a pytest process cannot be. The config comes from the real presets
(``trainer=deepspeed_cpu deepspeed=zero2|zero3`` plus overrides), through ``validate`` and
``trainer_kwargs``. Every rank trains on the same fixed batch; at the end every rank computes the
logits of that batch (ZeRO-3: inside ``generation_context``) and greedily generates a few tokens,
then the trainer saves a DeepSpeed checkpoint directory. Rank 0 writes ``result.json``.

    python tests/zero_cpu_train.py MODEL_DIR OUT_DIR [hydra overrides...]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TEXTS = (
    "The battery lasts all day and the screen is sharp.",
    "The plot drags in the middle but the ending works.",
)


def compose_training(overrides: list[str]):
    """Compose a primary with the ``deepspeed``, ``trainer`` and ``train`` groups (deepspeed first, so
    a trainer preset can select its deepspeed preset) from the repository's conf/."""
    from hydra import compose, initialize_config_dir

    import exp3rt  # noqa: F401  (registers the schemas)

    primary = (
        "defaults:\n  - deepspeed: none\n  - trainer: cpu\n  - train: default\n  - _self_\n"
        f"hydra:\n  searchpath:\n    - file://{REPO / 'conf'}\n"
    )
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "primary.yaml").write_text(primary)
        with initialize_config_dir(config_dir=d, version_base="1.3"):
            return compose(config_name="primary", overrides=overrides)


def fixed_batch(tokenizer) -> dict[str, torch.Tensor]:
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    n = min(len(i) for i in ids)
    input_ids = torch.tensor([i[:n] for i in ids])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def build_module(model_dir: str | Path, lr: float = 1e-2, adam: type | None = None):
    """A minimal LightningModule: the tiny Llama with LoRA on q_proj/v_proj, next-token loss."""
    import pytorch_lightning as pl
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    class TinyLM(pl.LightningModule):
        def __init__(self):
            super().__init__()
            base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
            self.model = get_peft_model(base, lora)
            self.losses: list[float] = []

        def forward(self, batch):
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

        def training_step(self, batch, batch_idx):
            ids = batch["input_ids"]
            out = self.model(input_ids=ids, attention_mask=batch["attention_mask"], labels=ids)
            self.losses.append(float(out.loss.detach().float()))
            return out.loss

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            return (adam or torch.optim.AdamW)(params, lr=lr, weight_decay=0.0)

    return TinyLM()


class _Repeat(torch.utils.data.Dataset):
    """The same ready-made batch, n times (DataLoader(batch_size=None) yields it as is)."""

    def __init__(self, batch, n):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.batch


def main(model_dir: str, out_dir: str, overrides: list[str]) -> None:
    import pytorch_lightning as pl
    from transformers import AutoTokenizer

    from exp3rt.config import validate
    from exp3rt.student.strategies import adam_class, generation_context, trainer_kwargs

    torch.set_num_threads(1)
    out = Path(out_dir)
    cfg = validate(compose_training(["trainer=deepspeed_cpu", *overrides]))
    pl.seed_everything(cfg.train.seed, verbose=False)
    tok = AutoTokenizer.from_pretrained(model_dir)
    batch = fixed_batch(tok)
    module = build_module(model_dir, lr=cfg.train.lr, adam=adam_class(cfg.deepspeed))
    kwargs = trainer_kwargs(cfg.trainer, cfg.deepspeed, micro_batch_size=cfg.train.micro_batch_size)
    trainer = pl.Trainer(
        **kwargs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    steps = cfg.trainer.max_steps
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    data = torch.utils.data.DataLoader(
        _Repeat(batch, steps * world * cfg.trainer.accumulate_grad_batches), batch_size=None
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=data)
    fit_s = time.perf_counter() - t0

    lm = trainer.lightning_module
    lm.eval()
    with torch.no_grad(), generation_context(lm):
        logits = lm(batch)
        generated = lm.model.generate(
            input_ids=batch["input_ids"][:1, :8],
            attention_mask=batch["attention_mask"][:1, :8],
            max_new_tokens=6,
            do_sample=False,
        )
    t1 = time.perf_counter()
    trainer.save_checkpoint(out / "ckpt")
    save_s = time.perf_counter() - t1
    rank = trainer.global_rank
    torch.save({"logits": logits.float(), "generated": generated}, out / f"rank{rank}.pt")
    trainer.strategy.barrier()
    if rank == 0:
        strategy = trainer.strategy
        result = {
            "losses": lm.losses,
            "fit_s": fit_s,
            "save_s": save_s,
            "world_size": trainer.world_size,
            "strategy": type(strategy).__name__,
            "zero_stage": strategy.config["zero_optimization"]["stage"],
            "precision": cfg.trainer.precision,
            "accumulate_grad_batches": strategy.config["gradient_accumulation_steps"],
            "param_dtype": str(next(lm.model.parameters()).dtype),
            "global_step": trainer.global_step,
            "backend": torch.distributed.get_backend(),
            "cuda": torch.cuda.is_available(),
            "pid": os.getpid(),
        }
        (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
