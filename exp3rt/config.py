"""Typed schemas for the config groups, and the check that runs before any work starts.

Each group's YAML (``conf/<group>/*.yaml``) is merged onto its dataclass here, so a wrong type, an
unknown key or a value outside an enum is rejected with a sentence naming the key and the allowed
values. Cross-field rules (``scale.min < scale.max``, split ratios) are checked in :func:`validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from exp3rt.devices import check_device
from exp3rt.errors import ConfigError  # noqa: F401 - the name every module imports from here


class Loader(StrEnum):
    synthetic = "synthetic"
    amazon2018 = "amazon2018"
    exp3rt_release = "exp3rt_release"
    tabular = "tabular"
    lightgcn_topk = "lightgcn_topk"  # a LightGCN folder (the EXP3RT release's top-k split)


class DuplicatePolicy(StrEnum):
    keep_first = "keep_first"
    keep_latest = "keep_latest"
    error = "error"


class VariantPolicy(StrEnum):
    """Amazon 5-core files repeat one review (same reviewer, text and time) across product variants."""

    keep_one = "keep_one"  # keep the first copy only
    keep_all = "keep_all"  # keep every copy as its own interaction


class SplitStrategy(StrEnum):
    random = "random"  # seeded random by interaction
    per_user = "per_user"  # hold out a ratio or the last/random n of each user's interactions
    temporal = "temporal"  # global time cut: the latest interactions are test
    unseen_user = "unseen_user"  # whole users held out (cold start)
    predefined = "predefined"  # the source's own split labels (e.g. EXP3RT release files)


class HoldoutOrder(StrEnum):
    random = "random"
    time = "time"


class EvalPart(StrEnum):
    """Which pairs exp3rt-evaluate scores."""

    test = "test"  # the split's test pairs: the figures you report
    valid = "valid"  # the split's validation pairs: what a search (Optuna, a W&B sweep) may optimise


class RerankTuneOn(StrEnum):
    """Whose relevant items choose the reranking blend weight (eval.rerank_tune_weights)."""

    valid = "valid"  # validation users' candidates, scored before any test user is read
    crossfit = "crossfit"  # two folds of the reranked users, each reranked with the β the other fold chose


class ReadoutMode(StrEnum):
    full = "full"  # reasoning, then the rating readout after it
    fast = "fast"  # the readout alone, right after the prompt


class EvalBackend(StrEnum):
    hf = "hf"  # transformers, CPU or GPU
    vllm = "vllm"  # the `vllm` extra, a CUDA GPU


class FailurePolicy(StrEnum):
    """What a failed readout is scored as (always counted): a baseline's prediction, or left out."""

    user_mean = "user_mean"
    item_mean = "item_mean"
    global_mean = "global_mean"
    exclude = "exclude"


class OverlapPolicy(StrEnum):
    """What exp3rt-evaluate does with ``eval.test_file`` pairs that the student's training data holds."""

    error = "error"  # refuse, naming the counts (default): a memorised pair is no test
    drop = "drop"  # score only the unseen pairs; the dropped ones are counted in metrics.json


class TabularFormat(StrEnum):
    """The tabular loader's file format."""

    auto = "auto"  # by the file's extension (a .gz suffix is looked through)
    csv = "csv"
    tsv = "tsv"
    jsonl = "jsonl"
    parquet = "parquet"


class RetrieverName(StrEnum):
    """A first-stage retriever, fitted on the training split."""

    popularity = "popularity"
    bpr_mf = "bpr_mf"
    lightgcn = "lightgcn"


@dataclass
class ScaleConf:
    min: float = 1.0  # the lowest rating; a loader treats a rating outside [min, max] as bad input
    max: float = 5.0  # the highest rating; must be above min
    step: float = 1.0  # valid ratings are min + k·step (0.5 admits 3.5); an off-step rating is bad input


@dataclass
class KCoreConf:
    user: int = 0  # keep users with at least this many interactions (0 = no filter)
    item: int = 0  # keep items with at least this many interactions (0 = no filter); alternates with `user`


@dataclass
class SyntheticWorldConf:
    seed: int = 7  # seeds every draw of the world: the same seed and settings give the same dataset
    n_users: int = 200  # users generated (ids u0001, u0002, …)
    n_items: int = 150  # items generated (ids i0001, …)
    min_per_user: int = 8  # fewest items a user rates (each user's count is uniform in [min, max])
    max_per_user: int = 30  # most items a user rates; at most n_items
    # aspects each user values: +1.1 points (1–5 scale) when the item is strong in one, -1.3 if weak
    likes_per_user: int = 3
    # aspects each user minds, apart from the likes: -2.2 points when the item is weak in one, +0.25 if strong
    dislikes_per_user: int = 2
    noise: float = 0.35  # std of the rating noise, in points of a 1–5 scale (scaled for other scales)
    popularity_skew: float = 1.0  # Zipf exponent of item popularity (0 = uniform)
    strong_per_item: int = 3  # aspects an item is strong in (genre-tilted; its description names them)
    weak_per_item: int = 2  # aspects an item is weak in (only reviews reveal them, never the description)
    selection_bias: float = 0.5  # how much users pick items whose description promises what they like
    base: float = 4.3  # the rating before biases and matches, in points of a 1–5 scale
    user_bias_std: float = 0.7  # spread of users' personal tendencies (harsh … generous)
    item_bias_std: float = 0.5  # spread of items' overall quality


@dataclass
class ReleaseFilesConf:
    """File names (relative to ``dataset.path``) of an EXP3RT release directory; null = absent."""

    # a rating file (JSON list) whose pairs are labelled train for split.strategy=predefined; at least one
    # of rating_train / rating_valid / rating_test must be set
    rating_train: str | None = None
    rating_valid: str | None = None  # a rating file whose pairs are labelled valid (see rating_train)
    rating_test: str | None = None  # a rating file whose pairs are labelled test (see rating_train)
    # {user_id, user_persona} records: adds the users the rating files lack to the profiles teacher=release
    # imports
    user_profiles: str | None = None
    # {item_id, item_synopsis} records: adds the items the rating files lack to extras/item_profiles.parquet,
    # which no stage reads (teacher=release takes each pair's synopsis from the rating files)
    item_profiles: str | None = None
    # the release's profile SFT file ({instruction, input, output}): kept as extras/user_profile_sft.parquet;
    # no stage reads it
    user_profile_sft: str | None = None
    item_profile_sft: str | None = None  # like user_profile_sft, for item profiles; no stage reads it
    # a LightGCN folder (train.txt, test.txt, id lists): kept as extras/topk_train.parquet and
    # topk_test.parquet, which no stage reads (loader lightgcn_topk loads such a folder as a dataset)
    topk_dir: str | None = None


@dataclass
class DatasetConf:
    name: str = MISSING  # names the prepared data, annotation and student folders (<name>-…) and W&B tags
    loader: Loader = MISSING  # which reader builds the interactions from dataset.path (allowed values below)
    domain: str = "item"  # the noun prompts use: movie / book / product
    scale: ScaleConf = field(default_factory=ScaleConf)
    path: str | None = None  # main file or directory
    meta_path: str | None = None  # item metadata (Amazon meta file, generic items table)
    format: TabularFormat = TabularFormat.auto  # tabular: auto | csv | tsv | jsonl | parquet
    separator: str | None = None  # tabular: override the delimiter
    header: bool = True  # tabular: first line names the columns
    column_names: list[str] | None = None  # tabular without header
    fields: dict[str, str] = field(default_factory=dict)  # canonical field -> source column
    item_fields: dict[str, str] = field(default_factory=dict)  # canonical item field -> source column
    # text encoding of the amazon2018 files and of tabular CSV/TSV/JSONL files; other loaders ignore it
    encoding: str = "utf-8"
    # true: the first bad input record stops loading, naming file, line and field; false: such records are
    # skipped and counted in the prepared data's data_report.md
    strict: bool = True
    require_review: bool = True  # an empty review is bad input (false for rating-only data)
    # a (user, item) pair rated more than once: keep_first in file order, keep_latest by timestamp (file order
    # breaks ties), or error naming both lines; lightgcn_topk: a pair in train.txt and test.txt (data/topk.py)
    duplicates: DuplicatePolicy = DuplicatePolicy.keep_first
    # amazon2018: a review repeated under other product variants' asins (allowed values below); other
    # loaders ignore it
    variants: VariantPolicy = VariantPolicy.keep_one
    kcore: KCoreConf = field(default_factory=KCoreConf)
    world: SyntheticWorldConf = field(default_factory=SyntheticWorldConf)
    release: ReleaseFilesConf = field(default_factory=ReleaseFilesConf)


