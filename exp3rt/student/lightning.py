"""The Lightning side of the student: a DataModule whose sampler resumes mid-epoch, and the
LightningModule (HF model + peft) with AdamW, warm-up then constant or cosine, gradient clipping from
the Trainer, validation loss and generation-based RMSE/MAE on a fixed validation subset."""

from __future__ import annotations

import contextlib
import logging
import math
import time

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from exp3rt.student.model import forward_accepts, load_base_model, trainable_summary, wrap_peft
from exp3rt.student.ratings import RATING_RE, parse_rating  # noqa: F401  (RATING_RE moved there)
from exp3rt.student.strategies import adam_class, generation_context
from exp3rt.student.tokenize import render

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _zero_init_paused(active: bool):
    """Build the LoRA adapters outside Lightning's ``deepspeed.zero.Init`` (ZeRO-3).

    Inside it every new layer is partitioned at creation, and peft's move of the adapter to its base
    layer's device then leaves each LoRA weight an empty (0-element) tensor that DeepSpeed no longer
    tracks: the ZeRO-3 optimizer finds nothing to train and fails (an AssertionError in
    ``defragment``). Created as plain tensors, the adapters are partitioned by the engine at start-up
    like any other parameter. Seen on an H200 and reproduced on CPU with SmolLM2 + LoRA."""
    if not active:
        yield
        return
    from deepspeed.runtime.zero.partition_parameters import restore_init_context, shutdown_init_context

    shutdown_init_context()
    try:
        yield
    finally:
        restore_init_context()


