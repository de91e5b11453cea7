"""Training-step benchmark on CPU: Lightning's overhead over a plain torch loop, and SmolLM2-135M LoRA.

1. **Lightning ÷ plain torch** (goal >= 0.90). The same tiny random Llama (``build_tiny_llama``, bpe
   vocabulary) with LoRA (r=8, all-linear, through ``wrap_peft``), the same fixed synthetic batches
   (random ids; labels = the ids with the first half of each sequence masked), micro batch 8, AdamW +
   the project's ``lr_lambda`` schedule, gradient clipping 1.0, the same seed and data order:

   * arm A, plain torch: ``zero_grad / forward / backward / clip / step / scheduler.step`` over a
     ``DataLoader`` with the project's ``ResumableSampler`` and ``collate``;
   * arm B, Lightning: ``pl.Trainer(accelerator="cpu", ...)`` fitting the project's ``StudentModule`` on
     a ``StudentDataModule`` over the same rows (its per-step logging and bookkeeping included).

   The first ``--warmup`` optimizer steps of each run are not timed (a timestamp after every step,
   from a callback in arm B); model loading and ``Trainer`` setup are not timed either. The arms are
   interleaved (A, B, A, B, ...) and the median tokens/s of each is reported with the ratio B/A. The
   final losses of the two arms are printed too: same seed and data, so they should agree. So are the
   minor page faults per step: part of the gap is the allocator, not Lightning's Python — glibc returns
   the large activation buffers to the OS and faults them in again, more often in the Lightning arm;
   ``--keep-memory`` (``mallopt``; the same as ``MALLOC_MMAP_THRESHOLD_=1073741824
   MALLOC_TRIM_THRESHOLD_=4294967296``) keeps them: both arms faster, the ratio steadier.

2. **SmolLM2-135M LoRA step time** (r=8, all-linear, plain torch loop, sequence 512, micro batch 1
   and 4): seconds per optimizer step (median after warm-up) and tokens/s, when the model folder is
   found (``$EXP3RT_SMOLLM2_DIR`` or ``artifacts/models/smollm2-135m-instruct``).

    python benchmarks/bench_train.py                        # both parts; tiny Llama hidden 64 x 2 layers
    python benchmarks/bench_train.py --hidden 256 --layers 4 --skip-smollm2
    python benchmarks/bench_train.py --skip-overhead --smollm2-batches 1 --json
    python benchmarks/bench_train.py --skip-smollm2 --keep-memory       # part 1 alone, ~20 s
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch

#: where ``make smollm2`` writes the model (relative to the repository root)
SMOLLM2_DEFAULT = Path(__file__).resolve().parents[1] / "artifacts" / "models" / "smollm2-135m-instruct"


def synthetic_rows(n: int, seq: int, vocab: int, low: int, seed: int) -> list[dict]:
    """``n`` rows of ``seq`` random ids in ``[low, vocab)``, as the tokenised dataset stores them (lists);
    the loss covers the second half only, as an answer-only mask does."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, vocab, (n, seq), generator=g).tolist()
    half = seq // 2
    return [{"input_ids": r, "attention_mask": [1] * seq, "labels": [-100] * half + r[half:]} for r in ids]


def confs(model_path: str, args, student_extra: dict | None = None):
    """OmegaConf nodes from the project's schemas, as ``StudentModule`` receives them."""
    from omegaconf import OmegaConf

    from exp3rt.config import PeftConf, StudentConf, TrainLoopConf

    student = OmegaConf.structured(StudentConf(model_path=model_path, **(student_extra or {})))
    peft = OmegaConf.structured(PeftConf(method="lora", r=8, target_modules="all-linear"))
    train = OmegaConf.structured(
        TrainLoopConf(
            seed=args.seed,
            lr=2e-4,
            warmup_steps=2,
            scheduler="cosine",
            micro_batch_size=args.micro_batch,
            val_generate=False,
        )
    )
    return student, peft, train


