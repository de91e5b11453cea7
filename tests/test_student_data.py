"""The student's SFT data layer on a real extractive annotation directory and the tiny BPE tokenizer:
rating text mapping, every task's examples (skips counted), task weights, ablation prompts, answer-only
labels, input-side truncation, the on-disk dataset cache and collate."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from exp3rt import CONF_DIR
from exp3rt.config import AblationConf, ConfigError, ScaleConf, StudentDataConf, validate
from exp3rt.data.schema import describe_item
from exp3rt.data.splits import Split
from exp3rt.student.examples import build_examples, strip_average
from exp3rt.student.ratings import RatingTextError, RatingTokens
from exp3rt.student.tokenize import ELLIPSIS, ExampleTooLong, build_dataset, collate, encode, render

SMALL_WORLD = [
    "dataset.world.n_users=24",
    "dataset.world.n_items=20",
    "dataset.world.min_per_user=5",
    "dataset.world.max_per_user=8",
    "split=per_user",
    "split.valid_ratio=0.1",
]
ABLATIONS = sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A full annotation directory from the offline extractive teacher, with its split and items."""
    from exp3rt.cli.annotate import run

    tmp = tmp_path_factory.mktemp("annot")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="annotate",
            overrides=[f"paths.artifacts_dir={tmp}/artifacts", "progress=false", *SMALL_WORLD],
        )
    directory = Path(run(cfg, tmp / "run")["directory"])
    meta = json.loads((directory / "meta.json").read_text())
    parts = {p: pd.read_parquet(Path(meta["split_dir"]) / f"{p}.parquet") for p in ("train", "valid", "test")}
    split = Split(Path(meta["split_dir"]), "fp", parts["train"], parts["valid"], parts["test"], {}, True)
    items = pd.read_parquet(Path(meta["dataset_dir"]) / "items.parquet")
    return {"dir": directory, "split": split, "items": items, "tmp": tmp}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    from exp3rt.models.tiny import build_tiny_llama

    return AutoTokenizer.from_pretrained(str(build_tiny_llama(tmp_path_factory.mktemp("tiny"), vocab="bpe")))


def examples(world, directory=None, ablation=None, **sft):
    cfg = OmegaConf.merge(OmegaConf.structured(StudentDataConf), sft)
    ab = None if ablation is None else load_ablation(ablation)
    return build_examples(
        directory or world["dir"], world["split"], world["items"], "movie", ScaleConf(), cfg, ab
    )


def load_ablation(name: str):
    node = OmegaConf.load(CONF_DIR / "ablation" / f"{name}.yaml")
    node.pop("defaults")
    return OmegaConf.merge(OmegaConf.structured(AblationConf), node)


def artifact(world, stage: str) -> pd.DataFrame:
    return pd.read_parquet(world["dir"] / f"{stage}.parquet")


# ------------------------------------------------------------------------------------ rating text


@pytest.mark.parametrize(
    "lo,hi,offset,texts",
    [
        (1, 5, 0, ["1", "2", "3", "4", "5"]),
        (1, 10, 0, [str(i) for i in range(1, 11)]),
        (1, 10, -1, [str(i) for i in range(10)]),
        (1, 5, -1, ["0", "1", "2", "3", "4"]),
    ],
)
def test_rating_text_round_trip(lo, hi, offset, texts):
    rt = RatingTokens(lo, hi, offset=offset)
    assert rt.texts == texts
    for r in range(lo, hi + 1):
        assert rt.from_text(rt.to_text(r)) == r
        assert rt.from_text(f" {rt.to_text(r)}\n") == r
    assert rt.to_text(float(hi)) == texts[-1] and rt.from_text(texts[0] + ".0") == lo


def test_half_step_scale():
    rt = RatingTokens(1, 3, step=0.5)
    assert rt.texts == ["1", "1.5", "2", "2.5", "3"]
    assert rt.from_text("2.5") == 2.5 and rt.to_text(1.5) == "1.5"


def test_ratings_off_the_scale_are_rejected_with_a_sentence():
    rt = RatingTokens(1, 5)
    with pytest.raises(
        RatingTextError, match=r"rating 6 is outside the dataset's scale 1-5; check dataset.scale"
    ):
        rt.to_text(6)
    with pytest.raises(RatingTextError, match="outside the dataset's scale"):
        rt.to_text(0)
    with pytest.raises(RatingTextError, match=r"rating 2.5 is not on the scale's steps of 1"):
        rt.to_text(2.5)
    imdb = RatingTokens(1, 10, offset=-1)
    with pytest.raises(RatingTextError, match=r"'10' is not a rating; the student writes one of \['0', '1'"):
        imdb.from_text("10")  # 10 is written as 9
    with pytest.raises(RatingTextError, match="'great' is not a rating"):
        rt.from_text("great")
    with pytest.raises(RatingTextError, match="min < max"):
        RatingTokens(5, 1)


