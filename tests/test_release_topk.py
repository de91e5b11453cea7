"""The EXP3RT release's top-k split as a dataset (loader ``lightgcn_topk``, presets ``release_topk_*``):
the release's anomalies are repaired and counted, bad lines name file and line, the presets select the
source's own split, exp3rt-baselines writes candidates with their relevance, and the reranker judges a
candidates file by the run that wrote it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from exp3rt import CONF_DIR
from exp3rt.config import validate
from exp3rt.data.loaders import load_dataset
from exp3rt.data.problems import DataError

USERS = ["/user/ur1/", "/user/ur2/", "/user/ur3/"]
ITEMS = ["0053125", "3896198", "1219827", "0111161", "0068646"]


def write_lightgcn(d: Path, train: str, test: str, header: bool = True) -> Path:
    d.mkdir(parents=True)
    head = "org_id remap_id\n" if header else ""
    (d / "user_list.txt").write_text("org_id remap_id\n" + "".join(f"{u} {k}\n" for k, u in enumerate(USERS)))
    (d / "item_list.txt").write_text(head + "".join(f"{i} {k}\n" for k, i in enumerate(ITEMS)))
    (d / "train.txt").write_text(train)
    (d / "test.txt").write_text(test)
    return d


def topk_cfg(path: Path, **over):
    ds = {
        "name": "topk_fixture",
        "loader": "lightgcn_topk",
        "domain": "movie",
        "scale": {"min": 0, "max": 1},
        "path": str(path),
        "require_review": False,
    } | over
    return validate(OmegaConf.create({"dataset": ds})).dataset


def pairs(df: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df["user_id"].astype(str), df["item_id"].astype(str), strict=True))


# the release's anomalies in miniature: test.txt repeats user 0 (lines 1 and 3) and lists the pair (0, 2)
# twice, train.txt lists (1, 3) twice, (0, 1) is in both files, item_list.txt has no header
ANOMALOUS_TRAIN = "0 0 1\n1 3 3 4\n2 0\n"
ANOMALOUS_TEST = "0 2 1\n1 0\n0 2 4\n2\n"


def test_loader_repairs_and_counts_every_anomaly(tmp_path):
    d = write_lightgcn(tmp_path / "topk", ANOMALOUS_TRAIN, ANOMALOUS_TEST, header=False)
    ds, problems = load_dataset(topk_cfg(d))
    n = problems.notes
    assert n["test.txt: repeated user lines (merged into the user's first line)"] == 1
    assert n["test.txt: item ids on repeated user lines"] == 2
    assert n["test.txt: duplicate (user, item) pairs (kept once)"] == 1
    assert n["train.txt: duplicate (user, item) pairs (kept once)"] == 1
    assert n["test.txt: pairs also in train.txt (dropped from test, kept for training)"] == 1
    assert n["item_list.txt: id list without a header line (read from line 1)"] == 1
    assert n["users with no items in test.txt"] == 1
    assert problems.total_skipped == 0
    labels = ds.extras["split_labels"]
    train = labels[labels["split"] == "train"]
    test = labels[labels["split"] == "test"]
    u1, u2, u3 = USERS
    assert pairs(train) == {(u1, ITEMS[0]), (u1, ITEMS[1]), (u2, ITEMS[3]), (u2, ITEMS[4]), (u3, ITEMS[0])}
    # (u1, item 1) is a training pair, so it is not evaluated; the repeated line's item 4 is merged in
    assert pairs(test) == {(u1, ITEMS[2]), (u1, ITEMS[4]), (u2, ITEMS[0])}
    assert not pairs(train) & pairs(test)
    inter = ds.interactions
    assert len(inter) == 8 and set(inter["rating"]) == {1.0}
    assert pairs(inter) == pairs(labels)
    assert sorted(ds.items["item_id"]) == sorted(ITEMS)  # the whole catalogue, in original ids
    assert ds.extras["topk_user_ids"]["org_id"].tolist() == USERS


def test_pairs_in_both_files_follow_the_duplicates_policy(tmp_path):
    d = write_lightgcn(tmp_path / "topk", ANOMALOUS_TRAIN, ANOMALOUS_TEST)
    u1 = USERS[0]
    ds, problems = load_dataset(topk_cfg(d, duplicates="keep_latest"))
    labels = ds.extras["split_labels"]
    assert (u1, ITEMS[1]) in pairs(labels[labels["split"] == "test"])
    assert (u1, ITEMS[1]) not in pairs(labels[labels["split"] == "train"])
    assert (
        problems.notes["train.txt: pairs also in test.txt (dropped from training, kept as test pairs)"] == 1
    )

    with pytest.raises(DataError) as ei:
        load_dataset(topk_cfg(d, duplicates="error"))
    assert (ei.value.file, ei.value.line) == (str(d / "test.txt"), 1)
    assert "also in train.txt (line 1)" in str(ei.value) and "dataset.duplicates=keep_first" in str(ei.value)
    ds, problems = load_dataset(topk_cfg(d, duplicates="error", strict=False))
    assert problems.skipped["test.txt: pair also in train.txt"] == 1
    assert (u1, ITEMS[1]) not in pairs(ds.extras["split_labels"].query("split == 'test'"))


def test_bad_lines_name_file_line_and_field(tmp_path):
    d = write_lightgcn(tmp_path / "topk", "0 0\n1 1\n", "0 2\n1 x 3\n7 1\n")
    with pytest.raises(DataError) as ei:
        load_dataset(topk_cfg(d))
    assert (ei.value.file, ei.value.line, ei.value.field) == (str(d / "test.txt"), 2, "item_remap")
    assert "'x' is not an integer" in str(ei.value)
    ds, problems = load_dataset(topk_cfg(d, strict=False))
    assert problems.total_skipped == 2  # item x, user 7
    assert problems.examples[next(k for k in problems.skipped if k.startswith("user_remap"))][0]["line"] == 3
    assert pairs(ds.extras["split_labels"].query("split == 'test'")) == {
        (USERS[0], ITEMS[2]),
        (USERS[1], ITEMS[3]),
    }
    # a first line that is neither the header nor a mapping is bad input
    (d / "user_list.txt").write_text("user remap\n/user/ur1/ 0\n")
    with pytest.raises(DataError, match="expected the header 'org_id remap_id'") as ei:
        load_dataset(topk_cfg(d))
    assert (ei.value.file, ei.value.line) == (str(d / "user_list.txt"), 1)


def test_loader_config_errors(tmp_path):
    from exp3rt.config import ConfigError

    d = write_lightgcn(tmp_path / "topk", "0 0\n", "0 1\n")
    with pytest.raises(ConfigError, match="scale min 0, max 1"):
        load_dataset(topk_cfg(d, scale={"min": 2, "max": 5}))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_dataset(topk_cfg(d / "train.txt"))


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.parametrize("entry", ["baselines", "train", "pipeline", "annotate"])
def test_presets_select_the_source_split(entry):
    for preset in ("release_topk_imdb", "release_topk_amazon_book"):
        cfg = compose_cfg(entry, [f"dataset={preset}"])
        assert cfg.dataset.loader == "lightgcn_topk" and cfg.split.strategy == "predefined"
        assert compose_cfg(entry, [f"dataset={preset}", "split=random"]).split.strategy == "random"
    assert compose_cfg(entry, []).split.strategy == "random"  # other datasets keep the entry point's split


FAST = ["baselines.retrieval.bpr_epochs=3", "baselines.retrieval.lightgcn_epochs=3"]


def test_baselines_cli_on_a_given_folder_reports_the_repairs(tmp_path, capsys):
    """`exp3rt-baselines dataset=release_topk_imdb dataset.path=<folder>`: the folder's own split, the
    repairs on the console and in metrics.json, candidates never holding a training pair."""
    from exp3rt.cli.baselines import run

    d = write_lightgcn(tmp_path / "topk", ANOMALOUS_TRAIN, ANOMALOUS_TEST, header=False)
    cfg = compose_cfg(
        "baselines",
        [
            "dataset=release_topk_imdb",
            f"dataset.path={d}",
            f"paths.artifacts_dir={tmp_path}/artifacts",
            *FAST,
        ],
    )
    metrics = run(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    assert metrics["split"]["strategy"] == "predefined"
    assert metrics["split"]["stats"]["counts"] == {"train": 5, "valid": 0, "test": 3}
    notes = metrics["data_report"]["notes"]
    assert notes["test.txt: repeated user lines (merged into the user's first line)"] == 1
    assert "Repaired in the source (data report): " in out and "test.txt: pairs also in train.txt" in out
    cand = pd.read_parquet(tmp_path / "run" / "candidates" / "lightgcn.parquet")
    train = pd.read_parquet(Path(metrics["split"]["dir"]) / "train.parquet")
    assert set(cand["user_id"]) == {USERS[0], USERS[1]} and not pairs(cand) & pairs(train)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    from conftest import shared_data_dir

    from exp3rt.cli.baselines import run

    folder = shared_data_dir() / "exp3rt-release-sample" / "topk-imdb"
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} is absent")
    root = tmp_path_factory.mktemp("topk")
    cfg = compose_cfg(
        "baselines", ["dataset=release_topk_imdb", f"paths.artifacts_dir={root}/artifacts", *FAST]
    )
    return run(cfg, root / "run"), root / "run"


@pytest.mark.shared_data
def test_baselines_on_the_shared_topk_sample(shared_data, sample_run, capsys):
    metrics, run_dir = sample_run
    assert metrics["split"]["strategy"] == "predefined"
    assert metrics["split"]["stats"]["counts"] == {"train": 11187, "valid": 0, "test": 3426}
    assert metrics["dataset"]["users"] == 791 and metrics["dataset"]["items"] == 1155
    assert metrics["rating"] == {} and "implicit feedback" in metrics["rating_skipped"]
    for name in ("popularity", "bpr_mf", "lightgcn"):
        r = metrics["retrieval"][name]
        assert {"recall@20", "ndcg@20", "hit@20", "recall@10"} <= set(r) and r["users_evaluated"] == 791
    report = (run_dir / "report.md").read_text()
    assert "| ndcg@20 | hit@20 |" in report and "Rating prediction: skipped" in report
    cand = pd.read_parquet(run_dir / "candidates" / "lightgcn.parquet")
    assert cand.groupby("user_id").size().max() == 20 and cand["user_id"].nunique() == 791
    assert cand["user_id"].str.startswith("/user/ur").all()  # the release's own ids, as in its rating files
    train = pd.read_parquet(Path(metrics["split"]["dir"]) / "train.parquet")
    assert not pairs(cand) & pairs(train)  # training items masked
    rel = pd.read_parquet(run_dir / "candidates" / "relevant.parquet")
    test = pd.read_parquet(Path(metrics["split"]["dir"]) / "test.parquet")
    assert pairs(rel) == pairs(test)
    meta = json.loads((run_dir / "candidates" / "meta.json").read_text())
    assert meta["split_dir"] == metrics["split"]["dir"] and meta["users_with_relevant"] == 791


# --------------------------------------------------------------------------------------------------
# reranking a candidates file written by another run

WORLD = [
    "dataset.world.n_users=12",
    "dataset.world.n_items=10",
    "dataset.world.min_per_user=4",
    "dataset.world.max_per_user=5",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from exp3rt.cli.annotate import run as annotate
    from exp3rt.cli.train import run as train

    root = tmp_path_factory.mktemp("student")
    base = [f"paths.artifacts_dir={root}/artifacts", "progress=false", *WORLD]
    annotate(compose_cfg("annotate", base), root / "annotate")
    train(
        compose_cfg("train", [*base, "trainer.max_steps=5", "logger=csv", "train.val_generate=false"]),
        root / "train",
    )
    return root


def test_rerank_judges_candidates_by_the_run_that_wrote_them(trained, tmp_path):
    """Candidates from another run (its users partly unknown to the student, none of its relevant items
    in the student's test split) are judged by relevant.parquet beside them, not the student's split."""
    from exp3rt.baselines.retrievers import write_candidates, write_relevant
    from exp3rt.cli.evaluate import run

    split_dir = next((trained / "artifacts" / "data").glob("*/splits/*"))
    test = pd.read_parquet(split_dir / "test.parquet")
    train = pd.read_parquet(split_dir / "train.parquet")
    users = sorted(test.user_id.unique())[:2]
    items = sorted(train.item_id.unique())
    cands, relevant = {}, {}
    for u in users:  # candidates the student's split calls irrelevant (none of u's test items)
        own = set(test[test.user_id == u].item_id) | set(train[train.user_id == u].item_id)
        cands[u] = [i for i in items if i not in own][:3]
        relevant[u] = {cands[u][-1]}
    cands["/user/ur_other/"] = items[:3]  # a user the student has never seen: unscored, still counted
    relevant["/user/ur_other/"] = {items[0]}
    relevant["/user/ur_none/"] = set()  # a test user of that run without relevant items: not evaluated
    out = tmp_path / "other_run" / "candidates"
    path = write_candidates(cands, out / "lightgcn.parquet")
    write_relevant(relevant, out)
    common = [
        f"paths.artifacts_dir={trained}/artifacts",
        f"run_dir={trained}/train",
        "eval.max_pairs=1",
        "eval.mode=fast",
        "eval.rerank=true",
        f"eval.candidates_file={path}",
        "eval.num_candidates=3",
        "eval.wandb=false",
    ]
    rr = run(compose_cfg("evaluate", common), tmp_path / "ev")["rerank"]
    assert rr["users"] == 3 and rr["relevant"].startswith("the candidates' run")
    assert rr["before/hit@5"] == rr["after/hit@5"] == 1.0  # each user's relevant item is among the 3
    assert rr["candidates_unscored"] >= 3  # the unknown user's
    # the same file without relevant.parquet: the student's own test pairs, which it misses entirely
    (out / "relevant.parquet").unlink()
    rr = run(compose_cfg("evaluate", common), tmp_path / "ev2")["rerank"]
    assert rr["relevant"] == "this split's test pairs" and rr["users"] == 2
    assert rr["before/hit@5"] == rr["after/hit@5"] == 0.0


def test_benchmark_script_on_a_tiny_folder(tmp_path, capsys):
    """benchmarks/bench_release_topk.py without RecBole: our two retrievers on the loader's split, and
    the RecBole atomic files it would hand over (valid = test, never evaluated)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_release_topk", CONF_DIR.parent / "benchmarks" / "bench_release_topk.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    d = write_lightgcn(tmp_path / "topk", ANOMALOUS_TRAIN, ANOMALOUS_TEST)
    result = bench.main([str(d), "--k", "2", "--lightgcn-epochs", "2", "--bpr-epochs", "2", "--threads", "1"])
    assert set(result["ours"]) == {"lightgcn", "bpr_mf"} and result["recbole"] == {}
    assert all(0.0 <= r["recall"] <= 1.0 and r["users"] == 2 for r in result["ours"].values())
    assert result["notes"]["test.txt: pairs also in train.txt (dropped from test, kept for training)"] == 1
    assert "| lightgcn |" in capsys.readouterr().out
    train, test, _ = bench.load_split(d)
    out = bench.write_atomic(train, test, tmp_path / "atomic", "topk")
    frames = {
        p: pd.read_csv(out / f"topk.{p}.inter", sep="\t", dtype=str) for p in ("train", "valid", "test")
    }
    assert list(frames["train"].columns) == ["user_id:token", "item_id:token"]
    assert len(frames["train"]) == len(train) and len(frames["test"]) == len(frames["valid"]) == len(test)
