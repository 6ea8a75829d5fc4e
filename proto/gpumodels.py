"""GPU model names as users write them, matched against the names GPUs report.

NVML reports long product names (`NVIDIA H100 80GB HBM3`, `NVIDIA A100-SXM4-80GB`, `Tesla T4`); the
simulated backend reports short ones (`H100`); users write what they know (`H100`, `A100-80GB`). One
rule, used by the pod's `tensor.ai/gpu-model` / `gpu-model-exclude` lists (core/fit.py), the
GPUQuota's per-model limits (core/quota.py) and the device plugin's node labels, so the three can
never disagree (docs/scheduling.md, "GPU model names"):

- A name is split into **words** at every character that is not an ASCII letter or digit (space, `-`,
  `_`, `.`, `/` ...); words compare case-insensitively and in any order.
- The brand words `NVIDIA`, `Tesla`, `GeForce` and `Quadro` are dropped: `Tesla T4` is `T4`.
- A memory size is one word, with or without the unit's `B`: `80GB`, `80G`, `80Gi` and `80GiB` are the
  same word. (`80 GB`, two words, is not a memory size; write `80GB`.)
- A user's name **matches** a GPU when every one of its words is a word of the GPU's name. So a
  family (`H100`) matches every variant of it (`NVIDIA H100 80GB HBM3`, `NVIDIA H100 PCIe`,
  `NVIDIA H100 NVL`, the simulator's `H100`), and each word added narrows: `A100-80GB` matches only
  the 80 GB A100s, `A100-SXM4-40GB` only that one. Words are never matched by prefix: `L4` is not
  `L40S`, `A10` is neither `A100` nor `A10G`, `H200` is not `GH200`, `V100` is not `V100S`.
- A qualifier must be written as the GPU reports it: the SXM H100 reports `NVIDIA H100 80GB HBM3`,
  without `SXM`, so `H100-SXM5` matches nothing; `H100-HBM3` is the SXM one. A node's label
  `tensor.ai/gpu.product` shows the name its GPUs report.
- A name with no word left (`NVIDIA`, `-`) names no model and is refused where it is read.

Pure and cached: the names in a cluster are few and pods repeat the same annotation text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

BRAND_WORDS = frozenset({"nvidia", "tesla", "geforce", "quadro"})
# Words that say which variant of a model a GPU is, not which model: dropped from the short model name
# (the `tensor.ai/gpu.model` label). Matching treats them like any other word.
_QUALIFIER = re.compile(r"\d+gb|sxm\d*|pcie|pci|nvl|hbm\d*e?|server|workstation|edition|generation")
_WORD = re.compile(r"[0-9A-Za-z]+")  # ASCII only: a non-ASCII character separates words like a space
_MEMORY = re.compile(r"(\d+)(?:g|gb|gi|gib)")
_LABEL_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
LABEL_VALUE_MAX = 63  # Kubernetes label values: at most 63 characters


class ModelNameError(ValueError):
    """A GPU model name with no word to match (only brand words or punctuation)."""


@lru_cache(maxsize=512)  # bounded: pod annotations are user text (entries up to 128 characters)
def _ordered_words(name: str) -> tuple[str, ...]:
    words: list[str] = []
    for word in _WORD.findall(name):
        word = word.lower()
        if word in BRAND_WORDS:
            continue
        memory = _MEMORY.fullmatch(word)
        words.append(f"{memory.group(1)}gb" if memory else word)
    return tuple(words)


def model_words(name: str) -> frozenset[str]:
    """The words of a GPU model name (lower case, brand words dropped, memory sizes as `NNgb`)."""
    return frozenset(_ordered_words(name))


def check_model_name(name: str) -> None:
    """Raise ModelNameError unless `name` has a word to match; the message says what would be right."""
    if not _ordered_words(name):
        raise ModelNameError(
            f"{name!r} names no GPU model: write a model such as H100, A100-80GB or L40S (brand words "
            f"{', '.join(sorted(BRAND_WORDS))} and punctuation alone match nothing)"
        )


def model_matches(wanted: str, reported: str) -> bool:
    """True when the user's name `wanted` matches a GPU that reports `reported` (every word present)."""
    words = model_words(wanted)
    return bool(words) and words <= model_words(reported)


@lru_cache(maxsize=256)  # keys are a pod's whole list (<= 64 names): kept small so hostile lists stay cheap
def _matches_any(wanted: frozenset[str], reported: str) -> bool:
    return any(model_matches(name, reported) for name in wanted)


def matches_any(wanted: Iterable[str], reported: str) -> bool:
    """True when any of the user's names matches the GPU; cached for frozensets (PodDemand's lists)."""
    return _matches_any(wanted if isinstance(wanted, frozenset) else frozenset(wanted), reported)


def short_model(reported: str) -> str | None:
    """The model without its variant words, upper case: `NVIDIA H100 80GB HBM3` -> `H100`.

    `NVIDIA RTX A6000` -> `RTX-A6000`, `Tesla V100S-PCIE-32GB` -> `V100S`. It matches `reported`
    (its words are a subset), so it is a name a user can copy into `tensor.ai/gpu-model`. None when
    every word is a variant word (or there is none).
    """
    words = [word for word in _ordered_words(reported) if not _QUALIFIER.fullmatch(word)]
    return label_value("-".join(words).upper()) if words else None


def label_value(text: str) -> str | None:
    """`text` as a valid Kubernetes label value, or None when nothing valid is left.

    Runs of characters outside `[A-Za-z0-9_.-]` become one `-` (GPU feature discovery writes
    `NVIDIA-H100-80GB-HBM3` the same way), the value begins and ends with a letter or digit, and a
    longer one is cut to 63 characters at the last word boundary (inside a word only when its first
    word alone is longer). Separators stay separators, so the value still matches the GPU it was
    made from unless that one word had to be cut.
    """
    value = _LABEL_INVALID.sub("-", text).strip("-_.")
    if len(value) > LABEL_VALUE_MAX:  # cut at a word boundary, so no cut word is left to match nothing
        boundary = max(value.rfind(separator, 0, LABEL_VALUE_MAX + 1) for separator in "-_.")
        value = value[:boundary if boundary > 0 else LABEL_VALUE_MAX].strip("-_.")
    return value or None
