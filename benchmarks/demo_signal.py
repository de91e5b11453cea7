"""How much rating signal the demo's student prompts carry: simple fits on the same test pairs.

The demo's student sees, for each test pair, the user's and the item's profile (the teacher's [Like] /
[Dislike] bullets and an [Average Rating]). This script builds exactly those rating-only prompts from the
pipeline's annotations (run ``exp3rt-pipeline`` or ``stages=[baselines,annotate]`` first), fits on the
training pairs and prints the RMSE on the evaluation's test pairs of:

* the global mean;
* least squares on the two averages written in the prompt;
* least squares on profile overlaps: how many aspects the user likes / dislikes that the item's
  profile lists as liked / disliked (an aspect is found by the synthetic world's nouns, a shortcut
  that only this world allows), plus the averages;
* ridge regression on the prompt's word counts (user and item sections kept apart);
* least squares on the compact rationale (``prompt=exp3rt_compact``, the extractive teacher's form,
  written here from the two profiles in the prompt): how many aspects it names in each of its four lists,
  plus its averages. No world shortcut: what a student that writes this reasoning perfectly could read
  off it with a linear readout.
* the scored rationale's estimate (``prompt=exp3rt_scored``), fitted on nothing: what a student that
  writes the teacher's reasoning perfectly and copies its estimate into the rating would score.

A student that reads its prompt well could reach the overlap fit; the README's demo section compares.

    python benchmarks/demo_signal.py                       # the demo's settings (conf/experiment/demo.yaml)
    python benchmarks/demo_signal.py dataset.world.n_users=1000 eval.max_pairs=500
"""

from __future__ import annotations

import re
import sys
from collections import Counter

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from exp3rt import CONF_DIR
from exp3rt.config import register_schemas
from exp3rt.data.prepare import prepare_dataset
from exp3rt.data.splits import prepare_split
from exp3rt.data.synthetic import vocab_for
from exp3rt.student.examples import build_examples, direct_ablation
from exp3rt.teacher.annotate import find_annotation_dir
from exp3rt.teacher.backends.extractive import ExtractiveBackend, compact_counts

SECTION = re.compile(r"^\[(Like|Dislike|Average Rating)\]\s*$")


def parse_profile(text: str, nouns: list[tuple[str, str]]) -> tuple[set, set, float | None]:
    """(liked aspects, disliked aspects, average) of one profile section of a prompt."""
    sides: dict[str, set] = {"Like": set(), "Dislike": set()}
    current, average = None, None
    for line in text.splitlines():
        head = SECTION.match(line.strip())
        if head:
            current = head.group(1)
        elif current == "Average Rating" and line.strip():
            try:
                average = float(line.strip())
            except ValueError:
                pass
            current = None
        elif current in sides and line.startswith("- "):
            low = line.lower()
            found = next(
                (aspect for noun, aspect in nouns if re.search(rf"\b{re.escape(noun)}\b", low)), None
            )
            if found:
                sides[current].add(found)
    return sides["Like"], sides["Dislike"], average


def overlap_features(prompt: str, item_header: str, nouns) -> list[float]:
    user_part, _, item_part = prompt.partition(item_header)
    ul, ud, ua = parse_profile(user_part, nouns)
    il, idl, ia = parse_profile(item_part, nouns)
    return [
        len(ul & il),
        len(ul & idl),
        len(ud & idl),
        len(ud & il),
        ua or 0.0,
        ia or 0.0,
        float(ua is None),
        float(ia is None),
        1.0,
    ]


def teacher_rationale(example, domain: str, scale: tuple[float, float] | None = None) -> str:
    """The extractive teacher's compact rationale (scored with ``scale``) from the example's two profiles."""
    (u0, u1), (i0, i1) = example.meta["cut_spans"][:2]  # the user's and the item's profile in the prompt
    text = example.user if isinstance(example.user, str) else example.user.text
    teacher = ExtractiveBackend.__new__(ExtractiveBackend)  # compact_rationale reads no backend state
    return teacher.compact_rationale(text[u0:u1], text[i0:i1], domain, scale)


def compact_features(example, domain: str) -> list[float]:
    """Counts of the compact rationale's four lists and its two averages, for one rating example."""
    why = teacher_rationale(example, domain)
    counts = [float(n) for n in compact_counts(why)]
    avg = dict(re.findall(rf"(user|{re.escape(domain)}) (\d+(?:\.\d+)?)", why))
    return [*counts, float(avg.get("user", 0.0)), float(avg.get(domain, 0.0)), 1.0]