def test_rating_token_ids_come_from_the_tokenizer(tok):
    five = RatingTokens(1, 5)
    ids = five.token_ids(tok)
    assert ids == [[tok.convert_tokens_to_ids(str(d))] for d in range(1, 6)]
    assert five.single_token is True
    ten = RatingTokens(1, 10)
    ids10 = ten.token_ids(tok)
    assert ids10[-1] == [tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("0")]  # "10": two tokens
    assert [len(x) for x in ids10] == [1] * 9 + [2]
    assert ten.single_token is False
    shifted = RatingTokens(1, 10, offset=-1)
    assert shifted.token_ids(tok) == [[tok.convert_tokens_to_ids(str(d))] for d in range(10)]
    assert shifted.single_token is True
    with pytest.raises(RatingTextError, match="known once token_ids"):
        _ = RatingTokens(1, 5).single_token


# ------------------------------------------------------------------------------------ examples


def test_every_task_from_a_real_annotation_dir(world):
    ex = examples(world)
    train, split = ex["train"], world["split"]
    by = {t: [e for e in train if e.task == t] for t in ("extract", "user_profile", "item_profile", "rating")}
    extract, users, items, rationale = (
        artifact(world, s) for s in ("extract", "user_profile", "item_profile", "rationale")
    )
    skipped = ex.report["skipped"]

    # extract: one example per ok preference set, the review taken from the split's training frame
    assert len(by["extract"]) == (extract.status == "ok").sum() == len(split.train)
    first = by["extract"][0]
    review = split.train.set_index(["user_id", "item_id"]).loc[
        (first.meta["user_id"], first.meta["item_id"]), "review"
    ]
    assert review in first.user
    assert (
        first.answer
        == extract.set_index(["user_id", "item_id"]).loc[
            (first.meta["user_id"], first.meta["item_id"]), "preference_set"
        ]
    )

    # user profiles: every ok profile; the answer drops the computed [Average Rating] section
    assert len(by["user_profile"]) == (users.status == "ok").sum() == 24
    u = by["user_profile"][0]
    profile = users.set_index("user_id").loc[u.meta["user_id"], "profile"]
    assert "[Average Rating]" in profile and "[Average Rating]" not in u.answer
    assert u.answer == profile[: profile.index("\n\n[Average Rating]")]
    assert u.user.count("\n---\n") == u.meta["n_sets"] - 1 == (extract.user_id == u.meta["user_id"]).sum() - 1

    # item profiles: ok rows (identical input+answer pairs merged, counted); no_history rows counted
    n_ok = (items.status == "ok").sum()
    assert len(by["item_profile"]) + skipped.get("item_profile", {}).get("duplicate", 0) == n_ok
    assert skipped["item_profile"]["no_history"] == (items.status == "no_history").sum()
    it = by["item_profile"][0]
    row = (
        items[(items.item_id == it.meta["item_id"]) & items.target_user.isna()].iloc[0]
        if it.meta["target_user"] is None
        else None
    )
    assert row is not None and it.meta["n_sets"] == len(row["source_users"]) == it.user.count("\n---\n") + 1

    # rating: ok rationales → reasoning + rating; valid/test pairs → the rating line, the truth in meta
    assert len(by["rating"]) == (rationale.status == "ok").sum() == len(split.train)
    r = by["rating"][0]
    truth = rationale.set_index(["user_id", "item_id"]).loc[(r.meta["user_id"], r.meta["item_id"])]
    assert r.answer == f"Reasoning: {truth['rationale']}\nPredicted User Rating: {truth['rating']:g}"
    assert re.fullmatch(r"Reasoning: .+\nPredicted User Rating: [1-5]", r.answer, re.DOTALL)
    assert ex.report["counts"]["valid"] == {"rating": len(split.valid)} and len(ex["valid"]) == 18
    assert ex.report["counts"]["test"] == {"rating": len(split.test)}
    t = ex["test"][0]
    gold = split.test.set_index(["user_id", "item_id"]).loc[(t.meta["user_id"], t.meta["item_id"]), "rating"]
    assert (
        t.meta["rating"] == gold
        and t.answer == f"Predicted User Rating: {gold:g}"
        and t.meta["has_reasoning"] is False
    )
    assert "warm" in t.meta
    # the item description is the teacher's, and never the item's hidden `extra`
    item_row = world["items"].set_index("item_id").loc[t.meta["item_id"]]
    assert describe_item(item_row.to_dict(), "movie") in t.user
    assert str(item_row["extra"]) not in t.user