class ResumableSampler(DistributedSampler):
    """A seeded permutation per epoch that can start part-way: after a resume it skips the examples
    the interrupted epoch already consumed, so the data position is restored along with the step.

    It shards by rank itself, and is a ``DistributedSampler`` so that Lightning, training on several
    processes, keeps it: any other sampler gets wrapped in Lightning's ``DistributedSamplerWrapper``,
    which splits each rank's share again (half the data per epoch on 2 ranks) and reshuffles it."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        super().__init__(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch = 0
        self.skip = 0  # per-rank samples to skip in the current epoch

    def order(self) -> np.ndarray:
        if not self.shuffle:
            idx = np.arange(self.n)
        else:
            idx = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        per_rank = math.ceil(self.n / self.world)
        idx = np.resize(idx, per_rank * self.world)  # pad by wrapping so every rank sees as many
        return idx[self.rank :: self.world]

    def __iter__(self):
        idx = self.order()[self.skip :]
        self.skip = 0
        return iter(idx.tolist())

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch: a new permutation per epoch (the loader is
        built once, so this is the only place the epoch changes)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """The whole epoch's length, also when resuming part-way: Lightning restores how many batches of
        the epoch were done and counts the rest against this, so the skipped part must not be subtracted
        twice (the resumed epoch used to end that many batches early)."""
        return math.ceil(self.n / self.world)


class ResumableLoader(DataLoader):
    """The training DataLoader, stateful in Lightning's sense (``state_dict`` / ``load_state_dict``): the
    fit loop saves its state in every checkpoint and loads it before the first batch of a resumed epoch,
    which sets the sampler to skip what the interrupted epoch consumed. (Lightning warns that a loader
    without these methods is "not resumable" when a checkpoint ends mid-epoch.)"""

    def __init__(self, *args, datamodule: StudentDataModule | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.datamodule = datamodule

    def state_dict(self) -> dict:
        return self.datamodule.state_dict() if self.datamodule is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.datamodule is None or not state:
            return
        sampler = self.sampler
        if isinstance(sampler, ResumableSampler) and int(state.get("epoch", -1)) == sampler.epoch:
            self.datamodule.load_state_dict(state)
            sampler.skip = self.datamodule.consumed  # the position the DataModule's own state restores too
            self.datamodule._resume_skip = 0


class StudentDataModule(pl.LightningDataModule):
    """Serves tokenised SFT datasets; ``state_dict`` (saved in every checkpoint) records the epoch and
    how many examples of it this rank has consumed."""

    def __init__(self, train_ds, val_ds, collate_fn, micro_batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.train_ds, self.val_ds, self.collate_fn = train_ds, val_ds, collate_fn
        self.micro_batch_size, self.seed, self.num_workers = int(micro_batch_size), int(seed), num_workers
        self.consumed = 0
        self.epoch = 0
        self._sampler: ResumableSampler | None = None
        self._resume_skip = 0

    def train_dataloader(self):
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        epoch = self.trainer.current_epoch if self.trainer else 0
        self._sampler = ResumableSampler(len(self.train_ds), self.seed, True, rank, world)
        self._sampler.epoch = epoch
        if self._resume_skip and epoch == self.epoch:
            self._sampler.skip = self._resume_skip
        else:
            self.consumed = 0
        self._resume_skip = 0
        self.epoch = epoch
        return ResumableLoader(
            self.train_ds,
            batch_size=self.micro_batch_size,
            sampler=self._sampler,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            datamodule=self,
        )

    def val_dataloader(self):
        if self.val_ds is None or len(self.val_ds) == 0:
            return []
        return DataLoader(
            self.val_ds, batch_size=self.micro_batch_size, shuffle=False, collate_fn=self.collate_fn
        )

    def count(self, epoch: int, n: int) -> None:
        """``n`` more examples of ``epoch`` consumed (a new epoch starts again from 0: the loader is built
        once, so train_dataloader does not see the epoch change)."""
        if epoch != self.epoch:
            self.epoch, self.consumed = int(epoch), 0
        self.consumed += int(n)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.consumed = int(state.get("consumed", 0))
        self._resume_skip = self.consumed


def lr_lambda(scheduler: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if scheduler == "cosine" and total > warmup:
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return f


def weighted_answer_loss(logits, labels, rating_mask, weight: float):
    """Next-token cross-entropy over the labelled (answer) tokens, the rating's tokens counting ``weight``
    times: sum(w·ce) / sum(w). With weight 1 it equals the model's own mean loss."""
    logits = logits[:, :-1, :].float()
    target = labels[:, 1:]
    w = (target != -100).float() * (1.0 + (weight - 1.0) * rating_mask[:, 1:].float())
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1).clamp(min=0), reduction="none"
    ).view_as(w)
    return (ce * w).sum() / w.sum().clamp(min=1.0)


def expected_rating_error(logits, labels, rating_mask, ids, values, span: float):
    """Mean squared error of the expected rating at each row's rating position, the scale mapped onto 0–1,
    and how many rows it covered.

    The distribution is the model's next-token softmax restricted to the ratings' tokens (``ids``, one
    token per rating, in the order of ``values``): the readout that evaluation reports as
    ``student_expected``. Cross-entropy teaches the most likely token; this term trains the expectation
    itself (regression-aware fine-tuning), so a rating one step off costs less than one four steps off.
    Rows without a rating token, or whose rating token is not among ``ids``, are left out. Returns
    ``(None, 0)`` when no row has one."""
    target = labels[:, 1:]
    at = rating_mask[:, 1:].bool() & (target != -100)
    has = at.any(dim=1)
    if not bool(has.any()):
        return None, 0
    rows = has.nonzero().squeeze(1)
    pos = at.float().argmax(dim=1)[rows]  # the first rating token of each row
    ids_t = torch.as_tensor(ids, device=logits.device)
    match = target[rows, pos][:, None] == ids_t[None, :]
    ok = match.any(dim=1)
    if not bool(ok.any()):
        return None, 0
    rows, pos, match = rows[ok], pos[ok], match[ok]
    vals = torch.as_tensor(values, dtype=torch.float32, device=logits.device)
    probs = torch.softmax(logits[rows, pos][:, ids_t].float(), dim=-1)
    truth = vals[match.float().argmax(dim=1)]
    err = ((probs * vals).sum(-1) - truth) / float(span)
    return (err**2).mean(), int(rows.numel())