@dataclass
class SplitConf:
    strategy: SplitStrategy = SplitStrategy.random  # how interactions are divided (allowed values below)
    seed: int = (
        42  # the split seed; training seeds are baselines.rating.seed, baselines.retrieval.seed, train.seed
    )
    # share held out as test: of all interactions (random, temporal), of each user's (per_user, rounded per
    # user; unused with leave_n_out), of the users (unseen_user); predefined ignores it
    test_ratio: float = 0.2
    # share held out for validation, counted as test_ratio is (0: no validation part); per_user with
    # leave_n_out: any value > 0 holds out leave_n_out more per user; test_ratio + valid_ratio < 1
    valid_ratio: float = 0.0
    leave_n_out: int | None = None  # per_user: hold out n per user instead of a ratio
    order: HoldoutOrder = HoldoutOrder.random  # per_user: which interactions are held out
    min_train_per_user: int = 1  # per_user: never hold out a user's last remaining interaction(s)
    warm_min_train: int = 5  # a test user with at least this many training ratings is "warm"


@dataclass
class RatingBaselinesConf:
    """Classical rating predictors (``exp3rt.baselines.rating``). MF defaults were chosen on a
    validation split carved from the ML-100k training part (seeded 80/20, then 90/10)."""

    # the rating predictors the baselines stage fits on train and scores on test (RMSE, MAE), in this order:
    # global_mean | user_mean | item_mean | bias | biased_mf
    models: list[str] = field(
        default_factory=lambda: ["global_mean", "user_mean", "item_mean", "bias", "biased_mf"]
    )
    bias_reg: float = 5.0  # L2 on b_u, b_i of the `bias` model (shrinks sparse users/items toward mu)
    bias_iters: int = 15  # alternating closed-form sweeps
    mf_factors: int = 100  # biased_mf: latent factors per user and per item
    mf_epochs: int = 40  # biased_mf: SGD passes over the training ratings
    mf_lr: float = 0.02  # biased_mf: the SGD learning rate of the first epoch (see mf_lr_decay)
    mf_lr_decay: float = 0.95  # learning rate multiplied by this after every epoch
    mf_reg: float = 0.08  # L2 on factors
    mf_bias_reg: float = 0.02  # L2 on biases
    mf_init_std: float = 0.1  # biased_mf: std of the normal initialisation of the factors (biases start at 0)
    mf_batch_size: int = 512  # vectorised SGD mini-batch
    seed: int = 0  # training seed (the split seed lives in `split.seed`)


@dataclass
class RetrieverBaselinesConf:
    """First-stage retrievers (``exp3rt.baselines.retrievers``) on implicit feedback."""

    # the retrievers the baselines stage fits and scores (top-k metrics at eval.ks); each writes its top
    # num_candidates per test user to candidates/<name>.parquet: popularity | bpr_mf | lightgcn
    models: list[str] = field(default_factory=lambda: ["popularity", "bpr_mf", "lightgcn"])
    num_candidates: int = 20  # N candidates per user handed to the reranker (paper: 20)
    positive_threshold: float | None = None  # implicit feedback: ratings >= this count (null: all)
    # BPR-MF / LightGCN: epoch = one pass over the training positives; reg = L2 on ego embeddings per
    # triple. Chosen on a validation split carved from the ML-100k training part (LightGCN: paper's 1e-4).
    dim: int = 64
    lr: float = 0.01  # Adam
    batch_size: int = 2048  # BPR-MF / LightGCN: training positives per Adam step, each with a negative
    bpr_epochs: int = 50  # BPR-MF: passes over the training positives
    bpr_reg: float = 3e-2  # BPR-MF: L2 weight on the ego embeddings of each triple
    lightgcn_epochs: int = 30  # LightGCN: passes over the training positives
    lightgcn_reg: float = 1e-4  # LightGCN: L2 weight on the ego (layer-0) embeddings of each triple
    lightgcn_lr: float | None = None  # LightGCN's own Adam learning rate (null: lr, shared with BPR-MF)
    init_std: float = 0.1  # BPR-MF / LightGCN: std of the normal initialisation of the embeddings
    lightgcn_layers: int = 3  # LightGCN: propagation layers; the embedding averages layers 0..L (0: none)
    seed: int = 0  # training seed (the split seed lives in `split.seed`)


@dataclass
class BaselinesConf:
    rating: RatingBaselinesConf = field(default_factory=RatingBaselinesConf)
    retrieval: RetrieverBaselinesConf = field(default_factory=RetrieverBaselinesConf)


@dataclass
class EvalConf:
    # cut-offs k of the top-k metrics (ndcg@k, recall@k, …) of the baseline retrievers and of reranking
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    candidates: str = "full"  # full: rank all non-training items (the protocol is logged)
    # exp3rt-evaluate (student): reasoning then readout (full) or readout alone (fast)
    mode: ReadoutMode = ReadoutMode.full
    failure_policy: FailurePolicy = (
        FailurePolicy.user_mean
    )  # user_mean | item_mean | global_mean | exclude (counted either way)
    max_pairs: int | None = None  # evaluate the first n test pairs (null: all)
    batch_size: int = 16  # rows per forward on the hf backend (vLLM schedules its own batches)
    max_new_tokens: int | None = (
        None  # null: the longest answer the student trained on + 16 (train.json), else student.max_new_tokens
    )
    # the reasoning of full-mode predictions: false = greedy, true = sampled at eval.temperature (the readout
    # is read from the rating tokens' probabilities either way; reranking always decodes greedily)
    do_sample: bool = False
    temperature: float = 1.0  # do_sample: the logits are divided by this before sampling
    seed: int = 0  # do_sample: the sampling seed; also the vLLM engine's seed
    # a student trained on the scored rationale (prompt.rationale_form=scored): its estimate is recomputed
    # from the lists and averages it wrote (the teacher's rule, exact arithmetic) before the rating is read
    # (predictions and full-mode reranking; hf backend)
    compute_estimate: bool = False
    # top-k reranking of a first-stage retriever's candidates by the student's expected rating
    rerank: bool = False
    # popularity | bpr_mf | lightgcn, fitted on the training split
    rerank_retriever: RetrieverName = RetrieverName.lightgcn
    num_candidates: int = 20  # the paper reranks top-20
    rerank_mode: ReadoutMode = ReadoutMode.fast  # fast: readout only; full: reasoning then readout
    rerank_max_users: int | None = 50  # test users reranked (null: all)
    # null: order by the expected rating alone (the paper's); β >= 0: by β·(rating scaled onto [0, 1])
    # minus the first-stage position / N (exp3rt.inference.rerank.rerank); rerank/rating_only/* then
    # reports the plain rating order beside it
    rerank_rating_weight: float | None = None
    # β values tried, the one with the highest nDCG@rerank_tune_k replacing rerank_rating_weight (the first
    # listed wins a tie; rerank.tuning holds every figure); []: no tuning. Chosen by rerank_tune_on
    rerank_tune_weights: list[float] = field(default_factory=list)
    # valid: on validation users' candidates, scored before the test users are read (needs
    # split.valid_ratio > 0); crossfit: each half of the reranked users with the β the other half chose
    rerank_tune_on: RerankTuneOn = RerankTuneOn.valid
    rerank_tune_users: int | None = 20  # valid: validation users scored to choose β (null: all)
    rerank_tune_k: int = 10  # the nDCG cut-off β is chosen by
    candidates_file: str | None = (
        None  # a first-stage candidates parquet (exp3rt-baselines writes them); null: fit rerank_retriever
    )
    split: EvalPart = (
        EvalPart.test
    )  # test | valid (a hyperparameter search optimises on valid, never on test)
    test_file: str | None = None  # an EXP3RT release rating file to evaluate on instead of the test split
    test_file_strict: bool = True  # false: skip and count bad records of eval.test_file instead of stopping
    test_file_overlap: OverlapPolicy = OverlapPolicy.error  # pairs of the file the student trained on
    wandb: bool = True  # log metrics + an explanations table (offline unless WANDB_MODE / the train run say)
    wandb_rows: int = 200  # explanations in the table
    # the student's inference engine: hf (transformers, CPU or GPU) | vllm (the `vllm` extra, a CUDA GPU);
    # both give the same readouts (exp3rt.inference.vllm_backend)
    backend: EvalBackend = EvalBackend.hf
    # hf backend: where the student runs. auto = the first CUDA GPU when torch sees one, else the CPU;
    # or cpu | cuda | cuda:N | mps
    device: str = "auto"
    merge_lora: bool = (
        True  # hf backend: fold a LoRA adapter into the weights for inference (fewer ops per step)
    )
    vllm_gpu_memory_utilization: float = 0.9  # share of GPU memory vLLM takes (weights + KV cache)
    vllm_max_model_len: int | None = None  # null: the model's own context length
    vllm_tensor_parallel_size: int = 1  # GPUs the model is split over
    vllm_enable_prefix_caching: bool = True  # reranking's per-user prompt prefix is computed once
    vllm_max_lora_rank: int | None = None  # null: the adapter's r, rounded up to a rank vLLM supports
    vllm_enforce_eager: bool = False  # true: skip CUDA-graph capture (faster start, slower decoding)