def test_failed_upstream_rows_are_skipped_and_counted(world, tmp_path):
    d = tmp_path / "annot"
    shutil.copytree(world["dir"], d)
    extract = pd.read_parquet(d / "extract.parquet")
    extract.loc[:2, "status"] = "failed"
    extract.loc[:2, "preference_set"] = None
    extract.to_parquet(d / "extract.parquet", index=False)
    rationale = pd.read_parquet(d / "rationale.parquet")
    rationale.loc[:1, "status"] = "failed"
    rationale.loc[:1, "rationale"] = None
    rationale.to_parquet(d / "rationale.parquet", index=False)
    users = pd.read_parquet(d / "user_profile.parquet")
    victim = world["split"].test.user_id.iloc[0]
    users.loc[users.user_id == victim, ["status", "profile"]] = ["failed", None]
    users.to_parquet(d / "user_profile.parquet", index=False)

    ex = examples(world, d)
    counts, skipped = ex.report["counts"], ex.report["skipped"]
    assert counts["train"]["extract"] == len(extract) - 3 and skipped["extract"] == {"failed": 3}
    assert (
        counts["train"]["rating"] == len(rationale) - 2 and skipped["rating"]["train:rationale_failed"] == 2
    )
    assert skipped["user_profile"]["failed"] == 1 and counts["train"]["user_profile"] == 23
    n_test = (world["split"].test.user_id == victim).sum()
    n_valid = (world["split"].valid.user_id == victim).sum()
    assert skipped["rating"]["test:user_profile_missing"] == n_test > 0
    assert skipped["rating"].get("valid:user_profile_missing", 0) == n_valid
    assert counts["test"]["rating"] == len(world["split"].test) - n_test
    # an item profile whose reviewers' sets now failed cannot be rebuilt: counted, not silently changed
    assert skipped["item_profile"]["source_set_missing"] > 0


def test_missing_artifact_names_the_stage_to_run(world, tmp_path):
    d = tmp_path / "annot"
    shutil.copytree(world["dir"], d)
    (d / "rationale.parquet").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"'rating' task needs the teacher's rationale stage \(exp3rt-annotate stage=rationale\)",
    ):
        examples(world, d)
    assert examples(world, d, tasks=["extract"]).report["counts"]["train"] == {"extract": 110}


def test_task_weights_resample_train_examples_deterministically(world):
    plain = examples(world).report["counts"]["train"]
    a = examples(world, task_weights={"rating": 2.0, "extract": 0.5, "user_profile": 0.0}, seed=3)
    b = examples(world, task_weights={"rating": 2.0, "extract": 0.5, "user_profile": 0.0}, seed=3)
    c = examples(world, task_weights={"rating": 2.0, "extract": 0.5, "user_profile": 0.0}, seed=4)
    assert a.report["counts"]["train"] == {
        "extract": 55,
        "item_profile": plain["item_profile"],
        "rating": 2 * plain["rating"],
    }
    assert [e.user for e in a["train"]] == [e.user for e in b["train"]]
    assert [e.user for e in a["train"]] != [e.user for e in c["train"]]
    assert len({e.user for e in a["train"] if e.task == "extract"}) == 55  # a sample without repeats
    assert a.report["counts"]["test"] == examples(world).report["counts"]["test"]  # eval untouched
    with pytest.raises(ConfigError, match=r"'sft.task_weights.rating': 'rating' is not in sft.tasks"):
        examples(world, tasks=["extract"], task_weights={"rating": 2.0})


def test_rating_offset_changes_the_written_scale(world):
    ex = examples(world, tasks=["rating"], rating_offset=-1)
    t = ex["test"][0]
    assert t.answer == f"Predicted User Rating: {t.meta['rating'] - 1:g}" and "on a 0-4 scale" in t.user
    assert ex.report["rating_texts"] == ["0", "1", "2", "3", "4"]


# ------------------------------------------------------------------------------------ ablations


def test_each_ablation_config_flips_only_its_named_switches():
    full = OmegaConf.to_container(load_ablation("full"))
    assert set(ABLATIONS) == {
        "full",
        "no_reasoning",
        "no_user_profile",
        "no_item_profile",
        "no_item_description",
        "no_avg_rating",
        "raw_reviews",
    }
    for name in ABLATIONS:
        cfg = OmegaConf.to_container(load_ablation(name))
        changed = {k for k in cfg if cfg[k] != full[k]} - {"name"}
        assert cfg["name"] == name
        assert name == "full" or changed == {name.removeprefix("no_")}


