"""A tiny random-init Llama with an offline tokenizer: a real model folder for tests and the demo.

:func:`build_tiny_llama` writes what ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load with no network: ``config.json``, safetensors weights,
``generation_config.json`` and a fast tokenizer with a ChatML-style chat template. Its text is noise
(the weights are random) but every code path that a real checkpoint takes — chat formatting, left
padding, batched generation, rating-token readout, LoRA — runs on it in seconds.

Tokenizers (``vocab``):

* ``"byte"``: byte-level BPE with no merges — the 256 byte symbols plus the special tokens.
* ``"bpe"``: the same byte-level alphabet plus a few hundred merges learnt from a built-in corpus of
  review-like text (the synthetic world's phrasings), so prompts are about 3x shorter.
* ``"words"``: 3,000 merges on the same corpus plus the student's prompt wording, so most words of the
  synthetic world are one token (prompts about 2x shorter again): what the CPU demo's student uses,
  since a small network learns word-level signal much faster than spelling.

In both, every digit 0–9 is its own token and numbers are split digit by digit (``"10"`` is
``"1"``, ``"0"``), so rating tokens can be derived from the tokenizer as they are for a real model.
The same arguments give byte-identical folders.
"""

from __future__ import annotations

from pathlib import Path

from exp3rt import CONF_DIR
from exp3rt.artifacts import files_into
from exp3rt.data import world_vocab as W
from exp3rt.teacher.backends import extractive as X

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>")
PAD, BOS, IM_START, IM_END = SPECIAL_TOKENS
# ChatML, the format of SmolLM2/Qwen: <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BPE_MERGES = {"byte": 0, "bpe": 400, "words": 3000}


def _corpus(rich: bool = False) -> list[str]:
    """Review-like text for the BPE merges: the synthetic world's sentences plus prompt vocabulary."""
    lines = [
        "[Like] [Dislike] None. Reasoning: Predicted User Rating: Rating:",
        "You are given a review. List what the reviewer liked and disliked.",
        "User profile. Item profile. Item description. Average rating.",
        "The user likes the item because the reviews praise what they value.",
    ]
    if rich:  # the student's prompt and rationale wording, so they become whole-word tokens too
        for name in ("student_prompt/exp3rt_v1.yaml", "prompt/exp3rt_v1.yaml"):
            path = CONF_DIR / name
            if path.is_file():
                lines += [ln for ln in path.read_text().splitlines() if ln.strip()]
        lines += [
            f"{n} movie book product item reviewers user rating"
            for n in ("Title:", "Categories:", "Description:")
        ]

        for noun in ("movie", "book", "product"):
            lines += [lean.format(noun=noun) for lean in X.LEANS]
            lines += [X._pair_sentence("u", "i", tag, noun) for tag in ("match", "miss", "relief", "peeve")]
        lines += [
            "This user has enjoyed it when, and has been put off when. That said, Admittedly,",
            "Reviewers also praise that. Reviewers also point out that. The description presents it as "
            "follows:",
        ]
    for v in vars(W).values():
        if not isinstance(v, W.Vocab):
            continue
        for a in v.aspects:
            for noun, plural in a.nouns:
                be = v.tense[1] if plural else v.tense[0]
                for pred in a.pos + a.neg:
                    lines.append(f"{noun[0].upper()}{noun[1:]} {pred.format(be=be)}.")
            lines.append(a.feature)
        lines += list(v.fillers) + list(v.openers)
    for group in (W.VERDICTS, W.SUMMARIES):
        for band in group:
            lines += [s.format(noun="movie", verb="watched", waste="time") for s in band]
    return lines


def build_tokenizer(vocab: str = "byte"):
    """A fast tokenizer (transformers) over a byte-level BPE; see the module docstring."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab not in BPE_MERGES:
        raise ValueError(f"tiny llama: vocab must be one of {sorted(BPE_MERGES)} (got {vocab!r})")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    merges = BPE_MERGES[vocab]
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIAL_TOKENS) + len(alphabet) + merges,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(rich=vocab == "words") if merges else [""], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(
    out_dir: str | Path,
    vocab: str = "byte",
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    max_positions: int = 4096,
) -> Path:
    """Write a random-init ``LlamaForCausalLM`` and its tokenizer to ``out_dir``; return the path."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(vocab)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )

    with files_into(out) as tmp:  # config.json (what marks the folder as built) arrives last
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out