class TeacherBackendName(StrEnum):
    openai = "openai"  # any OpenAI-compatible HTTP server: OpenAI, vLLM, Ollama, llama.cpp
    hf = "hf"  # an in-process transformers model
    extractive = "extractive"  # no LLM: deterministic lexicon-based annotator (baseline, demo, tests)
    release = "release"  # no calls: import the EXP3RT release annotations


class TeacherMode(StrEnum):
    sync = "sync"  # one HTTP call per request
    batch = "batch"  # the OpenAI Batch API (openai backend only)


class TeacherDtype(StrEnum):
    """The hf teacher's weights as loaded (the short names are aliases of the long ones)."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    auto = "auto"  # the checkpoint's own dtype


@dataclass
class PriceConf:
    """USD per one million tokens."""

    input_per_1m: float = 0.0  # prompt tokens
    output_per_1m: float = 0.0  # completion (generated) tokens


@dataclass
class TeacherBatchConf:
    """``teacher.mode=batch``: the OpenAI Batch API (see docs/teacher.md, "Batch mode")."""

    max_requests: int = 50000  # lines per batch (the API's limit)
    max_bytes: int = 190_000_000  # bytes per input file (the API's limit is 200 MB)
    poll_initial_s: float = 5.0  # the first wait between polls; it doubles up to poll_max_s
    poll_max_s: float = 300.0  # the longest wait between two polls of the submitted batches, in seconds
    submit_only: bool = False  # submit the stage's batches and exit; a later run collects them
    max_failed_rounds: int = 2  # follow-up batches for lines that failed, then they are recorded as failures
    price_factor: float = 0.5  # batch price = sync price (teacher.prices) x this factor, for every model


@dataclass
class TeacherConf:
    # who writes the annotations (allowed values below)
    backend: TeacherBackendName = TeacherBackendName.extractive
    mode: TeacherMode = TeacherMode.sync  # sync: one HTTP call per request | batch: the OpenAI Batch API
    name: str = "extractive"  # a label for runs and W&B tags
    # openai: the model the server is asked for; hf, extractive, release: a label. It is part of every
    # answer-cache key and the key of teacher.prices
    model: str = "vader-lexicon"
    # openai backend
    base_url: str | None = None  # null = api.openai.com; e.g. http://localhost:8000/v1 for vLLM
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable, never from config
    organization: str | None = None  # openai: the OpenAI organization id (null: $OPENAI_ORG_ID if set)
    # sampling (the paper: temperature 0.1, max_tokens 200)
    temperature: float = 0.1
    # most tokens one answer may hold (openai max_tokens, hf max_new_tokens); the budget reserves this much
    # output per request
    max_tokens: int = 200
    # openai, hf: sample from the smallest set of tokens whose probability reaches top_p (1.0: no cut)
    top_p: float = 1.0
    # openai: sent as the request's seed (null: not sent); hf: seeds its sampling, per batch (null: unseeded)
    seed: int | None = None
    # throughput and robustness
    concurrency: int = 8  # requests in flight at once (values below 1 count as 1)
    requests_per_minute: float | None = None  # sends are paced evenly to this rate (null or 0: none)
    # most tokens sent per minute, counting estimated prompt tokens + max_tokens per request (null or 0: none)
    tokens_per_minute: float | None = None
    timeout_s: float = 60.0  # openai: seconds one HTTP call may take; a timeout is a transient failure
    # retries of a request after a transient failure (timeout, HTTP 429/408/409/5xx, malformed answer);
    # then it is recorded as failed and the run goes on
    max_retries: int = 6
    # the wait before the first retry, doubled per retry up to backoff_max_s (a random draw between half
    # and all of it); a server's Retry-After replaces it
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0  # the longest wait between two retries, in seconds
    repair_retries: int = 2  # re-asks when an answer breaks the stage's format
    # cost: stop before more than max_cost_usd USD is spent (requests in flight reserved at their worst case,
    # earlier runs in the same annotation directory counted); needs teacher.prices for the model; null: no cap
    max_cost_usd: float | None = None
    prices: dict[str, PriceConf] = field(default_factory=dict)  # model -> price
    batch: TeacherBatchConf = field(default_factory=TeacherBatchConf)
    # hf backend
    model_path: str | None = None  # hf: a local model folder (config.json, weights, tokenizer); never the hub
    batch_size: int = 8  # hf: requests per generate call (left-padded, equal sampling parameters)
    device: str = (
        "auto"  # auto (the first CUDA GPU when torch sees one, else the CPU) | cpu | cuda | cuda:N | mps
    )
    # hf: the weights' dtype: float32 | bfloat16 | float16 (or fp32, bf16, fp16) | auto (the checkpoint's)
    dtype: TeacherDtype = TeacherDtype.float32
    # hf: the longest prompt in tokens; a longer one loses tokens from the start of its last user message
    max_input_tokens: int = 2048
    # release backend: read by no code; teacher=release imports from the dataset (loader exp3rt_release)
    release_dir: str | None = None


class ItemReviewPolicy(StrEnum):
    all = "all"
    helpful = "helpful"  # top-k by helpful votes
    similar_users = "similar_users"  # reviews by the k users most similar to the target user


class Similarity(StrEnum):
    rating_cosine = "rating_cosine"  # cosine on mean-centred sparse rating vectors
    profile_embedding = "profile_embedding"  # all-MiniLM-L6-v2 embeddings of user profiles


class ConsistencyAction(StrEnum):
    flag = "flag"  # keep the rationale, flagged in the annotations
    regenerate = "regenerate"  # ask for the rationale once more, then check it again


@dataclass
class AnnotateConf:
    # which training reviews feed an item profile: all (most helpful first, up to item_max_reviews) |
    # helpful (the item_k most helpful) | similar_users (per pair: the item_k reviewers nearest the user)
    item_policy: ItemReviewPolicy = ItemReviewPolicy.all
    item_k: int = 3  # helpful / similar_users: how many reviews (paper: k=3 similar users)
    item_max_reviews: int = 30  # policy all: at most this many (most helpful first)
    # similar_users: how reviewers are ranked against the target user (profile_embedding: after user_profile)
    similarity: Similarity = Similarity.rating_cosine
    user_max_sets: int = 30  # summarise in groups of this many preference sets, then summarise summaries
    context_tokens: int = 3000  # prompt budget for one profile call
    rationale_pairs: str = "train"  # which pairs get rationales: train | train+valid
    max_rationale_pairs: int | None = None  # cap (seeded sample) for cost control
    # a second teacher call (prompt.consistency) reads the rating implied by each rationale; pairs off by more
    # than consistency_margin are flagged or regenerated (consistency_action)
    consistency_check: bool = False
    consistency_margin: float = 1.0  # largest |implied rating - true rating| that passes, in rating points
    consistency_action: ConsistencyAction = ConsistencyAction.flag  # flag | regenerate
    sample_seed: int = 0  # seed of the rationale pairs sampled when max_rationale_pairs caps them


@dataclass
class PromptTemplate:
    # the system message: a str.format template filled from {domain}, {domain_title}, {scale_min},
    # {scale_max} and the stage's own fields; a placeholder the stage does not provide is an error
    system: str = MISSING
    user: str = MISSING  # the user message: a template like system, holding the stage's inputs


class RationaleForm(StrEnum):
    """How a rationale is written (the extractive teacher writes either; an LLM teacher is asked by its
    prompt)."""

    narrative = "narrative"  # a few sentences weighing the pair, ending in an overall lean
    # the profile overlaps in a fixed order (met / missed / triggered / avoided) and the averages
    compact = "compact"
    # compact, then an estimate computed from it: the user's average, 1/16 of the span per like met (+)
    # or missed (-), 1/8 per dislike triggered (-); a noise-free number for the rating to follow
    scored = "scored"


class ProfileForm(StrEnum):
    """How a user's or an item's profile lists its likes and dislikes (the extractive teacher writes either;
    an LLM teacher is asked by its prompt)."""

    sentences = "sentences"  # a short sentence per bullet, as reviewers wrote it
    aspects = "aspects"  # the aspect alone, a word or two per bullet: about half the tokens of sentences


@dataclass
class PromptConf:
    # a name for these templates; with a hash of each stage's template it forms the prompt version in every
    # answer-cache key, so edited wording never reuses old answers
    version: str = MISSING
    # the extractive teacher writes this form, an LLM what prompt.rationale asks for; compact also tags the
    # rationale stage's prompt version (allowed values below)
    rationale_form: RationaleForm = RationaleForm.narrative
    # the extractive teacher writes profiles in this form, an LLM what prompt.user_profile/item_profile ask
    # for; aspects also tags both profile stages' prompt versions (allowed values below)
    profile_form: ProfileForm = ProfileForm.sentences
    # the extractive teacher writes each other name of an aspect as the aspect's own name before it reads a
    # review, so profiles meet on one word: null (reviews as written), world (the synthetic world's names
    # for dataset.domain) or a YAML file of 'aspect: [other name, ...]'; set, it tags the extract stage's
    # prompt version. An LLM teacher names aspects as its prompt asks (docs/teacher.md#aspect-names)
    aspect_lexicon: str | None = None
    extract: PromptTemplate = field(default_factory=PromptTemplate)
    user_profile: PromptTemplate = field(default_factory=PromptTemplate)
    item_profile: PromptTemplate = field(default_factory=PromptTemplate)
    rationale: PromptTemplate = field(default_factory=PromptTemplate)
    consistency: PromptTemplate = field(default_factory=PromptTemplate)
    # the user message sent after an answer that breaks the stage's format ({problem} names what was wrong),
    # up to teacher.repair_retries times
    repair: str = MISSING


class Dtype(StrEnum):
    """The student's weights as loaded."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class PeftMethod(StrEnum):
    lora = "lora"
    none = "none"  # a full fine-tune