def test_each_ablation_changes_the_rating_prompt_exactly_as_named(world):
    rationale = artifact(world, "rationale").set_index(["user_id", "item_id"])
    runs = {name: examples(world, tasks=["rating"], ablation=name) for name in ABLATIONS}
    full = runs["full"]["train"][0]
    key = (full.meta["user_id"], full.meta["item_id"])
    pick = {
        name: next(e for e in run["train"] if (e.meta["user_id"], e.meta["item_id"]) == key)
        for name, run in runs.items()
    }
    row = rationale.loc[key]
    up = f"User profile:\n{row['user_profile']}"
    desc = f"Movie description:\n{row['item_description']}"
    ip = f"Movie profile (from other reviewers):\n{row['item_profile']}"
    assert full.user.startswith(f"{up}\n\n{desc}\n\n{ip}\n\n")
    assert all(p.system == full.system for p in pick.values())

    assert pick["no_user_profile"].user == full.user.replace(f"{up}\n\n", "")
    assert pick["no_item_description"].user == full.user.replace(f"{desc}\n\n", "")
    assert pick["no_item_profile"].user == full.user.replace(f"{ip}\n\n", "")
    assert "[Average Rating]" in full.user and "[Average Rating]" not in pick["no_avg_rating"].user
    assert pick["no_avg_rating"].user == full.user.replace(
        row["user_profile"], strip_average(row["user_profile"])
    ).replace(row["item_profile"], strip_average(row["item_profile"]))
    for name in ("no_user_profile", "no_item_description", "no_item_profile", "no_avg_rating", "raw_reviews"):
        assert pick[name].answer == full.answer  # the prompt changes, the answer does not

    nr = pick["no_reasoning"]
    assert nr.answer == f"Predicted User Rating: {row['rating']:g}" and nr.meta["has_reasoning"] is False
    context = full.user[: full.user.rindex("\n\n")]
    assert nr.user.startswith(context + "\n\n") and "Reasoning" not in nr.user[len(context) :]

    raw = pick["raw_reviews"].user
    train = world["split"].train
    own_review = train.set_index(["user_id", "item_id"]).loc[key, "review"]
    assert "User profile:" not in raw and "Movie profile" not in raw
    assert raw.startswith("The user's past reviews:\n") and "Reviews of this movie by other users:\n" in raw
    assert f"\n\n{desc}\n\n" in raw and raw.endswith(full.user[full.user.rindex("\n\n") :])
    assert own_review not in raw  # never the target pair's own review
    others = (
        train[(train.user_id == key[0]) & (train.item_id != key[1])]
        .sort_values("timestamp")
        .review.tolist()[-5:]
    )
    assert all(text in raw for text in others)
    # the ablation's counts are those of full: the same pairs, only the prompt differs
    assert {n: r.report["counts"] for n, r in runs.items()} == {
        n: runs["full"].report["counts"] for n in runs
    }


def test_ablation_that_removes_every_input_is_refused(world):
    with pytest.raises(ConfigError, match="the rating prompt would show nothing about the pair"):
        build_examples(
            world["dir"],
            world["split"],
            world["items"],
            "movie",
            ScaleConf(),
            None,
            {"name": "empty", "user_profile": False, "item_profile": False, "item_description": False},
        )