def stamp() -> tuple[float, int]:
    """Now, and the process's minor page faults so far (a warm allocator reuses memory: few per step)."""
    return time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_rate(stamps: list[tuple[float, int]], warmup: int, tokens_per_step: int) -> dict:
    """Tokens/s and seconds/step over the steps after the first ``warmup`` (``stamps[i]``: end of step i)."""
    timed = len(stamps) - warmup
    seconds = stamps[-1][0] - stamps[warmup - 1][0]
    gaps = [b[0] - a[0] for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)]
    faults = (stamps[-1][1] - stamps[warmup - 1][1]) / timed
    return {
        "tokens_per_s": timed * tokens_per_step / seconds,
        "s_per_step": seconds / timed,
        "median_step_s": statistics.median(gaps),
        "timed_steps": timed,
        "page_faults_per_step": faults,
    }


# ------------------------------------------------------------------------------------- arm A: torch


def plain_torch_run(
    student, peft, train, rows, pad_id: int, steps: int, warmup: int, budget_s: float | None = None
) -> dict:
    """Arm A; with ``budget_s`` the timed steps stop early (after at least one) once the run has taken
    that long, so a slow model keeps the benchmark short."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from exp3rt.student.lightning import ResumableSampler, lr_lambda
    from exp3rt.student.model import load_base_model, wrap_peft
    from exp3rt.student.tokenize import collate

    pl.seed_everything(int(train.seed), verbose=False)
    model = wrap_peft(load_base_model(student), peft, bool(train.gradient_checkpointing))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(train.lr), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(str(train.scheduler), int(train.warmup_steps), steps)
    )
    sampler = ResumableSampler(len(rows), int(train.seed), True)
    loader = DataLoader(
        rows,
        batch_size=int(train.micro_batch_size),
        sampler=sampler,
        collate_fn=partial(collate, pad_id=pad_id),
    )
    stamps: list[tuple[float, int]] = []
    loss = None
    t0 = time.perf_counter()
    while len(stamps) < steps:
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            out = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            stamps.append(stamp())
            over = budget_s is not None and len(stamps) > warmup and stamps[-1][0] - t0 > budget_s
            if len(stamps) == steps or over:
                steps = len(stamps)
                loss = float(out.loss.detach())
                break
    tokens = int(train.micro_batch_size) * len(rows[0]["input_ids"])
    return {
        **timed_rate(stamps, warmup, tokens),
        "final_loss": loss,
        "threads": torch.get_num_threads(),
        "first_step_s": stamps[0][0] - t0,
        "model_in_train_mode": all(m.training for m in model.modules()),
    }


# --------------------------------------------------------------------------------- arm B: Lightning


def lightning_run(student, peft, train, rows, pad_id: int, steps: int, warmup: int, root: str) -> dict:
    import pytorch_lightning as pl

    from exp3rt.student.lightning import StudentDataModule, StudentModule
    from exp3rt.student.tokenize import collate

    class StepClock(pl.Callback):
        """A timestamp after every optimizer step (callbacks' ``on_train_batch_end`` runs after it)."""

        def __init__(self):
            self.stamps: list[tuple[float, int]] = []
            self.threads = 0
            self.train_mode = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.stamps.append(stamp())
            if self.train_mode is None:
                self.threads = torch.get_num_threads()
                self.train_mode = all(m.training for m in pl_module.model.modules())

    pl.seed_everything(int(train.seed), verbose=False)
    dm = StudentDataModule(
        rows, None, partial(collate, pad_id=pad_id), int(train.micro_batch_size), int(train.seed)
    )
    module = StudentModule(student, peft, train, (1.0, 5.0), total_steps=steps)
    clock = StepClock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
        callbacks=[clock],
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=dm)
    if len(clock.stamps) != steps:
        raise RuntimeError(f"Lightning ran {len(clock.stamps)} steps, expected {steps}")
    tokens = int(train.micro_batch_size) * len(rows[0]["input_ids"])
    loss = trainer.callback_metrics.get("train/loss")
    return {
        **timed_rate(clock.stamps, warmup, tokens),
        "final_loss": None if loss is None else float(loss),
        "threads": clock.threads,
        "model_in_train_mode": clock.train_mode,
    }