class TinyVocab(StrEnum):
    """The tiny Llama's byte-level BPE tokenizer."""

    byte = "byte"  # no merges
    bpe = "bpe"  # 400 merges
    words = "words"  # 3,000 merges


class LoraBias(StrEnum):
    """Which biases peft trains."""

    none = "none"
    all = "all"
    lora_only = "lora_only"


QUANTIZATIONS = (None, "4bit")  # a string, not an enum: "4bit" cannot be an enum member's name


@dataclass
class StudentConf:
    """The student model. ``model_path`` is a local folder or a hub id (GPU machines); ``tiny`` builds a
    random Llama with an offline tokenizer into ``model_path`` when it is missing (tests, demo)."""

    name: str = "tiny"  # a label: in the pipeline's student folder name, the training run's name and W&B tags
    model_path: str = MISSING  # the base model: a local folder (config.json, weights, tokenizer) or a hub id
    build_tiny: bool = False  # create the tiny offline Llama at model_path if absent
    # build_tiny: its byte-level BPE tokenizer: byte (no merges) | bpe (400 merges) | words (3,000 merges)
    tiny_vocab: TinyVocab = TinyVocab.bpe
    tiny_hidden: int = 64  # build_tiny: hidden size (the MLP is twice that; 4 attention heads)
    tiny_layers: int = 2  # build_tiny: decoder layers
    dtype: Dtype = Dtype.float32  # float32 | bfloat16 | float16: weights as loaded
    quantization: str | None = None  # null | 4bit (QLoRA through the `qlora` extra: bitsandbytes, GPU)
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2
    # reasoning length for in-training validation generation (and evaluation of runs without train.json
    # answer_tokens)
    max_new_tokens: int = 160


@dataclass
class PeftConf:
    method: PeftMethod = PeftMethod.lora  # lora | none (full fine-tune)
    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scaling numerator (the update is scaled by alpha / r)
    dropout: float = 0.0  # dropout on the LoRA branch's input
    # "all-linear": every linear layer but lm_head (the paper's choice); or a list of module names
    target_modules: Any = "all-linear"
    bias: LoraBias = LoraBias.none  # peft's bias training: none | all | lora_only


class LoggerMode(StrEnum):
    """The W&B mode of the training run and of its evaluations."""

    offline = "offline"  # written locally; sync later with `wandb sync`
    online = "online"
    disabled = "disabled"  # nothing is logged to W&B


@dataclass
class LoggerConf:
    # log training to Weights & Biases (mode=disabled: never); false also keeps the run's evaluations off W&B
    wandb: bool = True
    project: str = "exp3rt"  # the W&B project of the training run and of its evaluations
    entity: str | None = None  # the W&B user or team the runs go to (null: the account's default entity)
    mode: LoggerMode = LoggerMode.offline  # offline (sync later with `wandb sync`) | online | disabled
    group: str | None = None  # null: the experiment name
    # extra W&B tags of the training run (its dataset:, teacher:, student:, ablation: tags are added)
    tags: list[str] = field(default_factory=list)
    csv: bool = True  # log training metrics to <run dir>/csv/version_0/metrics.csv (Lightning's CSVLogger)


