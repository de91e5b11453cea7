"""Chat rendering, answer-only loss masks, truncation and the cached tokenised dataset.

* :func:`render` formats an example through the tokenizer's own chat template
  (``apply_chat_template(..., add_generation_prompt=True)``); a tokenizer without one gets the plain
  ``System: …\\nUser: …\\nAssistant: `` form.
* :func:`encode` labels only the answer and the EOS after it (every prompt token is -100). When an
  example is longer than ``max_length`` the *input* is shortened: the longest inputs of the user message
  (reviews, preference sets, profiles — ``meta["cut_spans"]``) lose their middle until it fits, and the
  chat template is applied again, so the prompt still ends with the generation prompt. The answer is
  never cut: an answer that cannot fit is :class:`ExampleTooLong` (``build_dataset`` skips and counts it).
* :func:`build_dataset` caches the encoded examples on disk under a content hash of the examples, the
  tokenizer's files, ``max_length`` and :data:`TEMPLATE_VERSION`, so a rerun reloads.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from exp3rt.artifacts import StagingDir, discard, folder_intact, record_folder, write_json_atomic
from exp3rt.config import RATING_TASKS
from exp3rt.student.examples import SFTExample

log = logging.getLogger(__name__)

#: bump when render/encode change what they produce (part of the dataset cache key)
TEMPLATE_VERSION = "sft-encode-v2"  # v2: rating_mask
IGNORE_INDEX = -100
ELLIPSIS = " [...] "
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


class ExampleTooLong(ValueError):
    """An example that cannot fit ``max_length`` without cutting its answer; ``reason`` is a short key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _messages(example: SFTExample, user: str | None = None) -> list[dict]:
    msgs = []
    if example.system:
        msgs.append({"role": "system", "content": example.system})
    msgs.append({"role": "user", "content": example.user if user is None else user})
    return msgs


def render_prompt(tokenizer, system: str, user: str) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    bos = tokenizer.bos_token or ""
    head = f"System: {system}\n" if system else ""
    return f"{bos}{head}User: {user}\nAssistant: "


def render(
    tokenizer, example: SFTExample, add_answer: bool = True, user: str | None = None
) -> tuple[str, str]:
    """``(prompt_text, answer_text)``: the chat-formatted prompt ending with the generation prompt, and
    the answer followed by the EOS token (``""`` with ``add_answer=False``, e.g. for generation)."""
    prompt = render_prompt(tokenizer, example.system, example.user if user is None else user)
    answer = example.answer + (tokenizer.eos_token or "") if add_answer else ""
    return prompt, answer


