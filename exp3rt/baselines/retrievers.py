"""First-stage retrievers on implicit feedback, and the candidate files the reranker reads.

A training rating is a positive when ``rating >= positive_threshold`` (every rating when the
threshold is ``None``). Retrievers score every training item for a user and return the top ``n``
that the user has not interacted with in training (every training rating counts as seen, positive
or not), minus any extra exclusions the caller passes.

Common interface: ``fit(train_df) -> self``; ``recommend(users, n, exclude=None, with_scores=False)
-> dict[user, list[item]]`` (or ``list[(item, score)]``). Users unseen in training, or without any
training positive, get the popularity ranking (a learned model has no signal for them).

Determinism: item/user indices come from sorted ids, and all sampling and initialisation draw from
a ``torch.Generator`` seeded with ``seed``; ties in scores are broken by item index (sorted ids).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from exp3rt.artifacts import write_json_atomic, write_parquet_atomic
from exp3rt.baselines._ids import IdIndex, require_columns
from exp3rt.metrics import topk_metrics

Recs = dict[str, list[str]] | dict[str, list[tuple[str, float]]]


def positives_of(df: pd.DataFrame, positive_threshold: float | None) -> pd.DataFrame:
    """Rows that count as implicit positives."""
    if positive_threshold is None:
        return df
    return df[df["rating"] >= positive_threshold]


class Retriever:
    """Base class: indexing, seen-item masks, popularity fallback, top-n selection."""

    name = "base"

    def __init__(self, positive_threshold: float | None = None, seed: int = 0):
        self.positive_threshold = positive_threshold
        self.seed = int(seed)
        self._fitted = False

    # subclasses: learn from positive (user, item) index pairs; score a block of known users
    def _fit(self, pu: np.ndarray, pi: np.ndarray) -> None:
        pass

    def _score_users(self, uidx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train_df: pd.DataFrame) -> Retriever:
        require_columns(train_df, ["user_id", "item_id", "rating"], f"{type(self).__name__}.fit")
        self.users = IdIndex(train_df["user_id"])
        self.items = IdIndex(train_df["item_id"])
        u = self.users.lookup(train_df["user_id"])
        i = self.items.lookup(train_df["item_id"])
        self.n_users, self.n_items = len(self.users), len(self.items)
        # seen items per user as CSR (every training interaction is excluded at recommend time)
        self._seen = _csr(u, i, self.n_users)
        pos = positives_of(train_df, self.positive_threshold)
        if len(pos) == 0:
            raise ValueError(
                f"{type(self).__name__}.fit: no training rating reaches positive_threshold="
                f"{self.positive_threshold}; lower it or set it to null"
            )
        pairs = np.unique(
            np.stack([self.users.lookup(pos["user_id"]), self.items.lookup(pos["item_id"])], 1), axis=0
        )
        pu, pi = pairs[:, 0], pairs[:, 1]
        self.popularity = np.bincount(pi, minlength=self.n_items).astype(np.float64)
        self._has_pos = np.bincount(pu, minlength=self.n_users) > 0
        self._fit(pu, pi)
        self._fitted = True
        return self

    def recommend(
        self,
        users: Iterable[str],
        n: int,
        exclude: Mapping[str, Iterable[str]] | None = None,
        with_scores: bool = False,
        chunk: int = 1024,
    ) -> Recs:
        """Top-``n`` unseen items per user (fewer only when fewer unseen items exist)."""
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__}.recommend called before fit")
        if n < 1:
            raise ValueError(f"recommend needs n >= 1 (got {n})")
        users = list(dict.fromkeys(users))
        uidx = self.users.lookup(np.asarray(users, dtype=object))
        out: dict = {}
        for s in range(0, len(users), chunk):
            ub = uidx[s : s + chunk]
            learned = (ub >= 0) & self._has_pos[np.maximum(ub, 0)]
            scores = np.tile(self.popularity, (len(ub), 1))
            if learned.any():
                scores[learned] = self._score_users(ub[learned])
            ranked_scores = scores.copy()
            for row, u in enumerate(ub):
                if u >= 0:
                    ranked_scores[row, self._seen[1][self._seen[0][u] : self._seen[0][u + 1]]] = -np.inf
                if exclude is not None and users[s + row] in exclude:
                    extra = self.items.lookup(np.asarray(list(exclude[users[s + row]]), dtype=object))
                    ranked_scores[row, extra[extra >= 0]] = -np.inf
            top = _topn(ranked_scores, n)
            for row in range(len(ub)):
                keep = [j for j in top[row] if np.isfinite(ranked_scores[row, j])]
                ids = self.items[np.asarray(keep, dtype=np.int64)].tolist() if keep else []
                if with_scores:
                    out[users[s + row]] = [
                        (it, float(scores[row, j])) for it, j in zip(ids, keep, strict=True)
                    ]
                else:
                    out[users[s + row]] = ids
        return out


def _csr(u: np.ndarray, i: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((i, u))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(u, minlength=n_rows))])
    return indptr, i[order]


def _topn(scores: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the ``n`` best scores per row, best first; ties go to the lower index."""
    m = scores.shape[1]
    n = min(n, m)
    if n < m:
        cand = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        # argpartition splits ties at the boundary arbitrarily; widen to every column tied with the
        # n-th score so the lower index wins deterministically
        kth = np.take_along_axis(scores, cand, 1).min(1, keepdims=True)
        out = np.empty((scores.shape[0], n), dtype=np.int64)
        for r in range(scores.shape[0]):
            cols = np.flatnonzero(scores[r] >= kth[r])
            cols = cols[np.lexsort((cols, -scores[r, cols]))]
            out[r] = cols[:n]
        return out
    return (
        np.stack([np.lexsort((np.arange(m), -row)) for row in scores])
        if len(scores)
        else np.empty((0, m), int)
    )