class Accelerator(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class StrategyName(StrEnum):
    auto = "auto"  # one device (Lightning's SingleDeviceStrategy)
    ddp = "ddp"
    deepspeed = "deepspeed"  # needs a `deepspeed` group other than `none`


class SchedulerName(StrEnum):
    constant = "constant"  # after linear warm-up
    cosine = "cosine"  # linear warm-up, then cosine decay to 0 at trainer.max_steps


#: Lightning precision strings this project supports (OmegaConf enums match names, and "32-true" is not
#: a Python name, so precision is a string checked in :func:`validate`).
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")


@dataclass
class TrainerConf:
    """Arguments of ``pytorch_lightning.Trainer`` that a user reaches for, plus how the job was launched.

    ``strategy`` is a name; :func:`exp3rt.student.strategies.build_strategy` turns it (with the
    ``deepspeed`` group) into what the Trainer takes.
    """

    accelerator: Accelerator = Accelerator.cpu  # cpu | gpu
    devices: int = 1  # processes per node (one per GPU)
    num_nodes: int = 1  # machines (SLURM nodes) of one training
    # 32-true | bf16-true | bf16-mixed | 16-mixed | 16-true (16-mixed needs a GPU; *-true: 16-bit weights)
    precision: str = "32-true"
    strategy: StrategyName = StrategyName.auto  # auto | ddp | deepspeed (with the deepspeed group)
    process_group_backend: str | None = None  # null: nccl on GPU, gloo on CPU
    max_steps: int = -1  # -1: run max_epochs
    max_epochs: int | None = 1  # a cap beside max_steps (whichever comes first)
    # null: derived from train.batch_size (see validate); set: must agree with it
    accumulate_grad_batches: int | None = None
    gradient_clip_val: float | None = None  # clip the gradient norm to this (null: no clipping)
    val_check_interval: Any = None  # int: every n training batches; float in (0, 1]: fraction of an epoch
    log_every_n_steps: int = 50  # loss, lr, tokens/s and memory to the loggers
    limit_val_batches: Any = None  # int: batches; float in [0, 1]: fraction
    deterministic: bool = False  # torch deterministic algorithms (slower)
    checkpoint_every_n_steps: int | None = None  # also write checkpoints/last.ckpt every n optimizer steps
    # the tasks per node of the SLURM job this run is in when Hydra's SLURM launcher started it (one task
    # per device; see slurm_tasks_per_node below); null otherwise. Set by hand for a hand-written sbatch.
    slurm_tasks_per_node: int | None = "${exp3rt_slurm_tasks_per_node:}"  # type: ignore[assignment]


def slurm_tasks_per_node(root: Any = None) -> int | None:
    """``${exp3rt_slurm_tasks_per_node:}``, the default of ``trainer.slurm_tasks_per_node``.

    In a job that Hydra's SLURM launcher (hydra-submitit-launcher, ``hydra/launcher=slurm_gpu``) started:
    the tasks per node SLURM gave the job (``SLURM_NTASKS_PER_NODE``, which Lightning also checks against
    ``devices``), else the launcher's ``tasks_per_node``. Anywhere else (a plain run, another launcher,
    no Hydra) None, so :func:`validate` has nothing to compare; also None for a pipeline run that does not
    train (``stages`` without ``train``, e.g. the teacher on ``hydra/launcher=slurm_cpu``). The launcher
    allocates once per multirun, so a job whose ``trainer.devices`` differs from the allocation is
    refused before any work.
    """
    import os

    stages = root.get("stages") if root is not None else None
    if stages is not None and "train" not in [str(s) for s in stages]:
        return None
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except (ImportError, ValueError):  # no Hydra run (tests, scripts)
        return None
    if not str(launcher.get("_target_", "")).endswith(".SlurmLauncher"):
        return None
    env = os.environ.get("SLURM_NTASKS_PER_NODE", "")
    if env.isdigit():
        return int(env)
    return int(launcher.tasks_per_node)


class OffloadDevice(StrEnum):
    cpu = "cpu"
    nvme = "nvme"  # deepspeed.nvme_path


@dataclass
class DeepSpeedConf:
    """DeepSpeed ZeRO in Lightning's dialect (``DeepSpeedStrategy(config=...)``), typed.

    :func:`exp3rt.student.strategies.deepspeed_config` turns this into the dict. Lightning fills
    ``gradient_accumulation_steps`` from ``trainer.accumulate_grad_batches`` (and raises if the dict
    has it), ``gradient_clipping`` from ``trainer.gradient_clip_val``, and the ``fp16``/``bf16``
    section from ``trainer.precision``; it does not resolve HF-style ``"auto"`` values, so none may
    appear here.
    """

    stage: int | None = None  # ZeRO stage 1, 2 or 3; null: DeepSpeed off (deepspeed=none)
    offload_optimizer: OffloadDevice | None = (
        None  # null | cpu | nvme: optimizer states (and step) off the GPU
    )
    offload_param: OffloadDevice | None = None  # null | cpu | nvme: parameters off the GPU (stage 3 only)
    nvme_path: str = "/local_nvme"  # the folder offloaded tensors go to when an offload_* key is nvme
    # with offload_* set: offload into page-locked CPU memory (faster transfers; it cannot be paged out)
    pin_memory: bool = True
    # copy gradients into one contiguous buffer as they are produced (avoids memory fragmentation)
    contiguous_gradients: bool = True
    overlap_comm: bool = True  # overlap the gradient reduction with the backward computation
    # stages 1-2: elements all-gathered at a time (bounds the memory of the all-gather)
    allgather_bucket_size: int = 200_000_000
    reduce_bucket_size: int = 200_000_000  # elements reduced at a time (bounds the reduction's memory)
    # stage 3: parameter elements per sub-group, the unit the optimizer steps (and offloads) at a time
    sub_group_size: int = 1_000_000_000
    stage3_prefetch_bucket_size: int = 50_000_000  # stage 3: most parameter elements fetched ahead of use
    # stage 3: parameters with fewer elements are not partitioned (lower: less memory, more communication)
    stage3_param_persistence_threshold: int = 100_000
    # stage 3: most parameters resident per GPU before they are released (lower: less memory, more traffic)
    stage3_max_live_parameters: int = 1_000_000_000
    # stage 3: gather the shards into one 16-bit copy in DeepSpeed's save_16bit_model(), which neither
    # exp3rt nor Lightning calls
    stage3_gather_16bit_weights_on_model_save: bool = False
    # ZeRO-3 shards every weight across ranks, so in-training generation (train.val_generate) must
    # gather the full weights on each rank first (deepspeed.zero.GatheredParameters); true declares
    # that the model fits on one device for that.
    gather_for_generation: bool = False
    # raw DeepSpeed keys merged last into the dict (e.g. {"wall_clock_breakdown": true}); never
    # gradient_accumulation_steps, batch sizes or "auto"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainLoopConf:
    """The student's optimisation loop.

    Batch sizes: ``batch_size`` is global (examples per optimizer step) and ``micro_batch_size`` is per
    device per forward. :func:`validate` derives ``trainer.accumulate_grad_batches`` when it is null,
    ``batch_size / (micro_batch_size × trainer.devices × trainer.num_nodes)`` (it must divide
    evenly); when it is set, ``batch_size == micro_batch_size × devices × num_nodes ×
    accumulate_grad_batches`` must hold. A null ``batch_size`` is derived from the other four (with
    ``accumulate_grad_batches`` null taken as 1).
    """

    seed: int = 42  # the training seed (the split seed lives in `split.seed`)
    lr: float = 2e-4  # peak learning rate (AdamW; float32 master weights for 16-bit weights)
    warmup_steps: int = 0  # linear warm-up from 0 over this many optimizer steps
    scheduler: SchedulerName = SchedulerName.cosine  # after warm-up: cosine decay to 0 or constant
    micro_batch_size: int = 1  # examples per forward on one device
    batch_size: int | None = None  # examples per optimizer step over all devices (see the class docstring)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    val_generate: bool = True  # generate rationales on validation samples during training
    val_generate_samples: int = 16  # validation pairs decoded for the in-training generation metrics
    # weight of the rating's own tokens (after "Predicted User Rating:") in the training loss, relative to
    # every other answer token (1.0: the plain answer-only loss, the paper's). >1 makes a weak student
    # attend to the number it is judged on instead of spending its capacity on the reasoning's wording.
    rating_loss_weight: float = 1.0
    # weight of the squared error of the expected rating (the student_expected readout: the softmax over
    # the ratings' tokens after "Predicted User Rating:", the scale mapped onto 0-1), added to the loss.
    # 0: cross-entropy alone (the paper's). >0 trains the readout evaluation reports as a regression, so
    # an answer one step off costs less than four off; needs one token per rating (1-5 on any tokenizer).
    rating_mse_weight: float = 0.0


# rating_direct: the rating task's rating-only form (the rating right after the prompt, no reasoning)
# beside a reasoning student's rating task, so one student both explains and reads out fast
DEFAULT_STUDENT_TASKS = ("extract", "user_profile", "item_profile", "rating")  # the paper's four
RATING_TASKS = ("rating", "rating_direct")
STUDENT_TASKS = (*DEFAULT_STUDENT_TASKS, "rating_direct")


@dataclass
class StudentDataConf:
    """How the student's SFT examples are built from an annotation directory (``exp3rt.student``)."""

    # the SFT tasks: extract | user_profile | item_profile (training only) | rating (reasoning, then the
    # rating) | rating_direct (the rating alone); see exp3rt/student/examples.py
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_STUDENT_TASKS))
    # train examples of a task are repeated / subsampled to round(weight * count); a missing task weighs 1
    task_weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0  # the sampling seed for task weights (the split seed lives in `split.seed`)
    max_length: int = 2048  # tokens per example; longer prompts lose the middle of their profiles/reviews
    # the student writes rating + offset (the paper wrote IMDB 1-10 as 0-9 so every rating is one token:
    # offset -1); readout subtracts it again before any metric
    rating_offset: float = 0.0
    raw_reviews_max: int = 5  # ablation raw_reviews: at most this many reviews per user / item
    cache_dir: str | None = None  # tokenised datasets; null = <annotation dir>/sft_cache
    val_fraction: float = 0.05  # training examples held out (seeded) for the validation loss