def cut_spans(text: str, spans, cap: int) -> str:
    """``text`` with every span longer than ``cap`` characters reduced to its first and last ``cap/2``
    characters around :data:`ELLIPSIS` (the longest inputs are cut first, short ones stay whole)."""
    out, pos = [], 0
    for a, b in sorted((int(a), int(b)) for a, b in spans):
        out.append(text[pos:a])
        if b - a > cap:
            head = cap // 2
            tail = cap - head
            out.append(text[a : a + head] + ELLIPSIS + (text[b - tail : b] if tail else ""))
        else:
            out.append(text[a:b])
        pos = b
    out.append(text[pos:])
    return "".join(out)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode(tokenizer, example: SFTExample, max_length: int, info: dict | None = None) -> dict[str, list[int]]:
    """``input_ids`` / ``attention_mask`` / ``labels`` (-100 on the prompt; the answer's ids then EOS).

    Raises :class:`ExampleTooLong` when the answer alone, or the prompt with all its shortenable inputs
    cut, cannot fit. ``info`` (optional) receives ``truncated`` and ``prompt_tokens``.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: the student could not learn where an answer ends")
    answer_ids = _ids(tokenizer, example.answer) + [tokenizer.eos_token_id]
    budget = int(max_length) - len(answer_ids)
    if budget < 1:
        raise ExampleTooLong(
            "answer_too_long",
            f"{example.task} answer needs {len(answer_ids)} tokens with its EOS, "
            f"max_length is {max_length}: raise sft.max_length (answers are never cut)",
        )
    prompt_ids = _ids(tokenizer, render(tokenizer, example, add_answer=False)[0])
    truncated = False
    if len(prompt_ids) > budget:
        spans = example.meta.get("cut_spans") or []
        longest = max((b - a for a, b in spans), default=0)

        def attempt(cap: int) -> list[int]:
            return _ids(
                tokenizer, render(tokenizer, example, False, user=cut_spans(example.user, spans, cap))[0]
            )

        smallest = attempt(0)
        if len(smallest) > budget:
            raise ExampleTooLong(
                "prompt_too_long",
                f"{example.task} prompt needs {len(smallest)} tokens even with its "
                f"reviews/profiles cut out; with a {len(answer_ids)}-token answer that exceeds "
                f"max_length {max_length}",
            )
        lo, hi, best = 0, longest, smallest  # the largest cap (characters kept per input) that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            ids = attempt(mid)
            if len(ids) <= budget:
                lo, best = mid, ids
            else:
                hi = mid - 1
        prompt_ids, truncated = best, True
    if info is not None:
        info.update(truncated=truncated, prompt_tokens=len(prompt_ids))
    mask = rating_token_mask(tokenizer, example, len(answer_ids) - 1)
    return {
        "input_ids": prompt_ids + answer_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(answer_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        "rating_mask": [0] * len(prompt_ids) + mask + [0],
    }


def rating_token_mask(tokenizer, example: SFTExample, n_answer: int) -> list[int]:
    """1 on the answer tokens that spell the rating at its end (a rating example's answer ends with
    ``meta["rating_text"]``), 0 elsewhere; all zeros for the other tasks. Character offsets decide, so a
    token that merges the space before the number counts as the rating's."""
    text = (example.meta or {}).get("rating_text")
    if example.task not in RATING_TASKS or not text or not example.answer.endswith(str(text)):
        return [0] * n_answer
    start = len(example.answer) - len(str(text))
    try:
        offsets = tokenizer(example.answer, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
    except (NotImplementedError, KeyError, ValueError):  # a slow tokenizer: the rating's own token count
        k = len(_ids(tokenizer, str(text)))
        return [0] * (n_answer - k) + [1] * k
    return [int(end > start) for _, end in offsets][:n_answer]


# ------------------------------------------------------------------------------- cached dataset


def tokenizer_digest(tokenizer) -> str:
    """The tokenizer's files when it was loaded from a folder (else its serialised vocabulary), plus the
    chat template and special tokens it uses now."""
    h = hashlib.blake2b(digest_size=16)
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    files = [folder / f for f in TOKENIZER_FILES if (folder / f).is_file()] if folder.is_dir() else []
    if files:
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    elif hasattr(tokenizer, "backend_tokenizer"):
        h.update(tokenizer.backend_tokenizer.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = [
        type(tokenizer).__name__,
        getattr(tokenizer, "chat_template", None),
        tokenizer.eos_token,
        tokenizer.bos_token,
    ]
    h.update(json.dumps(extra, default=str).encode())
    return h.hexdigest()


def dataset_key(examples: list[SFTExample], tokenizer, max_length: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([TEMPLATE_VERSION, int(max_length), tokenizer_digest(tokenizer)]).encode())
    for ex in examples:
        h.update(
            json.dumps(
                [ex.task, ex.system, ex.user, ex.answer, ex.meta], sort_keys=True, default=str
            ).encode()
        )
        h.update(b"\x00")
    return h.hexdigest()


def cache_dir_for(sft_cfg, annotation_dir) -> Path:
    """``sft.cache_dir``, or ``<annotation dir>/sft_cache`` when it is null."""
    return (
        Path(sft_cfg.cache_dir)
        if sft_cfg.get("cache_dir") is not None
        else Path(annotation_dir) / "sft_cache"
    )


def build_dataset(
    examples: list[SFTExample], tokenizer, max_length: int, cache_dir, report: dict | None = None
):
    """Encode ``examples`` into a ``datasets.Dataset`` (columns ``input_ids``, ``attention_mask``,
    ``labels``, ``task``, ``example_index``, ``truncated``), cached under ``cache_dir/sft-<hash>``.

    Examples that cannot fit are skipped and counted (``report["skipped"]`` by reason, also written to
    ``report.json`` next to the data); ``report["cache"]`` says whether the cache was reused.
    """
    from datasets import Dataset, load_from_disk

    key = dataset_key(examples, tokenizer, max_length)
    directory = Path(cache_dir) / f"sft-{key[:20]}"
    report = {} if report is None else report
    if (directory / "report.json").is_file():
        if folder_intact(directory, ["report.json"], f"the tokenised dataset {directory.name}"):
            report.update(json.loads((directory / "report.json").read_text()), cache="reused")
            return load_from_disk(str(directory))
        discard(directory)  # damaged (a warning named the file): encoded again below
    columns: dict[str, list] = {
        "input_ids": [],
        "attention_mask": [],
        "labels": [],
        "rating_mask": [],
        "task": [],
        "example_index": [],
        "truncated": [],
    }
    skipped: Counter = Counter()
    truncated = Counter()
    done: dict[int, tuple] = {}  # sft.task_weights repeats an example as the same object: encode it once
    for index, ex in enumerate(examples):
        if id(ex) not in done:
            info: dict = {}
            try:
                done[id(ex)] = (encode(tokenizer, ex, max_length, info), info, None)
            except ExampleTooLong as e:
                done[id(ex)] = (None, None, e)
        enc, info, error = done[id(ex)]
        if error is not None:
            skipped[f"{ex.task}:{error.reason}"] += 1
            continue
        for name in ("input_ids", "attention_mask", "labels", "rating_mask"):
            columns[name].append(enc[name])
        columns["task"].append(ex.task)
        columns["example_index"].append(index)
        columns["truncated"].append(bool(info["truncated"]))
        truncated[ex.task] += bool(info["truncated"])
    if skipped:
        log.warning(
            "SFT dataset: skipped examples that cannot fit max_length=%d: %s", max_length, dict(skipped)
        )
    summary = {
        "key": key,
        "examples": len(examples),
        "rows": len(columns["task"]),
        "max_length": int(max_length),
        "skipped": dict(skipped),
        "truncated": {k: v for k, v in truncated.items() if v},
    }
    data = Dataset.from_dict(columns)
    with StagingDir(directory) as tmp:
        data.save_to_disk(str(tmp))
        record_folder(tmp)
        write_json_atomic(tmp / "report.json", summary, default=None)
    report.update(summary, cache="built")
    return load_from_disk(str(directory))


def answer_token_stats(data, task: str = "rating") -> dict | None:
    """Length in tokens of the ``task`` answers (reasoning + rating line + EOS) the student trained on:
    the evaluation's reasoning budget (``eval.max_new_tokens``) must cover them, or every reasoning is
    cut before its conclusion and the readout follows an unfinished text."""
    lengths = [
        sum(1 for t in labels if t != IGNORE_INDEX)
        for labels, kind in zip(data["labels"], data["task"], strict=True)
        if kind == task
    ]
    if not lengths:
        return None
    ordered = sorted(lengths)
    return {
        "task": task,
        "n": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 1),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
    }


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-pad ``input_ids`` (``pad_id``), ``attention_mask`` (0), ``labels`` (-100) and ``rating_mask`` (0)
    to the longest row."""
    import torch

    width = max(len(row["input_ids"]) for row in batch)
    out = {}
    names = [("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)]
    if all("rating_mask" in row for row in batch):
        names.append(("rating_mask", 0))
    for name, fill in names:
        rows = [list(map(int, row[name])) for row in batch]
        out[name] = torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=torch.long)
    return out