def test_sft_ablation_and_prompt_groups_compose_and_validate():
    def composed(overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(
                config_name="annotate", overrides=["+sft=default", "+student_prompt=exp3rt_v1", *overrides]
            )

    cfg = validate(composed(["+ablation=no_reasoning"]))
    assert (
        cfg.sft.max_length == 2048 and cfg.ablation.reasoning is False and cfg.ablation.user_profile is True
    )
    assert cfg.student_prompt.rating.answer_rating_only == "Predicted User Rating: {rating}"
    with pytest.raises(ConfigError, match=r"'sft.tasks': unknown or no tasks \['translate'\]"):
        validate(composed(["+ablation=full", "sft.tasks=[extract,translate]"]))
    with pytest.raises(ConfigError, match=r"'sft.task_weights.rating' must be >= 0"):
        validate(composed(["+ablation=full", "+sft.task_weights.rating=-1"]))


def test_section_order_and_instruction_first_reorder_the_same_prompt(world):
    """The demo's layout (conf/experiment/demo.yaml): the instruction first, the item's profile, then
    the user's, so the user's profile ends right before the answer. Same texts, same answers, another
    version (a cache key), and the default order's version is unchanged."""
    from exp3rt.student.prompts import StudentPrompts, load_student_prompt

    base = load_student_prompt()
    moved = OmegaConf.merge(
        base,
        {
            "rating": {
                "user": "{instruction}\n\n{context}",
                "section_order": [
                    "item_description",
                    "item_profile",
                    "item_reviews",
                    "user_profile",
                    "user_reviews",
                ],
            }
        },
    )
    cfg = OmegaConf.merge(OmegaConf.structured(StudentDataConf), {"tasks": ["rating", "rating_direct"]})
    ab = load_ablation("no_item_description")
    a = build_examples(
        world["dir"], world["split"], world["items"], "movie", ScaleConf(), cfg, ab, prompt=base
    )
    b = build_examples(
        world["dir"], world["split"], world["items"], "movie", ScaleConf(), cfg, ab, prompt=moved
    )
    assert len(a["train"]) == len(b["train"]) > 0 and len(a["test"]) == len(b["test"]) > 0
    for x, y in zip(a["train"] + a["test"], b["train"] + b["test"], strict=True):
        assert (x.meta["user_id"], x.meta["item_id"], x.answer, x.system) == (
            y.meta["user_id"],
            y.meta["item_id"],
            y.answer,
            y.system,
        )
        context, _, instruction = x.user.rpartition("\n\n")
        user_part, _, item_part = context.partition("\n\nMovie profile")
        assert y.user == f"{instruction}\n\nMovie profile{item_part}\n\n{user_part}"
        assert y.user.rstrip().endswith(user_part.rstrip()) and "[Average Rating]" in user_part
    ratings = RatingTokens.from_config(ScaleConf(), 0.0)
    assert StudentPrompts(moved, "movie", ratings).version != StudentPrompts(base, "movie", ratings).version
    assert (
        a.report["prompt_version"] == "exp3rt-student-v1:73121e30c0"
    )  # an empty section_order changes no cache key
    for order, message in (
        (["item_profile", "user_profile"], r"missing \['item_description', 'user_reviews', 'item_reviews'\]"),
        (
            [
                "user_profile",
                "user_profile",
                "item_profile",
                "item_description",
                "user_reviews",
                "item_reviews",
            ],
            r"named twice \['user_profile'\]",
        ),
        (
            ["user_profile", "item_profil", "item_description", "user_reviews", "item_reviews"],
            r"unknown \['item_profil'\]; missing \['item_profile'\]",
        ),
    ):
        with pytest.raises(ConfigError, match=r"section_order must name each of .* once: " + message):
            StudentPrompts(OmegaConf.merge(base, {"rating": {"section_order": order}}), "movie", ratings)


def test_a_bad_section_order_is_refused_at_config_time():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="pipeline", overrides=["student_prompt.rating.section_order=[user_profile]"]
        )
    with pytest.raises(ConfigError, match=r"student_prompt.rating.section_order must name each"):
        validate(cfg)


# ------------------------------------------------------------------------------------ tokenisation