@dataclass
class AblationConf:
    """Which inputs the rating task shows and whether the student reasons first. Every ablation config
    flips only the switches it is named after; ``full`` is the paper's model."""

    # a label: in the training run's name and W&B tag (unless the root key ablation_name is set) and in
    # each example's metadata
    name: str = "full"
    reasoning: bool = True  # answer "Reasoning: ...\nPredicted User Rating: r" (false: the rating alone)
    user_profile: bool = True  # show the user profile (raw_reviews: the user's other training reviews)
    # show the item profile (raw_reviews: other users' training reviews of the item)
    item_profile: bool = True
    item_description: bool = True  # show the item's title, categories and description
    avg_rating: bool = True  # keep the [Average Rating] sections of profiles (and raw-review blocks)
    raw_reviews: bool = False  # show raw training reviews of the user / item instead of the profiles


@dataclass
class RatingPromptConf:
    # the system message: a template filled from {domain}, {domain_title}, {scale_min}, {scale_max}
    system: str = MISSING
    user: str = MISSING  # {context} (the sections below, joined) and {instruction}
    instruction: str = MISSING  # reason first, then the rating
    instruction_rating_only: str = MISSING  # ablation no_reasoning
    section_separator: str = "\n\n"  # the text between two sections in {context}
    sections: dict[str, str] = field(
        default_factory=dict
    )  # user_profile, item_description, item_profile, user_reviews, item_reviews
    # the order the sections are shown in, each named once; empty: the order of `sections` above
    section_order: list[str] = field(default_factory=list)
    raw_review: str = MISSING  # one raw review in the raw_reviews ablation
    no_reviews: str = "None."  # raw_reviews ablation: a user / item without other training reviews
    answer: str = MISSING  # {rationale} then the rating-only answer
    answer_rating_only: str = MISSING  # must end with {rating}: the text before it is the readout prefix


@dataclass
class StudentPromptConf:
    # a name for these templates; with a hash of all of them it is recorded as each SFT example's
    # prompt_version
    version: str = MISSING
    set_separator: str = "\n---\n"  # between preference sets / raw reviews
    extract: PromptTemplate = field(default_factory=PromptTemplate)
    user_profile: PromptTemplate = field(default_factory=PromptTemplate)
    item_profile: PromptTemplate = field(default_factory=PromptTemplate)
    rating: RatingPromptConf = field(default_factory=RatingPromptConf)


SCHEMAS: dict[str, type] = {
    "dataset": DatasetConf,
    "split": SplitConf,
    "baselines": BaselinesConf,
    "eval": EvalConf,
    "teacher": TeacherConf,
    "annotation": AnnotateConf,
    "prompt": PromptConf,
    "student": StudentConf,
    "peft": PeftConf,
    "logger": LoggerConf,
    "trainer": TrainerConf,
    "deepspeed": DeepSpeedConf,
    "train": TrainLoopConf,
    "sft": StudentDataConf,
    "ablation": AblationConf,
    "student_prompt": StudentPromptConf,
}


def _typed(group: str, node: Any, schema: type) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as e:  # rewrite into one sentence naming the full key
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"config key '{group}.{key}': {msg}") from None


