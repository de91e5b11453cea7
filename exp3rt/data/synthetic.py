"""A seeded synthetic world of users, items, ratings and reviews — the default embedded dataset.

The world is built so that review text carries the rating signal the way EXP3RT assumes it does:

* every **user** values a few aspects (``likes``) and is sensitive to a few others (``dislikes``:
  a weak showing in that aspect annoys them), and has a personal rating bias (harsh … generous);
* every **item** is strong in a few aspects and weak in a few others (genres make some aspects more
  likely strong), has a Zipf-like popularity weight, a title and a description naming its genre and
  its strong aspects (never its weak ones — those surface only through other users' reviews);
* a user rates items drawn by popularity, tilted towards items whose description promises what they
  like (``selection_bias``), without repeats;
* the rating, in points of a 1–5 scale, is ``base + user bias + item bias + match + N(0, noise)``
  (defaults: base 4.3, user bias ~ N(0, 0.7), item bias ~ N(0, 0.5); all three are world settings), where
  ``match = 1.1·|liked∩strong| − 1.3·|liked∩weak| − 2.2·|disliked∩weak| + 0.25·|disliked∩strong|``;
  it is mapped linearly onto the dataset's scale and rounded onto its step grid, so the same world
  on a 1–10 scale has the same shape;
* the review states, in varied wording, every liked-and-strong aspect positively, every
  liked-and-weak and disliked-and-weak aspect negatively, sometimes a relieved remark on a
  disliked-but-strong aspect, sometimes a neutral remark on an aspect the user does not care about,
  filler sentences, and often an overall verdict that matches the rating band.

Ground truth is kept for tests and for checking the teacher later: ``extras["user_truth"]``
(user_id, likes, dislikes, bias) and ``extras["item_truth"]`` (item_id, strong, weak, bias,
popularity); the items' ``extra`` JSON repeats the strong/weak lists under ``"synthetic_truth"``.
Prompt builders must not show ``extra`` to a model on this dataset.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd

from exp3rt.config import ConfigError
from exp3rt.data.problems import InputProblems
from exp3rt.data.schema import Dataset, RatingScale, scale_of
from exp3rt.data.world_vocab import (
    ALIASES,
    GENERIC_DOMAIN,
    GENERIC_NEG,
    GENERIC_POS,
    PREMISE_WHAT,
    PREMISE_WHO,
    SUMMARIES,
    TPL_DISLIKED_STRONG,
    TPL_DISLIKED_WEAK,
    TPL_LIKED_STRONG,
    TPL_LIKED_WEAK,
    TPL_NEUTRAL,
    USES,
    VERDICTS,
    VOCABS,
    Aspect,
    Vocab,
)

# Rating model, in points of a 1–5 scale (see the module docstring).
BASE = 4.3
W_LIKED_STRONG, W_LIKED_WEAK, W_DISLIKED_WEAK, W_DISLIKED_STRONG = 1.1, -1.3, -2.2, 0.25
USER_BIAS_STD, ITEM_BIAS_STD = 0.7, 0.5
START_UNIX = 1420070400  # 2015-01-01
SPAN_SECONDS = 3 * 365 * 86400  # users start within three years, then review every few weeks


def vocab_for(domain: str) -> Vocab:
    """The word lists for ``domain``; an unknown domain uses the generic list (the default
    ``dataset.domain`` is the neutral noun "item")."""
    key = ALIASES.get(domain.lower(), domain.lower())
    return VOCABS.get(key, VOCABS[GENERIC_DOMAIN])


def predicates(vocab: Vocab, aspect: str, positive: bool) -> list[str]:
    """Every rendered predicate of one polarity for ``aspect`` (both singular and plural forms)."""
    a = vocab.aspect(aspect)
    raw = (a.pos + GENERIC_POS) if positive else (a.neg + GENERIC_NEG)
    return sorted({p.format(be=be) for p in raw for be in vocab.tense})


def _check(w, n_aspects: int) -> None:
    if w.n_users < 1 or w.n_items < 1:
        raise ValueError(f"dataset.world needs n_users >= 1 and n_items >= 1 (got {w.n_users}, {w.n_items})")
    if not 1 <= w.min_per_user <= w.max_per_user:
        raise ValueError(
            f"dataset.world needs 1 <= min_per_user <= max_per_user (got {w.min_per_user}, {w.max_per_user})"
        )
    if w.max_per_user > w.n_items:
        raise ValueError(
            f"dataset.world.max_per_user ({w.max_per_user}) exceeds n_items ({w.n_items}); "
            f"a user cannot rate an item twice"
        )
    if w.likes_per_user + w.dislikes_per_user > n_aspects:
        raise ValueError(
            f"dataset.world.likes_per_user + dislikes_per_user ({w.likes_per_user + w.dislikes_per_user}) "
            f"exceeds the {n_aspects} aspects of this domain"
        )
    if w.strong_per_item + w.weak_per_item > n_aspects:
        raise ValueError(
            f"dataset.world.strong_per_item + weak_per_item ({w.strong_per_item + w.weak_per_item}) "
            f"exceeds the {n_aspects} aspects of this domain"
        )
    if w.noise < 0:
        raise ValueError(f"dataset.world.noise must be >= 0 (got {w.noise})")


def _ids(prefix: str, n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]


def _titles(vocab: Vocab, genres: list[list[str]], rnd: random.Random) -> list[str]:
    seen: set[str] = set()
    out = []
    for gs in genres:
        for attempt in range(1000):
            adj, noun = rnd.choice(vocab.title_adj), rnd.choice(vocab.title_noun)
            if vocab.product_types:
                kind = rnd.choice(vocab.product_types.get(gs[0], ("Device",)))
                title = f"{adj} {kind} {noun}" + (f" {rnd.randint(2, 9)}" if rnd.random() < 0.4 else "")
            else:
                other = rnd.choice(vocab.title_noun)
                title = rnd.choice(
                    (f"The {adj} {noun}", f"{adj} {noun}", f"The {noun} of {other}", f"{noun} and {other}")
                )
            if attempt > 50:  # the word lists are finite: number the rare repeats
                title = f"{title} {attempt - 49}"
            if title not in seen:
                break
        seen.add(title)
        out.append(title)
    return out


def _a(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _description(vocab: Vocab, title: str, gs: list[str], strong: list[str], rnd: random.Random) -> str:
    genre = " / ".join(g.lower() for g in gs)
    feats = [vocab.aspect(a).feature for a in strong]
    rnd.shuffle(feats)
    if len(feats) > 1:
        feat_text = ", ".join(feats[:-1]) + " and " + feats[-1]
    else:
        feat_text = feats[0] if feats else "a little of everything"
    if vocab.product_types:
        first = f"The {title} is {_a(genre)} {genre} product designed for {rnd.choice(USES)}."
    else:
        year = rnd.randint(1975, 2017)
        first = (
            f"{title} ({year}) is {_a(genre)} {genre} {vocab.item_noun} about {rnd.choice(PREMISE_WHO)} "
            f"who {rnd.choice(PREMISE_WHAT)}."
        )
    second = rnd.choice(("It features {f}.", "Expect {f}.", "Known for {f}.", "It offers {f}.")).format(
        f=feat_text
    )
    return f"{first} {second}"


def _clause(vocab: Vocab, a: Aspect, positive: bool, rnd: random.Random) -> tuple[str, str]:
    noun, plural = rnd.choice(a.nouns)
    be = vocab.tense[1] if plural else vocab.tense[0]
    raw = a.pos + GENERIC_POS if positive else a.neg + GENERIC_NEG
    # aspect-specific wording twice as often as the generic one
    pred = rnd.choice(raw[: len(raw) - 3] * 2 + raw[len(raw) - 3 :]).format(be=be)
    return noun, pred


def _sentence(templates, vocab: Vocab, a: Aspect, positive: bool, rnd: random.Random) -> str:
    noun, pred = _clause(vocab, a, positive, rnd)
    tpl = rnd.choice(templates)
    return tpl.format(noun=noun, Noun=noun[0].upper() + noun[1:], pred=pred)


def _pick(seq, r: float):
    return seq[min(int(r * len(seq)), len(seq) - 1)]


def _band(frac: float) -> int:
    """0..4: the rating band of a position ``frac`` in [0, 1] on the scale."""
    return int(min(4, max(0, np.floor(frac * 5 - 1e-9)))) if frac < 1 else 4


def _review(
    vocab: Vocab,
    likes: set[str],
    dislikes: set[str],
    strong: list[str],
    weak: list[str],
    frac: float,
    rnd: random.Random,
) -> tuple[str, str]:
    """(review, summary) for one user–item pair whose realised rating sits at ``frac`` of the scale."""
    body: list[str] = []
    praised: list[str] = []
    panned: list[str] = []
    for name in strong:
        a = vocab.aspect(name)
        if name in likes:
            body.append(_sentence(TPL_LIKED_STRONG, vocab, a, True, rnd))
            praised.append(name)
        elif name in dislikes and rnd.random() < 0.3:
            body.append(_sentence(TPL_DISLIKED_STRONG, vocab, a, True, rnd))
    for name in weak:
        a = vocab.aspect(name)
        if name in likes:
            body.append(_sentence(TPL_LIKED_WEAK, vocab, a, False, rnd))
            panned.append(name)
        elif name in dislikes:
            body.append(_sentence(TPL_DISLIKED_WEAK, vocab, a, False, rnd))
            panned.append(name)
    indifferent = [n for n in vocab.aspect_names if n not in likes and n not in dislikes]
    if indifferent and (not body or rnd.random() < 0.3):
        a = vocab.aspect(rnd.choice(indifferent))
        noun, plural = rnd.choice(a.nouns)
        be = vocab.tense[1] if plural else vocab.tense[0]
        body.append(rnd.choice(TPL_NEUTRAL).format(noun=noun, Noun=noun[0].upper() + noun[1:], be=be))
    rnd.shuffle(body)
    band = _band(frac)
    fmt = {"noun": vocab.item_noun, "verb": vocab.verb_past, "waste": vocab.waste}
    for _ in range(rnd.choice((0, 0, 1, 1, 2))):
        body.insert(rnd.randint(0, len(body)), rnd.choice(vocab.fillers))
    if rnd.random() < 0.4:
        body.insert(0, rnd.choice(vocab.openers))
    # Every draw below is made whatever the band, so the same world on another scale (whose
    # rounding can move a rating into a neighbouring band) keeps the rest of its text identical.
    r_verdict, r_verdict_pick, r_sum, r_sum_aspect, r_sum_pick = (rnd.random() for _ in range(5))
    if r_verdict < 0.65:
        body.append(_pick(VERDICTS[band], r_verdict_pick).format(**fmt))
    # the summary sometimes names the aspect that drove the opinion
    if band >= 3 and praised and r_sum < 0.3:
        noun = vocab.aspect(_pick(praised, r_sum_aspect)).nouns[0][0].removeprefix("the ")
        summary = _pick(("Great {n}", "Loved the {n}", "Worth it for the {n}"), r_sum_pick).format(n=noun)
    elif band <= 1 and panned and r_sum < 0.3:
        noun = vocab.aspect(_pick(panned, r_sum_aspect)).nouns[0][0].removeprefix("the ")
        summary = _pick(("Let down by the {n}", "Poor {n}", "The {n} ruined it"), r_sum_pick).format(n=noun)
    else:
        summary = _pick(SUMMARIES[band], r_sum_pick).format(**fmt)
    return " ".join(body), summary


def _to_scale(stars: np.ndarray, scale: RatingScale) -> np.ndarray:
    """Map ratings in 1–5 points linearly onto ``scale`` and round onto its step grid."""
    frac = np.clip((stars - 1.0) / 4.0, 0.0, 1.0)
    raw = scale.min + frac * (scale.max - scale.min)
    steps = np.round((raw - scale.min) / scale.step)
    n_max = np.floor((scale.max - scale.min) / scale.step + 1e-9)
    return scale.min + np.clip(steps, 0, n_max) * scale.step


def generate_world(world_cfg, domain: str, scale: RatingScale, name: str = "synthetic") -> Dataset:
    """Generate the synthetic world for ``world_cfg`` (a ``SyntheticWorldConf``), deterministic per seed.

    Interactions are ordered by user, then time, and carry ``_line`` (1..n).
    """
    vocab = vocab_for(domain)
    aspects = vocab.aspect_names
    n_a = len(aspects)
    _check(world_cfg, n_a)
    seed = int(world_cfg.seed)
    rng = np.random.default_rng(seed)
    rnd = random.Random(seed * 1_000_003 + 17)  # text choices: a separate, equally seeded stream
    n_u, n_i = int(world_cfg.n_users), int(world_cfg.n_items)
    user_ids, item_ids = _ids("u", n_u), _ids("i", n_i)

    # users: disjoint likes and dislikes, and a bias (some harsh, some generous)
    n_like, n_dis = int(world_cfg.likes_per_user), int(world_cfg.dislikes_per_user)
    likes_m = np.zeros((n_u, n_a))
    dislikes_m = np.zeros((n_u, n_a))
    for u in range(n_u):
        perm = rng.permutation(n_a)
        likes_m[u, perm[:n_like]] = 1
        dislikes_m[u, perm[n_like : n_like + n_dis]] = 1
    user_bias = rng.normal(0.0, float(getattr(world_cfg, "user_bias_std", USER_BIAS_STD)), n_u)

    # items: genres, strong aspects (genre-tilted), weak aspects, bias, Zipf popularity
    n_strong, n_weak = int(world_cfg.strong_per_item), int(world_cfg.weak_per_item)
    genres = list(vocab.genres)
    strong_m = np.zeros((n_i, n_a))
    weak_m = np.zeros((n_i, n_a))
    item_genres: list[list[str]] = []
    for i in range(n_i):
        k = 1 if rng.random() < 0.6 else 2
        gs = [genres[j] for j in rng.choice(len(genres), size=k, replace=False)]
        item_genres.append(gs)
        w = np.ones(n_a)
        for g in gs:
            for a in vocab.affinity.get(g, ()):
                w[aspects.index(a)] += 4.0
        s_idx = rng.choice(n_a, size=n_strong, replace=False, p=w / w.sum())
        strong_m[i, s_idx] = 1
        rest = np.setdiff1d(np.arange(n_a), s_idx)
        weak_m[i, rng.choice(rest, size=n_weak, replace=False)] = 1
    item_bias = rng.normal(0.0, float(getattr(world_cfg, "item_bias_std", ITEM_BIAS_STD)), n_i)
    ranks = rng.permutation(n_i) + 1
    popularity = 1.0 / ranks ** float(world_cfg.popularity_skew)
    popularity /= popularity.sum()

    match = (
        W_LIKED_STRONG * likes_m @ strong_m.T
        + W_LIKED_WEAK * likes_m @ weak_m.T
        + W_DISLIKED_WEAK * dislikes_m @ weak_m.T
        + W_DISLIKED_STRONG * dislikes_m @ strong_m.T
    )
    # what a user can guess from descriptions (strong aspects only) tilts what they choose to rate
    appeal = likes_m @ strong_m.T + 0.3 * dislikes_m @ strong_m.T

    counts = rng.integers(world_cfg.min_per_user, world_cfg.max_per_user + 1, size=n_u)
    rows_u, rows_i = [], []
    for u in range(n_u):
        p = popularity * np.exp(float(world_cfg.selection_bias) * appeal[u])
        chosen = rng.choice(n_i, size=int(counts[u]), replace=False, p=p / p.sum())
        rows_u.append(np.full(len(chosen), u))
        rows_i.append(chosen)
    uu, ii = np.concatenate(rows_u), np.concatenate(rows_i)
    n = len(uu)
    stars = (
        float(getattr(world_cfg, "base", BASE))
        + user_bias[uu]
        + item_bias[ii]
        + match[uu, ii]
        + rng.normal(0.0, float(world_cfg.noise), n)
    )
    ratings = _to_scale(stars, scale)
    frac = (ratings - scale.min) / (scale.max - scale.min)

    # timestamps: per user, a start within three years, then gaps of about a month (strictly increasing)
    starts = START_UNIX + rng.integers(0, SPAN_SECONDS, size=n_u)
    gaps = (rng.exponential(30 * 86400, n) + 3600).astype(np.int64)
    timestamps = np.empty(n, dtype=np.int64)
    pos = 0
    for u in range(n_u):
        c = int(counts[u])
        timestamps[pos : pos + c] = starts[u] + np.cumsum(gaps[pos : pos + c])
        pos += c

    likes_sets = [{aspects[j] for j in np.flatnonzero(likes_m[u])} for u in range(n_u)]
    dislike_sets = [{aspects[j] for j in np.flatnonzero(dislikes_m[u])} for u in range(n_u)]
    strong_lists = [[aspects[j] for j in np.flatnonzero(strong_m[i])] for i in range(n_i)]
    weak_lists = [[aspects[j] for j in np.flatnonzero(weak_m[i])] for i in range(n_i)]
    titles = _titles(vocab, item_genres, rnd)
    descriptions = [_description(vocab, titles[i], item_genres[i], strong_lists[i], rnd) for i in range(n_i)]
    reviews, summaries = [], []
    for k in range(n):
        u, i = int(uu[k]), int(ii[k])
        text, summ = _review(
            vocab, likes_sets[u], dislike_sets[u], strong_lists[i], weak_lists[i], float(frac[k]), rnd
        )
        reviews.append(text)
        summaries.append(summ)
    # helpful votes: mostly zero, a long tail, more for longer reviews
    lengths = np.array([t.count(".") + t.count("!") for t in reviews], dtype=float)
    mean_votes = 0.4 + 0.25 * lengths
    shape = 0.5
    votes = rng.negative_binomial(shape, shape / (shape + mean_votes))

    interactions = pd.DataFrame(
        {
            "user_id": [user_ids[u] for u in uu],
            "item_id": [item_ids[i] for i in ii],
            "rating": ratings.astype(float),
            "review": reviews,
            "summary": summaries,
            "timestamp": timestamps,
            "helpful_votes": votes.astype(np.int64),
            "_line": np.arange(1, n + 1),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": titles,
            "description": descriptions,
            "categories": item_genres,
            "extra": [
                json.dumps(
                    {
                        "synthetic_truth": {"strong": strong_lists[i], "weak": weak_lists[i]},
                        "popularity": round(float(popularity[i]), 6),
                    }
                )
                for i in range(n_i)
            ],
        }
    )
    user_truth = pd.DataFrame(
        {
            "user_id": user_ids,
            "likes": [sorted(s) for s in likes_sets],
            "dislikes": [sorted(s) for s in dislike_sets],
            "bias": user_bias,
        }
    )
    item_truth = pd.DataFrame(
        {
            "item_id": item_ids,
            "strong": strong_lists,
            "weak": weak_lists,
            "bias": item_bias,
            "popularity": popularity,
        }
    )
    return Dataset(
        name=name,
        domain=vocab.domain if vocab.domain != GENERIC_DOMAIN else domain,
        scale=scale,
        interactions=interactions,
        items=items,
        synthetic=True,
        extras={"user_truth": user_truth, "item_truth": item_truth},
    )


def load_synthetic(cfg, problems: InputProblems) -> Dataset:
    """Registry entry: the world of ``cfg.world`` in ``cfg.domain`` on ``cfg.scale``."""

    try:
        return generate_world(cfg.world, str(cfg.domain), scale_of(cfg), name=str(cfg.name))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def truth_match_features(dataset: Dataset, pairs: pd.DataFrame) -> np.ndarray:
    """Per (user, item) pair of a synthetic world, from its ground truth: ``[1, |likes ∩ strong|,
    |likes ∩ weak|, |dislikes ∩ weak|, |dislikes ∩ strong|]`` — the signal a profile-reading model can
    at best recover (used to bound what the student can reach)."""
    users = dataset.extras["user_truth"].set_index("user_id")
    items = dataset.extras["item_truth"].set_index("item_id")
    rows = []
    for u, i in zip(pairs["user_id"], pairs["item_id"], strict=True):
        lk, dl = set(users.likes[u]), set(users.dislikes[u])
        st, wk = set(items.strong[i]), set(items.weak[i])
        rows.append([1.0, len(lk & st), len(lk & wk), len(dl & wk), len(dl & st)])
    return np.array(rows)
