"""A small made-up copy of the EXP3RT release's published layout (the authors' ``data/`` folder), for tests
that must not depend on the real files:

    imdb/rating_bias/test_helpful.json, test_similarity.json     rating pairs (same pairs, item profile
                                                                 differs)
    imdb/user_profile/user_profile.json, user_valid.json, user_test.json
    imdb/item_profile/item_profile.json, item_valid.json, item_test.json
    amazon-book/rating_bias/unseen.json                          rating pairs with a teacher rationale (1-5)
    amazon-book/{user_profile,item_profile}/{user,item}_{valid,test}.json
    topk/imdb/{train,test,user_list,item_list}.txt               LightGCN format

Texts follow the real shapes, including the header variants the real profiles show (``**[Like]**``,
``Like:``, no header at all) when ``variants=True``. Ratings depend on how many of the user's likes the
item shares, so a model can learn something from the texts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ASPECTS = [
    "the acting",
    "the plot twists",
    "the soundtrack",
    "the pacing",
    "the humour",
    "the visuals",
    "the dialogue",
    "the characters",
    "the ending",
    "the action scenes",
    "the romance",
    "the suspense",
]


def _profile(likes: list[str], dislikes: list[str], average: float | None, style: str = "brackets") -> str:
    like = "\n".join(f"- {a.capitalize()}." for a in likes) or "- None."
    dislike = "\n".join(f"- {a.capitalize()}." for a in dislikes) or "- None."
    if style == "bold":
        text = f"**[Like]**\n{like}\n**[Dislike]**\n{dislike}"
    elif style == "colon":
        text = f"Like:\n{like}\nDislike:\n{dislike}"
    elif style == "none":  # free text, as a few real personas are
        text = (
            f"This viewer enjoys {', '.join(likes) or 'little'} and dislikes "
            f"{', '.join(dislikes) or 'little'}."
        )
    else:
        text = f"[Like]\n{like}\n[Dislike]\n{dislike}"
    if average is not None:
        text += f"\n[Average Rating]\n{average:.1f}" if style != "none" else f" Average rating {average:.1f}."
    return text


def write_release(
    root: Path,
    n_users: int = 24,
    n_items: int = 30,
    pairs_per_user: int = 4,
    seed: int = 0,
    variants: bool = False,
) -> Path:
    """Write the layout under ``root`` (the release's ``data/`` folder) and return ``root``."""
    rng = np.random.default_rng(seed)
    users = [f"/user/ur{1000 + u}/" for u in range(n_users)]
    items = [f"{50000 + i:07d}" for i in range(n_items)]
    taste = {u: list(rng.choice(ASPECTS, size=6, replace=False)) for u in users}
    traits = {i: list(rng.choice(ASPECTS, size=4, replace=False)) for i in items}
    records, book = [], []
    for n, u in enumerate(users):
        likes, dislikes = taste[u][:3], taste[u][3:]
        for i in rng.choice(items, size=pairs_per_user, replace=False):
            score = int(
                np.clip(
                    5
                    + 2 * len(set(likes) & set(traits[i]))
                    - 2 * len(set(dislikes) & set(traits[i]))
                    + rng.integers(-1, 2),
                    1,
                    10,
                )
            )
            style = "brackets"
            if variants:
                style = ("bold", "colon", "none", "brackets", "brackets")[n % 5]
            rec = {
                "user_id": u,
                "item_id": str(i),
                "user_persona": _profile(likes, dislikes, 5.0 + n % 4, style),
                "item_synopsis": _profile(
                    traits[i][:2], traits[i][2:], 6.5, "bold" if variants and n % 7 == 0 else "brackets"
                ),
                "item_description": f"Title: Movie {i} (19{int(i) % 100:02d})\nGenres: Drama, Comedy\n"
                f"Directors: Director {int(i) % 9}\nCast: Actor A, Actor B\nPlot: A story about "
                f"{traits[i][0]}.",
                "score": str(score),
            }
            records.append(rec)
            book.append(
                {
                    **rec,
                    "score": str(int(np.clip(round(score / 2), 1, 5))),
                    "item_description": f"Title: Book {i}\nCategories: Fiction\nAuthor: Writer "
                    f"{int(i) % 5}\nPlot: About {traits[i][0]}.",
                    "rationale": f"The user likes {likes[0]} and the book offers {traits[i][0]}, so "
                    "the rating follows.",
                }
            )
    imdb = root / "imdb"
    _dump(imdb / "rating_bias" / "test_helpful.json", records)
    similar = [{**r, "item_synopsis": r["item_synopsis"].replace("6.5", "7.0")} for r in records]
    _dump(imdb / "rating_bias" / "test_similarity.json", similar)
    _dump(
        imdb / "user_profile" / "user_profile.json",
        [{"user_id": u, "user_persona": _profile(taste[u][:3], taste[u][3:], None)} for u in users],
    )
    _dump(
        imdb / "item_profile" / "item_profile.json",
        [{"item_id": i, "item_synopsis": _profile(traits[i][:2], traits[i][2:], None)} for i in items],
    )
    sft = [
        {
            "instruction": "Summarise the preference sets into a profile.",
            "input": "\n---\n".join(f"[Like]\n- {a}.\n[Dislike]\n- None." for a in taste[u][:3]),
            "output": _profile(taste[u][:3], taste[u][3:], None),
        }
        for u in users[:6]
    ]
    for kind in ("user", "item"):
        for part in ("valid", "test"):
            _dump(imdb / f"{kind}_profile" / f"{kind}_{part}.json", sft)
            _dump(root / "amazon-book" / f"{kind}_profile" / f"{kind}_{part}.json", sft)
    _dump(root / "amazon-book" / "rating_bias" / "unseen.json", book)
    topk = root / "topk" / "imdb"
    topk.mkdir(parents=True, exist_ok=True)
    (topk / "user_list.txt").write_text(
        "org_id remap_id\n" + "".join(f"{u} {n}\n" for n, u in enumerate(users))
    )
    (topk / "item_list.txt").write_text(
        "org_id remap_id\n" + "".join(f"{i} {n}\n" for n, i in enumerate(items))
    )
    by_user: dict[str, list[int]] = {}
    for r in records:
        by_user.setdefault(r["user_id"], []).append(items.index(r["item_id"]))
    (topk / "train.txt").write_text(
        "".join(f"{n} {' '.join(map(str, by_user[u][:-1]))}\n" for n, u in enumerate(users))
    )
    (topk / "test.txt").write_text("".join(f"{n} {by_user[u][-1]}\n" for n, u in enumerate(users)))
    return root


def _dump(path: Path, records: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False))