def test_chat_rendering_and_plain_fallback(world, tok):
    ex = examples(world, tasks=["rating"])["test"][0]
    prompt, answer = render(tok, ex)
    assert (
        prompt == f"<|im_start|>system\n{ex.system}<|im_end|>\n<|im_start|>user\n{ex.user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert answer == ex.answer + "<|im_end|>"
    assert render(tok, ex, add_answer=False) == (prompt, "")
    template = tok.chat_template
    try:
        tok.chat_template = None
        assert render(tok, ex)[0] == f"<|bos|>System: {ex.system}\nUser: {ex.user}\nAssistant: "
    finally:
        tok.chat_template = template


def test_loss_mask_covers_exactly_the_answer_and_eos(world, tok):
    ex = next(e for e in examples(world, tasks=["rating"])["train"])
    enc = encode(tok, ex, 4096)
    prompt, answer = render(tok, ex)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    labels = enc["labels"]
    assert labels[:n_prompt] == [-100] * n_prompt and -100 not in labels[n_prompt:]
    assert enc["input_ids"][n_prompt:] == labels[n_prompt:] and enc["attention_mask"] == [1] * len(labels)
    assert tok.decode(labels[n_prompt:]) == answer == ex.answer + "<|im_end|>"
    # the rating token the readout scores is the one the student learns to write, right before EOS
    ids = RatingTokens(1, 5).token_ids(tok)
    assert labels[-1] == tok.eos_token_id and labels[-2:-1] == ids[int(ex.meta["rating"]) - 1]


def test_truncation_shortens_the_inputs_and_never_the_answer(world, tok):
    ex = next(e for e in examples(world, tasks=["item_profile"])["train"] if e.meta["n_sets"] >= 10)
    full = encode(tok, ex, 4096)
    answer_ids = [x for x in full["labels"] if x != -100]
    limit = len(full["input_ids"]) - 120
    info: dict = {}
    cut = encode(tok, ex, limit, info)
    assert info["truncated"] is True and len(cut["input_ids"]) <= limit
    assert [x for x in cut["labels"] if x != -100] == answer_ids  # the answer is whole
    n = info["prompt_tokens"]
    prompt_text = tok.decode(cut["input_ids"][:n])
    assert prompt_text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert ELLIPSIS in prompt_text
    # the instruction around the cut inputs is kept word for word
    assert prompt_text.startswith(
        f"<|im_start|>system\n{ex.system}<|im_end|>\n<|im_start|>user\nLikes and dislikes"
    )
    assert (
        "Summarise them as about five bullet points under [Like] and about five under [Dislike].<|im_end|>"
        in prompt_text
    )
    assert len(cut["input_ids"]) > limit - 30  # cut only as much as needed
    with pytest.raises(ExampleTooLong, match="answer needs .* tokens with its EOS, max_length is 20") as err:
        encode(tok, ex, 20)
    assert err.value.reason == "answer_too_long"


def test_dataset_is_cached_on_disk_and_skips_are_counted(world, tok, tmp_path):
    exs = (
        examples(world, tasks=["extract", "rating"])["train"][:60]
        + examples(world, tasks=["rating"])["train"][:5]
    )
    first: dict = {}
    t0 = time.perf_counter()
    ds = build_dataset(exs, tok, 400, tmp_path / "cache", first)
    t_build = time.perf_counter() - t0
    second: dict = {}
    t0 = time.perf_counter()
    again = build_dataset(exs, tok, 400, tmp_path / "cache", second)
    t_reload = time.perf_counter() - t0
    assert first["cache"] == "built" and second["cache"] == "reused" and first["key"] == second["key"]
    assert again._fingerprint == ds._fingerprint and again["input_ids"] == ds["input_ids"]
    assert t_reload < t_build
    assert first["rows"] + sum(first["skipped"].values()) == len(exs) == 65
    assert set(first["skipped"]) == {
        "rating:prompt_too_long"
    }  # a 400-token window cannot hold profiles + reasoning
    assert len(ds) == first["rows"] and set(ds.column_names) >= {
        "input_ids",
        "attention_mask",
        "labels",
        "task",
    }
    assert max(len(x) for x in ds["input_ids"]) <= 400
    assert sum(first["truncated"].values()) == sum(ds["truncated"]) > 0
    other: dict = {}
    build_dataset(exs, tok, 512, tmp_path / "cache", other)
    assert other["cache"] == "built" and other["key"] != first["key"]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_collate_right_pads(world, tok):
    exs = examples(world, tasks=["extract"])["train"][:3]
    rows = [encode(tok, e, 512) for e in exs]
    batch = collate(rows, tok.pad_token_id)
    width = max(len(r["input_ids"]) for r in rows)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        k: (3, width) for k in ("input_ids", "attention_mask", "labels", "rating_mask")
    }
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == r["input_ids"]
        assert batch["input_ids"][i, n:].tolist() == [tok.pad_token_id] * (width - n)
        assert batch["attention_mask"][i].sum().item() == n
        assert batch["labels"][i, n:].tolist() == [-100] * (width - n)


def test_real_smollm2_tokenizer(world):
    """The same derivations on a real chat model's tokenizer (skipped where no SmolLM2 folder is prepared)."""
    import os

    from transformers import AutoTokenizer

    folder = Path(
        os.environ.get(
            "EXP3RT_SMOLLM2_DIR", CONF_DIR.parent / "artifacts" / "models" / "smollm2-135m-instruct"
        )
    )
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"no SmolLM2 folder at {folder} (python -m exp3rt.models.smollm2)")
    tok = AutoTokenizer.from_pretrained(str(folder))
    five, ten = RatingTokens(1, 5), RatingTokens(1, 10)
    assert (
        five.token_ids(tok) == [tok.encode(str(d), add_special_tokens=False) for d in range(1, 6)]
        and five.single_token
    )
    ten.token_ids(tok)
    assert not ten.single_token and RatingTokens(1, 10, offset=-1).token_ids(tok)[-1] == tok.encode(
        "9", add_special_tokens=False
    )
    ex = examples(world, tasks=["rating"])["train"][0]
    enc = encode(tok, ex, 300)
    n = sum(x == -100 for x in enc["labels"])
    assert tok.decode(enc["labels"][n:]) == ex.answer + tok.eos_token
    assert (
        tok.decode(enc["input_ids"][:n]).endswith("<|im_start|>assistant\n") and len(enc["input_ids"]) <= 300
    )
    assert enc["labels"][-2:-1] == five.token_ids(tok)[int(ex.meta["rating"]) - 1]


