"""``exp3rt-merge ADAPTER_DIR OUT_DIR``: fold a trained LoRA adapter into its base model and write a
plain HF folder (weights + tokenizer) that transformers and vLLM load without peft.

The base model is the one the adapter records (``adapter_config.json: base_model_name_or_path``) unless
``--base`` names another folder or hub id.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def merge_adapter(
    adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, dtype: str = "float32"
) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a peft adapter folder (no adapter_config.json)")
    base = base or json.loads(cfg_file.read_text())["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else Path(base)
    AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(str(out_dir))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="exp3rt-merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("adapter_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--base", default=None, help="base model folder or hub id (default: the adapter's own)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args(argv)
    print(merge_adapter(args.adapter_dir, args.out_dir, args.base, args.dtype))


if __name__ == "__main__":
    main()