class Popularity(Retriever):
    """Scores every item by its number of training positives (same list for everyone, minus seen)."""

    name = "popularity"

    def _score_users(self, uidx):
        return np.tile(self.popularity, (len(uidx), 1))


class _Embedding(Retriever):
    """Shared BPR training loop for embedding retrievers.

    BPR loss (Rendle et al. 2009) over sampled triples ``(u, i+, j-)`` with ``j`` drawn uniformly
    from items that are not positives of ``u``:
    ``L = mean(-log sigmoid(s(u,i) - s(u,j))) + reg * (|e_u|^2 + |e_i|^2 + |e_j|^2) / (2 * batch)``
    where ``e`` are the ego (layer-0) embeddings; Adam optimiser. One epoch = one pass over the
    positives in shuffled order.
    """

    def __init__(
        self,
        positive_threshold: float | None = None,
        seed: int = 0,
        dim: int = 64,
        epochs: int | None = None,
        lr: float = 0.01,
        reg: float | None = None,
        batch_size: int = 2048,
        init_std: float = 0.1,
    ):
        super().__init__(positive_threshold, seed)
        epochs = self.default_epochs if epochs is None else epochs
        reg = self.default_reg if reg is None else reg
        if dim < 1 or epochs < 0 or lr <= 0 or batch_size < 1 or reg < 0:
            raise ValueError(
                f"{type(self).__name__} needs dim >= 1, epochs >= 0, lr > 0, batch_size >= 1, reg >= 0 "
                f"(got dim={dim}, epochs={epochs}, lr={lr}, batch_size={batch_size}, reg={reg})"
            )
        self.dim, self.epochs, self.lr, self.reg = int(dim), int(epochs), float(lr), float(reg)
        self.batch_size, self.init_std = int(batch_size), float(init_std)

    def _setup(self, pu, pi) -> None:  # graph-based models build their adjacency here
        pass

    def _propagate(self, eu: torch.Tensor, ei: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return eu, ei

    def _fit(self, pu, pi):
        g = torch.Generator().manual_seed(self.seed)
        self._setup(pu, pi)
        eu = torch.nn.Parameter(torch.randn(self.n_users, self.dim, generator=g) * self.init_std)
        ei = torch.nn.Parameter(torch.randn(self.n_items, self.dim, generator=g) * self.init_std)
        opt = torch.optim.Adam([eu, ei], lr=self.lr)
        uu, ii = torch.from_numpy(pu), torch.from_numpy(pi)
        pos_keys = np.sort(pu * self.n_items + pi)
        n = len(pu)
        self.loss_history: list[float] = []
        for _ in range(self.epochs):
            perm = torch.randperm(n, generator=g)
            total = 0.0
            for s in range(0, n, self.batch_size):
                idx = perm[s : s + self.batch_size]
                ub, ib = uu[idx], ii[idx]
                jb = self._negatives(ub.numpy(), pos_keys, g)
                fu, fi = self._propagate(eu, ei)
                # index_select: its backward is a plain index_add_ (advanced indexing's is an
                # accumulating index_put_)
                u_f, i_f, j_f = fu.index_select(0, ub), fi.index_select(0, ib), fi.index_select(0, jb)
                pos = (u_f * i_f).sum(1)
                neg = (u_f * j_f).sum(1)
                ego = (
                    eu.index_select(0, ub).pow(2).sum()
                    + ei.index_select(0, ib).pow(2).sum()
                    + ei.index_select(0, jb).pow(2).sum()
                )
                loss = -F.logsigmoid(pos - neg).mean() + self.reg * ego / (2 * len(idx))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            self.loss_history.append(total / max(n, 1))
        with torch.no_grad():
            fu, fi = self._propagate(eu, ei)
        self.user_emb, self.item_emb = (
            fu.detach().numpy().astype(np.float64),
            fi.detach().numpy().astype(np.float64),
        )

    def _negatives(
        self, ub: np.ndarray, pos_keys: np.ndarray, g: torch.Generator, rounds: int = 5
    ) -> torch.Tensor:
        """Uniform negatives, resampled (up to ``rounds`` times) where they hit a user's positive."""
        j = torch.randint(self.n_items, (len(ub),), generator=g).numpy()
        for _ in range(rounds):
            keys = ub * self.n_items + j
            loc = np.minimum(np.searchsorted(pos_keys, keys), len(pos_keys) - 1)
            bad = pos_keys[loc] == keys
            if not bad.any():
                break
            j[bad] = torch.randint(self.n_items, (int(bad.sum()),), generator=g).numpy()
        return torch.from_numpy(j)

    def _score_users(self, uidx):
        return self.user_emb[uidx] @ self.item_emb.T


class BPRMF(_Embedding):
    """Matrix factorisation scored by ``s(u, i) = e_u . e_i``, trained with the BPR loss."""

    name = "bpr_mf"
    default_epochs, default_reg = 50, 3e-2


class LightGCN(_Embedding):
    """LightGCN (He et al. 2020).

    Graph: users and items as nodes, an edge per training positive. Propagation with the
    symmetric-normalised adjacency ``A_hat = D^{-1/2} A D^{-1/2}`` (no self-loops, no weights, no
    non-linearity): ``E^{(l+1)} = A_hat E^{(l)}``; final embedding ``E = mean_{l=0..L} E^{(l)}``;
    ``s(u, i) = e_u . e_i``. BPR loss with L2 on the ego embeddings ``E^{(0)}`` (see the base class).
    """

    name = "lightgcn"
    default_epochs, default_reg = 30, 1e-4  # reg: the paper's

    def __init__(self, *args, layers: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        if layers < 0:
            raise ValueError(f"LightGCN.layers must be >= 0 (got {layers})")
        self.layers = int(layers)

    def _setup(self, pu, pi):
        self.adj = normalized_adjacency(pu, pi, self.n_users, self.n_items)

    def _propagate(self, eu, ei):
        e = torch.cat([eu, ei], 0)
        acc = e
        for _ in range(self.layers):
            e = _SymmetricSpMM.apply(self.adj, e)
            acc = acc + e
        acc = acc / (self.layers + 1)
        return acc[: self.n_users], acc[self.n_users :]


class _SymmetricSpMM(torch.autograd.Function):
    """``A @ x`` for a symmetric sparse ``A``; the gradient w.r.t. ``x`` is ``A^T g = A g``.

    Written out because autograd through ``torch.sparse.mm`` is 10-20x slower on CPU than the plain
    CSR product used here in both directions (measured on ML-100k: ~45 ms vs ~4 ms per 3-layer step).
    """

    @staticmethod
    def forward(ctx, adj, x):
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.adj @ grad


def normalized_adjacency(pu: np.ndarray, pi: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """``D^{-1/2} A D^{-1/2}`` of the bipartite graph (nodes: users ``0..U-1``, items ``U..U+I-1``),
    as a sparse CSR tensor (symmetric). Isolated nodes have degree 0 and get no edges."""
    rows = np.concatenate([pu, pi + n_users])
    cols = np.concatenate([pi + n_users, pu])
    deg = np.bincount(rows, minlength=n_users + n_items).astype(np.float64)
    vals = 1.0 / np.sqrt(deg[rows] * deg[cols])
    idx = torch.from_numpy(np.stack([rows, cols]))
    n = n_users + n_items
    coo = torch.sparse_coo_tensor(idx, torch.from_numpy(vals).float(), (n, n), check_invariants=True)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return coo.coalesce().to_sparse_csr()


RETRIEVERS = {c.name: c for c in (Popularity, BPRMF, LightGCN)}


def build_retrievers(cfg, seed: int | None = None) -> dict[str, Retriever]:
    """One unfitted retriever per name in ``cfg.models`` (a ``RetrieverBaselinesConf``); ``seed``
    overrides ``cfg.seed`` when given."""
    seed = cfg.seed if seed is None else seed
    common = dict(positive_threshold=cfg.positive_threshold, seed=seed)
    emb = dict(dim=cfg.dim, lr=cfg.lr, batch_size=cfg.batch_size, init_std=cfg.init_std)
    out: dict[str, Retriever] = {}
    for name in cfg.models:
        if name == "popularity":
            out[name] = Popularity(**common)
        elif name == "bpr_mf":
            out[name] = BPRMF(**common, **emb, epochs=cfg.bpr_epochs, reg=cfg.bpr_reg)
        elif name == "lightgcn":
            own_lr = {"lr": cfg.lightgcn_lr} if getattr(cfg, "lightgcn_lr", None) is not None else {}
            out[name] = LightGCN(
                **common,
                **{**emb, **own_lr},
                epochs=cfg.lightgcn_epochs,
                reg=cfg.lightgcn_reg,
                layers=cfg.lightgcn_layers,
            )
        else:
            raise ValueError(f"unknown retriever '{name}'; allowed: {sorted(RETRIEVERS)}")
    return out


# --------------------------------------------------------------------------------------------------
# Candidate files and evaluation


def _strip(recs: Mapping) -> dict[str, list[str]]:
    return {u: [x[0] if isinstance(x, tuple) else x for x in lst] for u, lst in recs.items()}


def write_candidates(recs: Mapping, path: str | Path) -> Path:
    """Write ``recs`` (from :meth:`Retriever.recommend`, scored or not) as parquet with columns
    ``user_id`` (string), ``rank`` (1 = best), ``item_id`` (string), ``score`` (float, NaN if unscored)."""
    rows_u, rows_r, rows_i, rows_s = [], [], [], []
    for u, lst in recs.items():
        for r, x in enumerate(lst, start=1):
            item, score = x if isinstance(x, tuple) else (x, float("nan"))
            rows_u.append(str(u))
            rows_r.append(r)
            rows_i.append(str(item))
            rows_s.append(float(score))
    df = pd.DataFrame(
        {
            "user_id": pd.Series(rows_u, dtype="string"),
            "rank": pd.Series(rows_r, dtype="int32"),
            "item_id": pd.Series(rows_i, dtype="string"),
            "score": pd.Series(rows_s, dtype="float64"),
        }
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(df, path)
    return path


def read_candidates(path: str | Path, with_scores: bool = False) -> Recs:
    """Inverse of :func:`write_candidates`: ``{user: [item, ...]}`` in rank order (or ``(item, score)``)."""
    df = pd.read_parquet(path)
    missing = {"user_id", "rank", "item_id", "score"} - set(df.columns)
    if missing:
        raise ValueError(f"candidate file {path} lacks columns {sorted(missing)}")
    df = df.sort_values(["user_id", "rank"], kind="stable")
    out: dict = {}
    for u, grp in df.groupby("user_id", sort=False):
        items = grp["item_id"].astype(str).tolist()
        out[str(u)] = (
            list(zip(items, grp["score"].astype(float).tolist(), strict=True)) if with_scores else items
        )
    return out


RELEVANT_FILE = "relevant.parquet"
CANDIDATES_META = "meta.json"


def write_relevant(
    relevant: Mapping[str, set],
    directory: str | Path,
    split=None,
    positive_threshold: float | None = None,
    num_candidates: int | None = None,
) -> Path:
    """Write the relevance the candidate files were evaluated against beside them: ``relevant.parquet``
    (``user_id, item_id``: each test user's relevant items; a test user without any has one row with a
    null item) and ``meta.json`` (the split directory and fingerprint, the threshold). The reranker
    (``eval.candidates_file``) judges the candidates by this file, not by its own split's test pairs,
    so candidates from another dataset run (e.g. the EXP3RT release's top-k split) are scored against
    that run's test split."""
    rows = [(u, i) for u, items in relevant.items() for i in sorted(items)]
    rows += [(u, None) for u, items in relevant.items() if not items]
    df = pd.DataFrame(
        {
            "user_id": pd.Series([r[0] for r in rows], dtype="string"),
            "item_id": pd.Series([r[1] for r in rows], dtype="string"),
        }
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(df, directory / RELEVANT_FILE)
    meta = {
        "relevant": RELEVANT_FILE,
        "relevant_is": "test items"
        + ("" if positive_threshold is None else f" rated >= {positive_threshold}"),
        "positive_threshold": positive_threshold,
        "num_candidates": num_candidates,
        "split_dir": None if split is None else str(split.directory),
        "split_fingerprint": None if split is None else split.fingerprint,
        "users": int(len(relevant)),
        "users_with_relevant": int(sum(1 for s in relevant.values() if s)),
    }
    write_json_atomic(directory / CANDIDATES_META, meta, default=None)
    return directory / RELEVANT_FILE


def read_relevant(candidates_file: str | Path) -> dict[str, set[str]] | None:
    """The relevance written beside a candidates file by :func:`write_relevant` (``None`` when the file
    has none, e.g. a candidates file written by hand)."""
    path = Path(candidates_file).parent / RELEVANT_FILE
    if not path.is_file():
        return None
    df = pd.read_parquet(path)
    out: dict[str, set[str]] = {}
    for u, i in df[["user_id", "item_id"]].itertuples(index=False):
        items = out.setdefault(str(u), set())
        if not pd.isna(i):
            items.add(str(i))
    return out


def relevant_sets(test_df: pd.DataFrame, positive_threshold: float | None = None) -> dict[str, set[str]]:
    """Each test user's relevant items: test items rated ``>= positive_threshold`` (all when None).
    Users with none keep an empty set, so :func:`topk_metrics` counts them as excluded."""
    out: dict[str, set[str]] = {str(u): set() for u in test_df["user_id"].unique()}
    for u, i in positives_of(test_df, positive_threshold)[["user_id", "item_id"]].itertuples(index=False):
        out[str(u)].add(str(i))
    return out


def evaluate_retriever(
    recs: Mapping, test_df: pd.DataFrame, ks: Sequence[int], positive_threshold: float | None = None
) -> dict[str, float]:
    """Recall/nDCG/Hit/MRR/Precision@k of ``recs`` against the test positives (full ranking over all
    training items not seen by the user)."""
    return topk_metrics(_strip(recs), relevant_sets(test_df, positive_threshold), ks)
