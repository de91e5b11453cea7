"""Our LightGCN and BPR-MF on the EXP3RT release's top-k split, optionally beside RecBole's on the same split.

The folder is a LightGCN folder (train.txt, test.txt, user_list.txt, item_list.txt), read by the
``lightgcn_topk`` loader exactly as ``exp3rt-baselines dataset=release_topk_imdb`` reads it (repeated user
lines merged, repeated pairs kept once, pairs in both files dropped from test: the counts are printed).
Protocol: every train.txt pair is a positive; full ranking over every training item the user has not
interacted with in training; relevant = the user's test.txt items; Recall@k and nDCG@k averaged over the
test users. Training seconds are the retriever's ``fit`` (ours) or ``trainer.fit`` (RecBole), no evaluation.

With ``--recbole-python`` (the python of a separate environment with RecBole 1.2.1; RecBole is not a
dependency of this project) the same split is written as RecBole atomic files (``<name>.train.inter``,
``<name>.valid.inter``, ``<name>.test.inter``; valid is a copy of test and is never evaluated:
``eval_step: 0``) and RecBole's ``LightGCN`` / ``BPR`` are trained with the same dimension, layers,
learning rate, batch size, epochs and L2 weight, full-sort evaluated on test (its test masking removes
the train items), in a subprocess. The table shows both and the ratio ours / RecBole. The L2 terms are
not identical: ours is ``reg * (|e_u|^2 + |e_i|^2 + |e_j|^2) / (2 * batch)`` on the ego embeddings,
RecBole's LightGCN ``reg_weight * (|E_u| + |E_i| + |E_j|) / batch`` (norms, not squared, by default)
and its BPR has none.

    python benchmarks/bench_release_topk.py ../shared/data/exp3rt-release-sample/topk-imdb
    python benchmarks/bench_release_topk.py /data/exp3rt/topk/imdb --recbole-python /tmp/recbole/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from exp3rt.baselines.retrievers import build_retrievers, evaluate_retriever
from exp3rt.config import RetrieverBaselinesConf, validate
from exp3rt.data.loaders import load_dataset

OURS = {"lightgcn": "LightGCN", "bpr_mf": "BPR"}  # ours -> RecBole's model name

RECBOLE_SCRIPT = r"""
import json, sys, time
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed

args = json.loads(sys.stdin.read())  # not argv: RecBole reads its own options there
out = {}
for name, extra in args["models"].items():
    config = Config(model=name, dataset=args["dataset"], config_dict={**args["common"], **extra})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    t0 = time.perf_counter()
    trainer.fit(train_data, valid_data=None, saved=False, show_progress=False)
    seconds = time.perf_counter() - t0
    res = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    k = args["k"]
    out[name] = {"recall": float(res[f"recall@{k}"]), "ndcg": float(res[f"ndcg@{k}"]), "train_s": seconds,
                 "users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1)}
print("RECBOLE_RESULT " + json.dumps(out))
"""


def load_split(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    cfg = validate(
        OmegaConf.create(
            {
                "dataset": {
                    "name": "release_topk_bench",
                    "loader": "lightgcn_topk",
                    "scale": {"min": 0, "max": 1},
                    "path": str(folder),
                    "require_review": False,
                }
            }
        )
    ).dataset
    ds, problems = load_dataset(cfg)
    labels = ds.extras["split_labels"]
    return labels[labels["split"] == "train"], labels[labels["split"] == "test"], dict(problems.notes)


def run_ours(train: pd.DataFrame, test: pd.DataFrame, args) -> dict:
    cfg = OmegaConf.merge(
        OmegaConf.structured(RetrieverBaselinesConf),
        {
            "models": list(OURS),
            "dim": args.dim,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "bpr_epochs": args.bpr_epochs,
            "lightgcn_epochs": args.lightgcn_epochs,
            "lightgcn_layers": args.layers,
            "bpr_reg": args.bpr_reg,
            "lightgcn_reg": args.lightgcn_reg,
            "lightgcn_lr": args.lightgcn_lr,
            "seed": args.seed,
        },
    )
    train = train.assign(rating=1.0)
    test = test.assign(rating=1.0)
    users = sorted(test["user_id"].unique())
    out = {}
    for name, retriever in build_retrievers(cfg).items():
        t0 = time.perf_counter()
        retriever.fit(train)
        seconds = time.perf_counter() - t0
        m = evaluate_retriever(retriever.recommend(users, args.k), test, [args.k])
        out[name] = {
            "recall": m[f"recall@{args.k}"],
            "ndcg": m[f"ndcg@{args.k}"],
            "train_s": seconds,
            "users": m["users_evaluated"],
        }
    return out


def write_atomic(train: pd.DataFrame, test: pd.DataFrame, root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for part, frame in (("train", train), ("valid", test), ("test", test)):
        frame[["user_id", "item_id"]].rename(
            columns={"user_id": "user_id:token", "item_id": "item_id:token"}
        ).to_csv(d / f"{name}.{part}.inter", sep="\t", index=False)
    return d


def run_recbole(python: str, train: pd.DataFrame, test: pd.DataFrame, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="recbole-topk-") as tmp:
        root = Path(tmp)
        write_atomic(train, test, root, "topk")
        common = {
            "data_path": str(root),
            "benchmark_filename": ["train", "valid", "test"],
            "load_col": {"inter": ["user_id", "item_id"]},
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "eval_args": {"order": "RO", "mode": "full", "group_by": "user"},
            "metrics": ["Recall", "NDCG"],
            "topk": [args.k],
            "valid_metric": f"Recall@{args.k}",
            "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
            "embedding_size": args.dim,
            "learning_rate": args.lr,
            "train_batch_size": args.batch_size,
            "eval_batch_size": 4096,
            "eval_step": 0,
            "stopping_step": 10**6,
            "seed": args.seed,
            "reproducibility": True,
            "use_gpu": False,
            "show_progress": False,
            "checkpoint_dir": str(root / "saved"),
            "log_wandb": False,
            "state": "WARNING",
        }
        models = {
            "LightGCN": {
                "epochs": args.lightgcn_epochs,
                "n_layers": args.layers,
                "reg_weight": args.lightgcn_reg,
                "learning_rate": args.lightgcn_lr or args.lr,
            },
            "BPR": {"epochs": args.bpr_epochs},
        }
        if (
            args.recbole_config == "own"
        ):  # RecBole's own defaults (lr 1e-3, 2 layers, L2 1e-5), a fixed epoch budget
            for key in ("learning_rate", "embedding_size"):
                common.pop(key)
            models = {"LightGCN": {"epochs": args.recbole_epochs}, "BPR": {"epochs": args.recbole_epochs}}
        payload = json.dumps({"dataset": "topk", "common": common, "models": models, "k": args.k})
        proc = subprocess.run(
            [python, "-c", RECBOLE_SCRIPT],
            input=payload,
            capture_output=True,
            text=True,
            cwd=tmp,
            timeout=args.recbole_timeout,
        )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RECBOLE_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"RecBole run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(line.split(" ", 1)[1])


def fmt(x) -> str:
    return "–" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a LightGCN folder, e.g. the release's topk/imdb")
    ap.add_argument("--recbole-python", help="python of a separate environment with RecBole 1.2.1")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--lightgcn-epochs", type=int, default=30)
    ap.add_argument("--bpr-epochs", type=int, default=50)
    ap.add_argument("--lightgcn-reg", type=float, default=1e-4)
    ap.add_argument(
        "--lightgcn-lr", type=float, default=None, help="LightGCN's own learning rate (default: --lr)"
    )
    ap.add_argument("--bpr-reg", type=float, default=3e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for our models")
    ap.add_argument("--recbole-timeout", type=int, default=3600)
    ap.add_argument(
        "--recbole-config",
        choices=["same", "own"],
        default="same",
        help="same: RecBole with our hyperparameters; own: RecBole's defaults for --recbole-epochs epochs",
    )
    ap.add_argument(
        "--recbole-epochs", type=int, default=300, help="epochs for --recbole-config own (RecBole's default)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    train, test, notes = load_split(args.folder)
    print(
        f"{args.folder}: train {len(train):,} pairs, test {len(test):,} pairs, "
        f"{test['user_id'].nunique():,} test users, "
        f"{train['item_id'].nunique():,} training items"
    )
    for kind, n in notes.items():
        print(f"  repaired: {kind}: {n}")
    ours = run_ours(train, test, args)
    theirs = run_recbole(args.recbole_python, train, test, args) if args.recbole_python else {}
    k = args.k
    if not theirs:
        print(f"\n| model | Recall@{k} | nDCG@{k} | train s |\n|---|---|---|---|")
        for name, r in ours.items():
            print(f"| {name} | {r['recall']:.4f} | {r['ndcg']:.4f} | {r['train_s']:.1f} |")
    else:
        print(
            f"\n| model | Recall@{k} ours | RecBole | ratio | nDCG@{k} ours | RecBole | ratio | train "
            "s ours | RecBole | ratio |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, rb_name in OURS.items():
            a, b = ours[name], theirs.get(rb_name, {})
            cells = [name]
            for key, digits in (("recall", 4), ("ndcg", 4), ("train_s", 1)):
                x, y = a.get(key), b.get(key)
                ratio = f"{x / y:.2f}" if x is not None and y else "–"
                cells += [f"{x:.{digits}f}", "–" if y is None else f"{y:.{digits}f}", ratio]
            print("| " + " | ".join(cells) + " |")
    result = {
        "folder": str(args.folder),
        "k": k,
        "ours": ours,
        "recbole": theirs,
        "notes": notes,
        "settings": {key: v for key, v in vars(args).items() if key not in ("folder",)},
    }
    print("\n" + json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