def test_rating_mask_marks_exactly_the_rating_tokens_and_weight_one_is_the_plain_loss(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp3rt.models.tiny import build_tiny_llama
    from exp3rt.student.examples import SFTExample
    from exp3rt.student.lightning import weighted_answer_loss
    from exp3rt.student.tokenize import collate, encode

    folder = build_tiny_llama(tmp_path / "m", vocab="bpe", hidden=32, layers=1)
    tok = AutoTokenizer.from_pretrained(str(folder))
    ten = SFTExample(
        "rating", "sys", "Rate it.", "Reasoning: fine.\nPredicted User Rating: 10", {"rating_text": "10"}
    )
    other = SFTExample("extract", "sys", "List.", "[Like]\n- 10 songs", {})
    rows = [encode(tok, ten, 256), encode(tok, other, 256)]
    marked = [i for i, m in zip(rows[0]["input_ids"], rows[0]["rating_mask"], strict=True) if m]
    assert tok.decode(marked).strip() == "10" and len(marked) == 2  # "1", "0": digits are single tokens
    assert sum(rows[1]["rating_mask"]) == 0
    batch = collate(rows, tok.pad_token_id)
    assert batch["rating_mask"].shape == batch["input_ids"].shape
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        plain = weighted_answer_loss(out.logits, batch["labels"], batch["rating_mask"], 1.0)
        heavy = weighted_answer_loss(out.logits, batch["labels"], batch["rating_mask"], 10.0)
        ce = torch.nn.functional.cross_entropy(
            out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
            batch["labels"][:, 1:].reshape(-1),
            reduction="none",
            ignore_index=-100,
        )
    labelled = batch["labels"][:, 1:].reshape(-1) != -100
    rating = batch["rating_mask"][:, 1:].reshape(-1).bool() & labelled
    expected = (ce[labelled & ~rating].sum() + 10 * ce[rating].sum()) / (
        (labelled & ~rating).sum() + 10 * rating.sum()
    )
    assert float(plain) == pytest.approx(float(out.loss), rel=1e-5)
    assert int(rating.sum()) == 2 and float(heavy) == pytest.approx(float(expected), rel=1e-5)


def test_answer_logits_skip_the_prompt_positions_and_keep_the_loss(tmp_path):
    """Training projects onto the vocabulary only from the batch's earliest answer token on; the loss is the
    model's own (labels=...) loss on a right-padded batch whose prompts differ in length."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp3rt.inference.generate import forward_accepts
    from exp3rt.models.tiny import build_tiny_llama
    from exp3rt.student.examples import SFTExample
    from exp3rt.student.lightning import answer_logits, weighted_answer_loss
    from exp3rt.student.tokenize import collate, encode

    folder = build_tiny_llama(tmp_path / "m", vocab="bpe", hidden=32, layers=1)
    tok = AutoTokenizer.from_pretrained(str(folder))
    long_prompt = SFTExample(
        "rating", "sys", "Rate it. " * 40, "Predicted User Rating: 4", {"rating_text": "4"}
    )
    short_prompt = SFTExample(
        "rating", "sys", "Rate it. " * 30, "Reasoning: fine.\nPredicted User Rating: 2", {"rating_text": "2"}
    )
    rows = [encode(tok, long_prompt, 512), encode(tok, short_prompt, 512)]
    batch = collate(rows, tok.pad_token_id)
    width = batch["input_ids"].shape[1]
    first = min(r["labels"].index(next(x for x in r["labels"] if x != -100)) for r in rows)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert forward_accepts(model, "logits_to_keep")
    with torch.no_grad():
        full = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        logits, labels, mask = answer_logits(model, batch)
        every, labels_all, _ = answer_logits(model, batch, keep_all=True)
    assert logits.shape[1] == width - (first - 1) < width / 3  # both prompts' positions are skipped
    assert every.shape[1] == width and labels_all.shape == batch["labels"].shape
    assert labels.shape[1] == logits.shape[1] and int(mask.sum()) == 2
    assert float(weighted_answer_loss(logits, labels, mask, 1.0)) == pytest.approx(float(full.loss), rel=1e-5)
    assert torch.allclose(logits, full.logits[:, first - 1 :], atol=1e-5)


def test_expected_rating_error_reads_the_softmax_over_the_rating_tokens_at_the_rating_position():
    """Hand-built logits: the expectation over the ratings' tokens (the student_expected readout) against
    the rating in the labels, on the scale mapped to 0-1; rows without a rating token are left out."""
    import math

    import torch

    from exp3rt.student.lightning import expected_rating_error

    vocab, ids, values = 10, [3, 4, 5], [1.0, 2.0, 3.0]  # a 1-3 scale spelled by tokens 3, 4, 5
    logits = torch.zeros(3, 4, vocab)
    logits[0, 1, 3:6] = torch.tensor([0.0, 0.0, math.log(2.0)])  # row 0 at its rating: p = 1/4, 1/4, 1/2
    logits[0, 1, 7] = 50.0  # a token outside the ratings never enters the readout
    labels = torch.tensor([[-100, 9, 5, 1], [-100, 9, 9, 1], [-100, -100, 3, 1]])
    mask = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0]])  # row 1: no rating (another task)
    err, rows = expected_rating_error(logits, labels, mask, ids, values, span=2.0)
    # row 0: E = 1/4 + 2/4 + 3/2 = 2.25 against 3; row 2: uniform, E = 2 against 1
    assert rows == 2
    assert float(err) == pytest.approx((((2.25 - 3) / 2) ** 2 + ((2 - 1) / 2) ** 2) / 2)
    none, zero = expected_rating_error(logits, labels, torch.zeros_like(mask), ids, values, 2.0)
    assert none is None and zero == 0
    logits.requires_grad_(True)
    err, _ = expected_rating_error(logits, labels, mask, ids, values, 2.0)
    err.backward()
    assert logits.grad[0, 1, 5] < 0 < logits.grad[0, 1, 3]  # pushes row 0 towards its true 3


def test_rating_tokens_need_one_token_per_rating(tmp_path):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from exp3rt.config import ConfigError
    from exp3rt.models.tiny import build_tiny_llama
    from exp3rt.student.prompts import load_student_prompt
    from exp3rt.student.ratings import RatingTokens
    from exp3rt.student.train import rating_tokens

    tok = AutoTokenizer.from_pretrained(
        str(build_tiny_llama(tmp_path / "m", vocab="bpe", hidden=32, layers=1))
    )
    cfg = OmegaConf.create({"train": {"rating_mse_weight": 1.0}, "dataset": {"domain": "movie"}})
    cfg.student_prompt = load_student_prompt("exp3rt_v1")
    five = rating_tokens(cfg, RatingTokens(1, 5), tok)
    assert sorted(five.values()) == [1.0, 2.0, 3.0, 4.0, 5.0] and len(set(five)) == 5
    assert [tok.decode([i]).strip() for i in five] == ["1", "2", "3", "4", "5"]
    with pytest.raises(ConfigError, match="rating_mse_weight=0") as e:
        rating_tokens(cfg, RatingTokens(1, 10), tok)  # "10" is two digit tokens here
    assert "10" in str(e.value)
    cfg.train.rating_mse_weight = 0.0
    assert rating_tokens(cfg, RatingTokens(1, 10), tok) is None


def test_rating_direct_adds_each_training_pair_in_the_rating_only_form(world, tok):
    from exp3rt.student.tokenize import encode

    both = examples(world, tasks=["rating", "rating_direct"], task_weights={"rating_direct": 2})
    reasoning = [e for e in both["train"] if e.task == "rating"]
    direct = [e for e in both["train"] if e.task == "rating_direct"]
    assert (
        len(reasoning)
        == len(world["split"].train)
        == both.report["counts_before_weights"]["train"]["rating_direct"]
    )
    assert len(direct) == 2 * len(reasoning)  # the weight repeats the direct form
    assert all(e.meta["has_reasoning"] for e in reasoning) and not any(
        e.meta["has_reasoning"] for e in direct
    )
    assert all(e.answer.startswith("Predicted User Rating: ") for e in direct)
    assert all("Reasoning:" in e.answer for e in reasoning)
    # the same pair's prompt differs only in its instruction; valid/test hold the reasoning form only
    one = direct[0]
    twin = next(
        e
        for e in examples(world, tasks=["rating"], ablation="no_reasoning")["train"]
        if (e.meta["user_id"], e.meta["item_id"]) == (one.meta["user_id"], one.meta["item_id"])
    )
    assert (one.system, one.user, one.answer) == (twin.system, twin.user, twin.answer)
    assert {e.task for p in ("valid", "test") for e in both[p]} == {"rating"}
    assert (
        sum(encode(tok, one, 2048)["rating_mask"]) == 1
    )  # the rating token is marked for rating_loss_weight
    # without reasoning the rating task is the direct form already: rating_direct adds nothing
    plain = examples(
        world, tasks=["rating", "rating_direct"], ablation="no_reasoning", task_weights={"rating_direct": 2}
    )
    assert {e.task for e in plain["train"]} == {"rating"} and len(plain["train"]) == len(reasoning)