def bench_overhead(args) -> dict:
    from exp3rt.models.tiny import SPECIAL_TOKENS, build_tiny_llama
    from exp3rt.student.model import load_tokenizer

    steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "tiny", vocab="bpe", hidden=args.hidden, layers=args.layers)
        student, peft, train = confs(str(model_dir), args)
        tok = load_tokenizer(student)
        rows = synthetic_rows(args.rows, args.seq, len(tok), len(SPECIAL_TOKENS), args.seed)
        runs: dict[str, list[dict]] = {"torch": [], "lightning": []}
        for rep in range(args.repeats):
            for arm in ("torch", "lightning"):
                torch.set_num_threads(args.threads)
                if arm == "torch":
                    res = plain_torch_run(student, peft, train, rows, tok.pad_token_id, steps, args.warmup)
                else:
                    res = lightning_run(student, peft, train, rows, tok.pad_token_id, steps, args.warmup, tmp)
                runs[arm].append(res)
                print(
                    f"  round {rep + 1} {arm:9s}: {res['tokens_per_s']:8,.0f} tokens/s, "
                    f"{res['s_per_step'] * 1e3:6.1f} ms/step (median step "
                    f"{res['median_step_s'] * 1e3:.1f} ms), "
                    f"{res['page_faults_per_step']:,.0f} page faults/step, final loss "
                    f"{res['final_loss']:.4f}",
                    flush=True,
                )
    med = {arm: statistics.median(r["tokens_per_s"] for r in rs) for arm, rs in runs.items()}
    ms = {arm: statistics.median(r["s_per_step"] for r in rs) * 1e3 for arm, rs in runs.items()}
    ratio = med["lightning"] / med["torch"]
    loss_gap = max(
        abs(a["final_loss"] - b["final_loss"]) for a, b in zip(runs["torch"], runs["lightning"], strict=True)
    )
    print(
        f"plain torch: {med['torch']:,.0f} tokens/s ({ms['torch']:.1f} ms/step); "
        f"Lightning: {med['lightning']:,.0f} tokens/s ({ms['lightning']:.1f} ms/step); "
        f"overhead {ms['lightning'] - ms['torch']:+.2f} ms/step"
    )
    print(f"final-loss gap between the arms: {loss_gap:.2e}")
    modes = {arm: all(r["model_in_train_mode"] for r in rs) for arm, rs in runs.items()}
    if not modes["lightning"]:
        print(
            "note: in the Lightning arm the HF model's modules were not all in train mode (from_pretrained "
            "leaves them in eval mode and Lightning keeps submodule modes); the figures are comparable "
            "here only because no dropout is configured (lora dropout 0, attention dropout 0)"
        )
    print(f"Lightning ÷ plain torch: {ratio:.2f} (goal >= 0.90)")
    return {
        "model": {
            "hidden": args.hidden,
            "layers": args.layers,
            "seq": args.seq,
            "micro_batch": args.micro_batch,
        },
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch_tokens_per_s": med["torch"],
        "lightning_tokens_per_s": med["lightning"],
        "torch_ms_per_step": ms["torch"],
        "lightning_ms_per_step": ms["lightning"],
        "ratio": ratio,
        "goal": 0.90,
        "final_loss_gap": loss_gap,
        "model_in_train_mode": modes,
        "runs": runs,
    }


# ------------------------------------------------------------------------------------- SmolLM2-135M