def answer_logits(model, batch, keep_all: bool = False):
    """(logits, labels, rating_mask) from the last position before the batch's earliest answer token
    onward. The prompt's positions never enter the loss, so projecting them onto the vocabulary (most
    of an SFT batch: profiles and reviews are long, answers short) is skipped: less time and far less
    memory with a large vocabulary. ``keep_all`` or a model without ``logits_to_keep``: every position."""
    labels = batch["labels"]
    width = labels.shape[1]
    answered = labels != -100
    start = 0
    if not keep_all and bool(answered.any()):
        first = int(torch.where(answered.any(dim=1), answered.float().argmax(dim=1), width).min())
        start = max(0, first - 1)
    mask = batch.get("rating_mask")
    if start == 0:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    else:
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=width - start
        ).logits
    if mask is None:
        mask = torch.zeros_like(labels)
    return logits, labels[:, start:], mask[:, start:]


class StudentModule(pl.LightningModule):
    def __init__(
        self,
        student_cfg,
        peft_cfg,
        train_cfg,
        scale: tuple[float, float],
        gen_examples=None,
        tokenizer=None,
        rating_from_text=None,
        total_steps: int | None = None,
        deepspeed_cfg=None,
        rating_tokens: dict[int, float] | None = None,
    ):
        super().__init__()
        self.student_cfg, self.peft_cfg, self.train_cfg = student_cfg, peft_cfg, train_cfg
        self.deepspeed_cfg = deepspeed_cfg  # the deepspeed group: which Adam (strategies.adam_class)
        self.scale = scale
        self.gen_examples = list(gen_examples or [])
        self.tokenizer = tokenizer
        self.rating_from_text = rating_from_text
        self.total_steps = total_steps
        # each rating's single token after the answer prefix -> its value (train.rating_mse_weight)
        self.rating_tokens = dict(rating_tokens or {})
        self.model = None
        self._logits_to_keep = False
        self._t_last: float | None = None
        self._tokens = 0

    # the model is built in configure_model so DeepSpeed ZeRO-3 can shard it as it is created
    def configure_model(self) -> None:
        if self.model is not None:
            return

        ds_config = getattr(self.trainer.strategy, "config", None) if self._trainer is not None else None
        zero3 = bool(ds_config and ds_config.get("zero_optimization", {}).get("stage") == 3)
        if zero3:
            # tell transformers that ZeRO-3 is on, so from_pretrained loads each weight straight into
            # its shard inside deepspeed.zero.Init (kept alive for the life of the module)
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(ds_config)
        base = load_base_model(self.student_cfg)
        with _zero_init_paused(zero3):
            self.model = wrap_peft(base, self.peft_cfg, bool(self.train_cfg.gradient_checkpointing))
        log.info("student %s: %s", self.student_cfg.name, trainable_summary(self.model))
        # from_pretrained returns modules in eval mode and Lightning does not flip them: without this, dropout
        # (LoRA or attention) would be silently off; here, before Lightning's own check at the start of fit
        self.model.train()
        self._logits_to_keep = forward_accepts(self.model, "logits_to_keep")

    def on_validation_end(self) -> None:
        self.model.train()

    def forward(self, **batch):
        return self.model(**batch)

    def training_step(self, batch, batch_idx):
        w = float(self.train_cfg.get("rating_loss_weight", 1.0) or 1.0)
        n = batch["input_ids"].shape[0]
        logits, labels, mask = answer_logits(self.model, batch, keep_all=not self._logits_to_keep)
        loss = weighted_answer_loss(logits, labels, mask, w)
        mse_w = float(self.train_cfg.get("rating_mse_weight", 0.0) or 0.0)
        if mse_w > 0 and self.rating_tokens:
            ids, values = list(self.rating_tokens), list(self.rating_tokens.values())
            err, rows = expected_rating_error(
                logits, labels, mask, ids, values, self.scale[1] - self.scale[0]
            )
            if err is not None:
                loss = loss + mse_w * err
                self.log("train/rating_mse", err.detach(), on_step=True, on_epoch=False, batch_size=rows)
        if w != 1.0:
            self.log(
                "train/loss_unweighted",
                weighted_answer_loss(logits.detach(), labels, mask, 1.0),
                on_step=True,
                on_epoch=False,
                batch_size=n,
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self._tokens += int(batch["attention_mask"].sum())
        return loss

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # counted before the step: ModelCheckpoint saves in its on_train_batch_end, which Lightning calls
        # before this module's, so a count there recorded one batch fewer than the checkpoint's step
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "count"):
            dm.count(self.current_epoch, int(batch["input_ids"].shape[0]))

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._t_last is not None and now > self._t_last:
            self.log("perf/tokens_per_s", self._tokens / (now - self._t_last), on_step=True, on_epoch=False)
        self._t_last, self._tokens = now, 0
        if torch.cuda.is_available():
            self.log(
                "perf/gpu_mem_gb", torch.cuda.max_memory_allocated() / 2**30, on_step=True, on_epoch=False
            )
        else:
            import psutil

            self.log("perf/rss_gb", psutil.Process().memory_info().rss / 2**30, on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx):
        logits, labels, mask = answer_logits(self.model, batch, keep_all=not self._logits_to_keep)
        self.log(
            "val/loss",
            weighted_answer_loss(logits, labels, mask, 1.0),
            prog_bar=True,
            on_epoch=True,
            sync_dist=True,
            batch_size=batch["input_ids"].shape[0],
        )

    def on_validation_epoch_end(self) -> None:
        if not (self.train_cfg.val_generate and self.gen_examples and self.tokenizer is not None):
            return
        if self.trainer.sanity_checking:
            return
        metrics = self.generate_metrics()
        for k, v in metrics.items():
            self.log(f"val/{k}", v, sync_dist=False, rank_zero_only=True)

    @torch.no_grad()
    def generate_metrics(self) -> dict:
        """Decoded generation (not teacher-forced argmax) on the fixed validation subset: RMSE/MAE over
        parsed ratings and the parse rate; unparsed answers are excluded and counted, never scored 0."""
        was_training = self.model.training
        self.model.eval()
        tok = self.tokenizer
        tok.padding_side = "left"
        truth, pred = [], []
        bs = max(1, int(self.train_cfg.micro_batch_size))
        for i in range(0, len(self.gen_examples), bs):
            chunk = self.gen_examples[i : i + bs]
            prompts = [render(tok, ex, add_answer=False)[0] for ex in chunk]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with generation_context(self.model):  # ZeRO-3: every rank gathers the weights together
                out = self.model.generate(
                    **enc,
                    max_new_tokens=int(self.student_cfg.max_new_tokens),
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for ex, text in zip(chunk, texts, strict=True):
                truth.append(float(ex.meta["rating"]))
                pred.append(parse_rating(text, *self.scale, from_text=self.rating_from_text))
        tok.padding_side = "right"
        if was_training:
            self.model.train()
        ok = [(t, p) for t, p in zip(truth, pred, strict=True) if p is not None]
        res = {"gen_parse_rate": len(ok) / max(1, len(truth))}
        if ok:
            t, p = np.array(ok).T
            res["gen_rmse"] = float(np.sqrt(np.mean((t - p) ** 2)))
            res["gen_mae"] = float(np.mean(np.abs(t - p)))
        return res

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        precision = str(self.trainer.precision) if self._trainer is not None else None
        opt = adam_class(self.deepspeed_cfg, precision)(params, lr=float(self.train_cfg.lr), weight_decay=0.0)
        total = self.total_steps or (self.trainer.estimated_stepping_batches if self.trainer else 1000)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(str(self.train_cfg.scheduler), int(self.train_cfg.warmup_steps), int(total))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