def words(prompt: str, item_header: str) -> Counter:
    user_part, _, item_part = prompt.partition(item_header)
    return Counter(
        [f"u:{w}" for w in re.findall(r"[a-z0-9]+", user_part.lower())]
        + [f"i:{w}" for w in re.findall(r"[a-z0-9]+", item_part.lower())]
    )


def lstsq_rmse(x, y, xt, yt, lo, hi, ridge: float = 0.0) -> float:
    if ridge:
        w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
    else:
        w = np.linalg.lstsq(x, y, rcond=None)[0]
    return float(np.sqrt(np.mean((np.clip(xt @ w, lo, hi) - yt) ** 2)))


def main(overrides: list[str]) -> None:
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=overrides)
    prepared = prepare_dataset(cfg.dataset, cfg.paths.data_dir)
    split = prepare_split(prepared, cfg.split)
    sft = OmegaConf.merge(cfg.sft, {"tasks": ["rating"]})
    sft.task_weights = {}
    examples = build_examples(
        find_annotation_dir(cfg, prepared, split),
        split,
        prepared.dataset.items,
        str(cfg.dataset.domain),
        prepared.dataset.scale,
        sft,
        ablation=direct_ablation(cfg.ablation),
        prompt=cfg.student_prompt,
    )
    train = [e for e in examples["train"] if e.task == "rating"]
    test = [e for e in examples["test"] if e.task == "rating"][: int(cfg.eval.max_pairs or 10**9)]
    if not train or not test:
        raise SystemExit(
            f"no rating examples (train {len(train)}, test {len(test)}): run the pipeline's annotate "
            "stage first"
        )
    vocab = vocab_for(str(cfg.dataset.domain))
    # "the pacing" as the world writes it; "pacing" alone as an aspect profile names it
    nouns = sorted(
        ((n.removeprefix("the "), a.name) for a in vocab.aspects for n, _ in a.nouns),
        key=lambda p: -len(p[0]),
    )
    header = cfg.student_prompt.rating.sections.item_profile.split("\n")[0].format(
        domain_title=str(cfg.dataset.domain)[:1].upper() + str(cfg.dataset.domain)[1:]
    )
    text = [e.user if isinstance(e.user, str) else e.user.text for e in train]
    text_t = [e.user if isinstance(e.user, str) else e.user.text for e in test]
    y = np.array([e.meta["rating"] for e in train])
    yt = np.array([e.meta["rating"] for e in test])
    lo, hi = float(prepared.dataset.scale.min), float(prepared.dataset.scale.max)
    x = np.array([overlap_features(t, header, nouns) for t in text])
    xt = np.array([overlap_features(t, header, nouns) for t in text_t])
    averages = [4, 5, 6, 7, 8]
    index = {w: k for k, w in enumerate(sorted(set().union(*(words(t, header) for t in text))))}

    def bow(texts):
        m = np.zeros((len(texts), len(index) + 1))
        for r, t in enumerate(texts):
            for w, c in words(t, header).items():
                if w in index:
                    m[r, index[w]] = c
            m[r, -1] = 1.0
        return m

    rows = [
        ("global mean", float(np.sqrt(np.mean((y.mean() - yt) ** 2)))),
        ("least squares: the two averages", lstsq_rmse(x[:, averages], y, xt[:, averages], yt, lo, hi)),
        ("least squares: profile overlaps + averages", lstsq_rmse(x, y, xt, yt, lo, hi)),
        (
            "ridge (100): word counts per section",
            lstsq_rmse(bow(text), y, bow(text_t), yt, lo, hi, ridge=100.0),
        ),
    ]
    if all(e.meta.get("cut_spans") for e in train + test):
        domain = str(cfg.dataset.domain)
        xc = np.array([compact_features(e, domain) for e in train])
        xct = np.array([compact_features(e, domain) for e in test])
        rows.append(
            ("least squares: compact rationale counts + averages", lstsq_rmse(xc, y, xct, yt, lo, hi))
        )
        said = [teacher_rationale(e, domain, (lo, hi)) for e in test]
        guess = np.array([float(re.search(r"Estimate: (\d+(?:\.\d+)?)", w).group(1)) for w in said])
        rows.append(("the scored rationale's estimate (no fit)", float(np.sqrt(np.mean((guess - yt) ** 2)))))
    print(
        f"{cfg.dataset.name}: {len(train)} training pairs, {len(test)} test pairs (eval.max_pairs), "
        f"header {header!r}"
    )
    print("| fit | RMSE |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