def smollm2_folder() -> tuple[Path | None, str]:
    env = os.environ.get("EXP3RT_SMOLLM2_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(SMOLLM2_DEFAULT)
    for c in candidates:
        if (c / "config.json").is_file():
            return c, ""
    where = " or ".join(str(c) for c in candidates)
    return (
        None,
        f"no config.json in {where} (run `make smollm2`, or set EXP3RT_SMOLLM2_DIR to a SmolLM2-135M folder)",
    )


def bench_smollm2(args) -> dict:
    folder, reason = smollm2_folder()
    if folder is None:
        print(f"SmolLM2-135M: skipped, {reason}")
        return {"skipped": reason}
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(str(folder)).vocab_size
    print(
        f"SmolLM2-135M LoRA r=8 all-linear, sequence {args.smollm2_seq}, {args.threads} thread(s), {folder}"
    )
    out: dict = {"folder": str(folder), "seq": args.smollm2_seq, "threads": args.threads, "batches": {}}
    for mb in args.smollm2_batches:
        torch.set_num_threads(args.threads)
        args_mb = argparse.Namespace(**{**vars(args), "micro_batch": mb})
        student, peft, train = confs(str(folder), args_mb, {"name": "smollm2-135m"})
        # token ids below 1000 skip nothing that matters for speed and stay clear of the special tokens' ids
        rows = synthetic_rows(mb * 4, args.smollm2_seq, vocab, 100, args.seed)
        steps = args.smollm2_warmup + args.smollm2_steps
        res = plain_torch_run(
            student, peft, train, rows, 0, steps, args.smollm2_warmup, args.smollm2_budget_s
        )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        capped = " (capped by --smollm2-budget-s)" if res["timed_steps"] < args.smollm2_steps else ""
        print(
            f"  micro batch {mb}: {res['median_step_s']:.2f} s/optimizer step (median of "
            f"{res['timed_steps']} "
            f"after {args.smollm2_warmup} warm-up{capped}; first step {res['first_step_s']:.2f} s), "
            f"{mb * args.smollm2_seq / res['median_step_s']:,.0f} tokens/s, peak RSS so far {rss:.1f} GiB",
            flush=True,
        )
        out["batches"][str(mb)] = {
            "s_per_step": res["median_step_s"],
            "tokens_per_s": mb * args.smollm2_seq / res["median_step_s"],
            "mean_s_per_step": res["s_per_step"],
            "timed_steps": res["timed_steps"],
            "first_step_s": res["first_step_s"],
            "peak_rss_gib": rss,
        }
    return out


def keep_memory() -> None:
    """glibc: serve large blocks from the heap (no mmap per activation buffer) and never trim it."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 2**31 - 1)):
        raise RuntimeError("--keep-memory: mallopt failed (glibc only)")


def quiet() -> None:
    """Keep the output to the figures: Lightning's banner and hints, progress bars, known warnings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    import pytorch_lightning  # noqa: F401 - it sets its loggers' levels on import; override after
    import transformers

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "exp3rt", "DeepSpeed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings(
        "ignore", module=r"pytorch_lightning\..*|lightning_fabric\..*|peft\..*|transformers\..*"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--hidden",
        type=int,
        default=64,
        help="tiny Llama hidden size; 64 x 2 layers is the project's tiny student (~65 ms/step on 1 thread)",
    )
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rows", type=int, default=64, help="synthetic sequences (the fixed batch set)")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps at the start of each run")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (torch, Lightning)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both arms")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smollm2-batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--smollm2-seq", type=int, default=512)
    ap.add_argument("--smollm2-steps", type=int, default=5)
    ap.add_argument("--smollm2-warmup", type=int, default=2)
    ap.add_argument(
        "--smollm2-budget-s",
        type=float,
        default=60.0,
        help="per micro batch: stop the timed steps early (after one) past this many seconds",
    )
    ap.add_argument("--skip-overhead", action="store_true", help="skip part 1 (Lightning ÷ plain torch)")
    ap.add_argument("--skip-smollm2", action="store_true", help="skip part 2 (SmolLM2-135M step time)")
    ap.add_argument(
        "--keep-memory",
        action="store_true",
        help="glibc mallopt: keep freed memory in the heap (fewer page faults, steadier figures)",
    )
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be >= 1 (the first step's end is where timing starts)")

    quiet()
    if args.keep_memory:
        keep_memory()
    torch.set_num_threads(args.threads)

    result: dict = {"torch": torch.__version__, "threads": args.threads, "keep_memory": args.keep_memory}
    if not args.skip_overhead:
        print(
            f"Lightning vs plain torch: tiny Llama hidden {args.hidden} x {args.layers} layers, LoRA "
            "r=8 all-linear, "
            f"{args.rows} x {args.seq} tokens, micro batch {args.micro_batch}, {args.warmup} warm-up + "
            f"{args.steps} timed steps, {args.repeats} rounds, {args.threads} thread(s)",
            flush=True,
        )
        result["overhead"] = bench_overhead(args)
    if not args.skip_smollm2:
        result["smollm2"] = bench_smollm2(args)
    if args.json:
        print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