def check_threads(value: Any) -> int | str:
    """The validated root key ``threads`` (:mod:`exp3rt.threads`): ``"auto"`` or an integer >= 1."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
        ok = not isinstance(value, bool) and float(value) == n
    except (TypeError, ValueError):
        ok = False
    if not ok or n < 1:
        raise ConfigError(f"config key 'threads' must be auto or an integer >= 1 (got {value!r})")
    return n


def check_teacher_mode(tc) -> None:
    """``teacher.mode=batch`` needs the openai backend; sane ``teacher.batch.*`` keys (the schema allows
    only sync and batch)."""
    if tc.mode == TeacherMode.batch and tc.backend != TeacherBackendName.openai:
        raise ConfigError(
            f"teacher.mode=batch uses the OpenAI Batch API, so it needs teacher.backend=openai (got "
            f"teacher.backend={tc.backend.value}); use teacher.mode=sync with this backend"
        )
    b = tc.batch
    if not 1 <= b.max_requests <= 50000:
        raise ConfigError(
            f"config key 'teacher.batch.max_requests' must be in [1, 50000] (got {b.max_requests})"
        )
    if not 1 <= b.max_bytes <= 200_000_000:
        raise ConfigError(
            f"config key 'teacher.batch.max_bytes' must be in [1, 200000000] (got {b.max_bytes})"
        )
    if not 0 < b.poll_initial_s <= b.poll_max_s:
        raise ConfigError(
            "config keys 'teacher.batch.poll_initial_s' / 'poll_max_s' need 0 < poll_initial_s <= "
            f"poll_max_s (got {b.poll_initial_s:g} and {b.poll_max_s:g})"
        )
    if b.max_failed_rounds < 0:
        raise ConfigError(
            f"config key 'teacher.batch.max_failed_rounds' must be >= 0 (got {b.max_failed_rounds})"
        )
    if not 0 < b.price_factor <= 1:
        raise ConfigError(
            f"config key 'teacher.batch.price_factor' must be in (0, 1] (got {b.price_factor:g})"
        )


def validate(cfg: DictConfig) -> DictConfig:
    """Type-check every known group and apply cross-field rules; return the typed config.

    Raises :class:`ConfigError` with a sentence naming the key and the allowed values.
    """
    typed = cfg.copy()
    for group, schema in SCHEMAS.items():
        if group in cfg and cfg[group] is not None:
            OmegaConf.set_struct(typed, False)
            typed[group] = _typed(group, cfg[group], schema)
    ds = typed.get("dataset")
    if ds is not None:
        if not ds.scale.min < ds.scale.max:
            raise ConfigError(
                f"config key 'dataset.scale': min must be below max (got min={ds.scale.min}, "
                f"max={ds.scale.max})"
            )
        if ds.scale.step <= 0:
            raise ConfigError(f"config key 'dataset.scale.step' must be positive (got {ds.scale.step})")
        if ds.loader != Loader.synthetic and not ds.path:
            raise ConfigError(
                f"config key 'dataset.path' is required for loader '{ds.loader.value}': "
                f"pass dataset.path=/path/to/file"
            )
        if ds.kcore.user < 0 or ds.kcore.item < 0:
            raise ConfigError("config keys 'dataset.kcore.user/item' must be >= 0")
    tc = typed.get("teacher")
    if tc is not None:
        check_device(tc.device, "teacher.device")
        check_teacher_mode(tc)
    sp = typed.get("split")
    if sp is not None:
        for key in ("test_ratio", "valid_ratio"):
            if not 0.0 <= sp[key] < 1.0:
                raise ConfigError(f"config key 'split.{key}' must be in [0, 1) (got {sp[key]})")
        if sp.test_ratio + sp.valid_ratio >= 1.0:
            raise ConfigError(
                f"config keys 'split.test_ratio' + 'split.valid_ratio' must be below 1 "
                f"(got {sp.test_ratio} + {sp.valid_ratio})"
            )
        if sp.leave_n_out is not None and sp.strategy != SplitStrategy.per_user:
            raise ConfigError("config key 'split.leave_n_out' applies only to split.strategy=per_user")
        if sp.leave_n_out is not None and sp.leave_n_out < 1:
            raise ConfigError(f"config key 'split.leave_n_out' must be >= 1 (got {sp.leave_n_out})")
    bl = typed.get("baselines")
    if bl is not None:
        known_rating = {"global_mean", "user_mean", "item_mean", "bias", "biased_mf"}
        known_retr = {"popularity", "bpr_mf", "lightgcn"}
        for name in bl.rating.models:
            if name not in known_rating:
                raise ConfigError(
                    f"config key 'baselines.rating.models': unknown model '{name}'; allowed: "
                    f"{sorted(known_rating)}"
                )
        for name in bl.retrieval.models:
            if name not in known_retr:
                raise ConfigError(
                    f"config key 'baselines.retrieval.models': unknown retriever '{name}'; allowed: "
                    f"{sorted(known_retr)}"
                )
    ev = typed.get("eval")
    if ev is not None:
        if any(k < 1 for k in ev.ks):
            raise ConfigError(f"config key 'eval.ks' must hold positive cut-offs (got {list(ev.ks)})")
        if ev.rerank_rating_weight is not None and not ev.rerank_rating_weight >= 0:
            raise ConfigError(
                f"config key 'eval.rerank_rating_weight' must be >= 0 or null (got {ev.rerank_rating_weight})"
            )
        bad = [w for w in ev.rerank_tune_weights if not w >= 0]
        if bad:
            raise ConfigError(f"config key 'eval.rerank_tune_weights' must hold weights >= 0 (got {bad})")
        if ev.rerank_tune_k < 1:
            raise ConfigError(f"config key 'eval.rerank_tune_k' must be >= 1 (got {ev.rerank_tune_k})")
        check_eval_backend(ev)
    if typed.get("threads") is not None:
        check_threads(typed.threads)
    st = typed.get("student")
    if st is not None and st.quantization not in QUANTIZATIONS:
        raise ConfigError(f"config key 'student.quantization' must be null or 4bit (got {st.quantization!r})")
    _validate_training(typed)
    sft = typed.get("sft")
    if sft is not None:
        check_student_data(sft)
    ab = typed.get("ablation")
    if ab is not None:
        check_ablation(ab)
    student_prompt = typed.get("student_prompt")
    if student_prompt is not None:
        section_order(student_prompt.rating)
    return typed


#: the rating prompt's sections (conf/student_prompt/): one template each under student_prompt.rating.sections
RATING_SECTIONS = ("user_profile", "item_description", "item_profile", "user_reviews", "item_reviews")


def section_order(rating) -> list[str]:
    """The order of the rating prompt's sections: ``rating.section_order`` (every section named exactly
    once), or the order they are written in under ``rating.sections``."""
    order = [str(x) for x in (rating.get("section_order") or [])]
    if not order:
        return [str(name) for name in rating.sections]
    unknown = [x for x in order if x not in RATING_SECTIONS]
    twice = sorted({x for x in order if order.count(x) > 1})
    missing = [x for x in RATING_SECTIONS if x not in order]
    if unknown or twice or missing:
        what = "; ".join(
            f"{label} {names}"
            for label, names in (("unknown", unknown), ("named twice", twice), ("missing", missing))
            if names
        )
        raise ConfigError(
            f"student_prompt.rating.section_order must name each of {list(RATING_SECTIONS)} once: {what}"
        )
    return order


def find_auto(node: Any, path: str) -> str | None:
    """The key path of the first HF-style ``"auto"`` value inside ``node``, or None."""
    if isinstance(node, str):
        return path if node.strip().lower() == "auto" else None
    if isinstance(node, dict):
        for k, v in node.items():
            hit = find_auto(v, f"{path}.{k}")
            if hit:
                return hit
    if isinstance(node, list | tuple):
        for i, v in enumerate(node):
            hit = find_auto(v, f"{path}[{i}]")
            if hit:
                return hit
    return None


def _validate_training(typed: DictConfig) -> None:
    """Cross-field rules of the ``trainer``, ``deepspeed`` and ``train`` groups; fills
    ``trainer.accumulate_grad_batches`` and ``train.batch_size`` (see :class:`TrainLoopConf`)."""
    tr = typed.get("trainer")
    ds = typed.get("deepspeed")
    loop = typed.get("train")
    if tr is not None:
        if tr.precision not in PRECISIONS:
            raise ConfigError(
                f"config key 'trainer.precision': unknown precision '{tr.precision}'; allowed: "
                f"{list(PRECISIONS)}"
            )
        if tr.precision.startswith("16-") and tr.accelerator == Accelerator.cpu:
            raise ConfigError(
                f"config key 'trainer.precision': trainer.precision={tr.precision} needs a GPU; "
                f"use bf16-mixed or 32-true on CPU"
            )
        for key in ("devices", "num_nodes"):
            if tr[key] < 1:
                raise ConfigError(f"config key 'trainer.{key}' must be >= 1 (got {tr[key]})")
        if tr.accumulate_grad_batches is not None and tr.accumulate_grad_batches < 1:
            raise ConfigError(
                "config key 'trainer.accumulate_grad_batches' must be >= 1 (got "
                f"{tr.accumulate_grad_batches})"
            )
        if tr.slurm_tasks_per_node is not None and tr.slurm_tasks_per_node != tr.devices:
            raise ConfigError(
                f"config key 'trainer.slurm_tasks_per_node': SLURM tasks_per_node must equal trainer.devices "
                f"(one task per device; got tasks_per_node={tr.slurm_tasks_per_node}, devices={tr.devices})"
            )
        for key, int_min in (("val_check_interval", 1), ("limit_val_batches", 0)):
            v = tr[key]
            ok = (
                v is None
                or (isinstance(v, int) and not isinstance(v, bool) and v >= int_min)
                or (isinstance(v, float) and 0.0 <= v <= 1.0 and (v > 0 or int_min == 0))
            )
            if not ok:
                raise ConfigError(
                    f"config key 'trainer.{key}' must be an int (batches) or a float in "
                    f"{'(0, 1]' if int_min else '[0, 1]'} (fraction of an epoch); got {v!r}"
                )
    deepspeed_on = ds is not None and ds.stage is not None
    if tr is not None and tr.strategy == StrategyName.deepspeed and not deepspeed_on:
        raise ConfigError(
            "config key 'deepspeed': trainer.strategy=deepspeed needs a DeepSpeed config; "
            "pick deepspeed=zero2, zero2_offload or zero3"
        )
    if tr is not None and deepspeed_on and tr.strategy != StrategyName.deepspeed:
        raise ConfigError(
            f"config key 'trainer.strategy': deepspeed.stage={ds.stage} is set but "
            f"trainer.strategy={tr.strategy.value}; use a trainer=deepspeed_* preset or deepspeed=none"
        )
    if deepspeed_on:
        if ds.stage not in (1, 2, 3):
            raise ConfigError(f"config key 'deepspeed.stage' must be 1, 2 or 3 (got {ds.stage})")
        for key in ("offload_optimizer", "offload_param"):
            if ds[key] is not None and tr is not None and tr.accelerator == Accelerator.cpu:
                raise ConfigError(
                    f"config key 'deepspeed.{key}': offloading does nothing on trainer.accelerator=cpu "
                    f"(everything already lives in CPU memory); use deepspeed=zero2 or zero3"
                )
        if ds.offload_param is not None and ds.stage != 3:
            raise ConfigError(
                f"config key 'deepspeed.offload_param' needs deepspeed.stage=3 (got stage {ds.stage}); "
                f"stages 1-2 keep full parameters on every device"
            )
        extra = OmegaConf.to_container(ds.extra, resolve=True)
        for key, why in (
            (
                "gradient_accumulation_steps",
                "Lightning sets it from trainer.accumulate_grad_batches and raises if the dict has it",
            ),
            ("train_micro_batch_size_per_gpu", "it is train.micro_batch_size"),
            ("train_batch_size", "it is train.batch_size"),
            ("zero_optimization", "set its fields in the deepspeed group instead"),
        ):
            if key in extra:
                raise ConfigError(f"config key 'deepspeed.extra.{key}' must not be set: {why}")
        auto = find_auto(extra, "deepspeed.extra")
        if auto:
            raise ConfigError(
                f"config key '{auto}' is \"auto\": Lightning hands the dict to DeepSpeed unresolved "
                f'("auto" is a Hugging Face Trainer convention); give a number'
            )
        if ds.stage == 3 and loop is not None and loop.val_generate and not ds.gather_for_generation:
            raise ConfigError(
                "config key 'train.val_generate': in-training generation is incompatible with DeepSpeed "
                "ZeRO-3 (each rank holds a shard of every weight); set train.val_generate=false, or "
                "deepspeed.gather_for_generation=true to gather the full weights on each rank while "
                "generating"
            )
    if loop is not None:
        if loop.micro_batch_size < 1:
            raise ConfigError(
                f"config key 'train.micro_batch_size' must be >= 1 (got {loop.micro_batch_size})"
            )
        if not loop.lr > 0:
            raise ConfigError(f"config key 'train.lr' must be positive (got {loop.lr})")
        if loop.warmup_steps < 0 or loop.val_generate_samples < 0:
            raise ConfigError("config keys 'train.warmup_steps/val_generate_samples' must be >= 0")
    if loop is not None and tr is not None:
        per_step = loop.micro_batch_size * tr.devices * tr.num_nodes  # examples per forward, all ranks
        accum = tr.accumulate_grad_batches
        if loop.batch_size is None:
            tr.accumulate_grad_batches = accum = accum or 1
            loop.batch_size = per_step * accum
        elif accum is None:
            if loop.batch_size % per_step or loop.batch_size < per_step:
                raise ConfigError(
                    f"config key 'train.batch_size': {loop.batch_size} is not a multiple of "
                    "train.micro_batch_size × trainer.devices × trainer.num_nodes = "
                    f"{loop.micro_batch_size} × "
                    f"{tr.devices} × {tr.num_nodes} = {per_step}"
                )
            tr.accumulate_grad_batches = loop.batch_size // per_step
        elif loop.batch_size != per_step * accum:
            raise ConfigError(
                f"config key 'train.batch_size': {loop.batch_size} != train.micro_batch_size × "
                "trainer.devices × "
                f"trainer.num_nodes × trainer.accumulate_grad_batches = {loop.micro_batch_size} × "
                f"{tr.devices} × "
                f"{tr.num_nodes} × {accum} = {per_step * accum}; set "
                "trainer.accumulate_grad_batches=null to derive it"
            )


def vllm_installed() -> bool:
    """Whether ``import vllm`` would find a package, without importing it (that takes seconds)."""
    import importlib.util
    import sys

    if "vllm" in sys.modules:
        return sys.modules["vllm"] is not None
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def check_eval_backend(ev) -> None:
    """``eval.backend`` and the vLLM knobs, before any model loads."""
    check_device(getattr(ev, "device", "auto"), "eval.device")
    if ev.backend != "vllm":
        return
    if getattr(ev, "compute_estimate", False):
        raise ConfigError(
            "config key 'eval.compute_estimate' is true but the vLLM backend cannot rewrite a reasoning "
            "before its readout: use eval.backend=hf, or eval.compute_estimate=false"
        )
    if not vllm_installed():
        raise ConfigError(
            "config key 'eval.backend' is 'vllm' but the vllm package is not installed: "
            'pip install -e ".[vllm]" on a machine with a CUDA GPU (vLLM needs one), or use eval.backend=hf'
        )
    if not 0.0 < ev.vllm_gpu_memory_utilization <= 1.0:
        raise ConfigError(
            "config key 'eval.vllm_gpu_memory_utilization' must be in (0, 1] (got "
            f"{ev.vllm_gpu_memory_utilization})"
        )
    if ev.vllm_tensor_parallel_size < 1:
        raise ConfigError(
            f"config key 'eval.vllm_tensor_parallel_size' must be >= 1 (got {ev.vllm_tensor_parallel_size})"
        )
    if ev.vllm_max_model_len is not None and ev.vllm_max_model_len < 1:
        raise ConfigError(
            f"config key 'eval.vllm_max_model_len' must be >= 1 or null (got {ev.vllm_max_model_len})"
        )
    if ev.vllm_max_lora_rank is not None and ev.vllm_max_lora_rank < 1:
        raise ConfigError(
            f"config key 'eval.vllm_max_lora_rank' must be >= 1 or null (got {ev.vllm_max_lora_rank})"
        )


def check_student_data(sft) -> None:
    unknown = [t for t in sft.tasks if t not in STUDENT_TASKS]
    if unknown or not len(sft.tasks):
        raise ConfigError(
            f"config key 'sft.tasks': unknown or no tasks {unknown}; allowed: {list(STUDENT_TASKS)}"
        )
    for task, weight in sft.task_weights.items():
        if task not in sft.tasks:
            raise ConfigError(
                f"config key 'sft.task_weights.{task}': '{task}' is not in sft.tasks {list(sft.tasks)}"
            )
        if not weight >= 0:
            raise ConfigError(f"config key 'sft.task_weights.{task}' must be >= 0 (got {weight})")
    if sft.max_length < 8:
        raise ConfigError(f"config key 'sft.max_length' must be at least 8 tokens (got {sft.max_length})")
    if sft.raw_reviews_max < 1:
        raise ConfigError(f"config key 'sft.raw_reviews_max' must be >= 1 (got {sft.raw_reviews_max})")


def check_ablation(ab) -> None:
    if not (ab.user_profile or ab.item_profile or ab.item_description):
        raise ConfigError(
            f"ablation '{ab.name}' turns off the user profile, the item profile and the item description: "
            "the rating prompt would show nothing about the pair; keep at least one"
        )


def register_schemas() -> None:
    """Register each group's schema in Hydra's ConfigStore as ``<group>/schema``.

    Every YAML in ``conf/<group>/`` starts with ``defaults: [schema, _self_]``, so the composed config
    carries every key with its default (an override never needs ``+``) and a wrong type or enum value on
    the command line is rejected while composing, naming the key and the allowed values.
    """
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        cs.store(group=group, name="schema", node=schema)
