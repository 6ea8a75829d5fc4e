"""GPU model names as users write them against the names NVML reports (proto/gpumodels.py).

The reported names are real `nvmlDeviceGetName` strings (as nvidia-smi, torch.cuda.get_device_name and
GPU feature discovery show them) plus the simulated backend's short names.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.proto.gpumodels import (
    LABEL_VALUE_MAX,
    ModelNameError,
    check_model_name,
    label_value,
    matches_any,
    model_matches,
    model_words,
    short_model,
)

A100_SXM4_80 = "NVIDIA A100-SXM4-80GB"
A100_SXM4_40 = "NVIDIA A100-SXM4-40GB"
A100_PCIE_40 = "NVIDIA A100-PCIE-40GB"
A100_PCIE_80 = "NVIDIA A100 80GB PCIe"
H100_SXM = "NVIDIA H100 80GB HBM3"
H100_PCIE = "NVIDIA H100 PCIe"
H100_NVL = "NVIDIA H100 NVL"
H200, H200_NVL, GH200 = "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA GH200 480GB"
L4, L40, L40S = "NVIDIA L4", "NVIDIA L40", "NVIDIA L40S"
A10, A10G, T4 = "NVIDIA A10", "NVIDIA A10G", "Tesla T4"
V100_SXM2_16, V100_SXM2_32 = "Tesla V100-SXM2-16GB", "Tesla V100-SXM2-32GB"
V100_PCIE_32, V100S = "Tesla V100-PCIE-32GB", "Tesla V100S-PCIE-32GB"
B200, GB200 = "NVIDIA B200", "NVIDIA GB200"
RTX_A6000, RTX_6000_ADA = "NVIDIA RTX A6000", "NVIDIA RTX 6000 Ada Generation"
SIMULATED = ("H100", "A100", "T4", "L4")  # --sim-gpus names

REPORTED = (A100_SXM4_80, A100_SXM4_40, A100_PCIE_40, A100_PCIE_80, H100_SXM, H100_PCIE, H100_NVL, H200,
            H200_NVL, GH200, L4, L40, L40S, A10, A10G, T4, V100_SXM2_16, V100_SXM2_32, V100_PCIE_32, V100S,
            B200, GB200, RTX_A6000, RTX_6000_ADA, *SIMULATED)


@pytest.mark.parametrize(("wanted", "matched"), [
    ("H100", {H100_SXM, H100_PCIE, H100_NVL, "H100"}),
    ("h100", {H100_SXM, H100_PCIE, H100_NVL, "H100"}),
    ("A100", {A100_SXM4_80, A100_SXM4_40, A100_PCIE_40, A100_PCIE_80, "A100"}),
    ("A100-80GB", {A100_SXM4_80, A100_PCIE_80}),
    ("a100 80g", {A100_SXM4_80, A100_PCIE_80}),
    ("A100_80GiB", {A100_SXM4_80, A100_PCIE_80}),
    ("A100-SXM4-40GB", {A100_SXM4_40}),
    ("A100-PCIe", {A100_PCIE_40, A100_PCIE_80}),
    ("H100-NVL", {H100_NVL}),
    ("H100-HBM3", {H100_SXM}),
    ("H100-SXM5", set()),  # the SXM H100 does not say SXM
    ("H200", {H200, H200_NVL}),
    ("GH200", {GH200}),
    ("L4", {L4, "L4"}),
    ("L40", {L40}),
    ("L40S", {L40S}),
    ("A10", {A10}),
    ("A10G", {A10G}),
    ("T4", {T4, "T4"}),
    ("Tesla T4", {T4, "T4"}),
    ("V100", {V100_SXM2_16, V100_SXM2_32, V100_PCIE_32}),
    ("V100-32GB", {V100_SXM2_32, V100_PCIE_32}),
    ("V100S", {V100S}),
    ("B200", {B200}),
    ("GB200", {GB200}),
    ("A6000", {RTX_A6000}),
    ("RTX-A6000", {RTX_A6000}),
    ("RTX", {RTX_A6000, RTX_6000_ADA}),
    ("80GB", {A100_SXM4_80, A100_PCIE_80, H100_SXM}),
    ("NVIDIA H100 80GB HBM3", {H100_SXM}),
    ("NVIDIA-H100-80GB-HBM3", {H100_SXM}),  # the tensor.ai/gpu.product label, copied
    ("HBM3 H100", {H100_SXM}),  # order does not matter
])
def test_a_users_name_matches_exactly_these_real_gpus(wanted: str, matched: set[str]) -> None:
    assert {reported for reported in REPORTED if model_matches(wanted, reported)} == matched


@pytest.mark.parametrize(("reported", "model"), [
    (H100_SXM, "H100"), (H100_PCIE, "H100"), (H100_NVL, "H100"), (H200_NVL, "H200"), (GH200, "GH200"),
    (A100_SXM4_80, "A100"), (A100_PCIE_80, "A100"), (L40S, "L40S"), (A10G, "A10G"), (T4, "T4"),
    (V100S, "V100S"), (GB200, "GB200"), (RTX_A6000, "RTX-A6000"), (RTX_6000_ADA, "RTX-6000-ADA"),
    ("H100", "H100"), ("NVIDIA 80GB", None), ("NVIDIA", None),
])
def test_the_short_model_drops_brand_and_variant_words(reported: str, model: str | None) -> None:
    assert short_model(reported) == model


@pytest.mark.parametrize("name", ["NVIDIA", "nvidia tesla", "-", " , ", "GeForce/Quadro", "ü"])
def test_a_name_without_a_model_word_is_refused_and_matches_nothing(name: str) -> None:
    with pytest.raises(ModelNameError, match="names no GPU model"):
        check_model_name(name)
    assert not any(model_matches(name, reported) for reported in REPORTED)


def test_memory_sizes_are_one_word_in_any_unit_spelling() -> None:
    assert model_words("A100-80G") == model_words("a100 80gb") == model_words("A100_80GiB") == {"a100", "80gb"}
    assert model_words("A100 80 GB") == {"a100", "80", "gb"}  # two words: not a memory size


def test_matches_any_is_any_of_the_names() -> None:
    assert matches_any(frozenset({"L4", "A10"}), L4) and matches_any(["L4", "A10"], A10)
    assert not matches_any(frozenset({"L4", "A10"}), L40S) and not matches_any(frozenset(), L4)


_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


@pytest.mark.parametrize(("text", "value"), [
    (H100_SXM, "NVIDIA-H100-80GB-HBM3"),
    (A100_SXM4_80, "NVIDIA-A100-SXM4-80GB"),
    ("  (weird) GPU/名前 ++ ", "weird-GPU"),
    ("-_.H100._-", "H100"),
    ("", None), ("---", None), ("名前", None),
    ("NVIDIA " + "X" * 70, "NVIDIA"),  # cut at the word boundary, not inside the word
    ("X" * 70, "X" * 63),
])
def test_label_values_are_valid_kubernetes_label_values(text: str, value: str | None) -> None:
    assert label_value(text) == value


names = st.text(alphabet=st.sampled_from("AaBbGgHhLlSsVvXx0123468 -_./"), min_size=1, max_size=40)
words = st.text(alphabet=st.sampled_from("ABGHLNSVX0123468gbi"), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(names)
def test_a_name_with_a_word_always_matches_itself(name: str) -> None:
    assert model_matches(name, name) == bool(model_words(name))


@settings(max_examples=300, deadline=None)
@given(names, st.sampled_from(REPORTED) | names)
def test_matching_ignores_case(wanted: str, reported: str) -> None:
    expected = model_matches(wanted, reported)
    assert model_matches(wanted.swapcase(), reported) == expected
    assert model_matches(wanted.upper(), reported.lower()) == expected


@settings(max_examples=300, deadline=None)
@given(names, words, st.sampled_from(" -_"), st.sampled_from(REPORTED) | names)
def test_adding_a_word_never_widens(wanted: str, word: str, separator: str, reported: str) -> None:
    if model_matches(wanted + separator + word, reported):
        assert model_matches(wanted, reported) or not model_words(wanted)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REPORTED) | st.text(max_size=90))
def test_the_labels_of_a_gpu_are_valid_and_match_it(reported: str) -> None:
    for value in (label_value(reported), short_model(reported)):
        if value is not None:
            assert len(value) <= LABEL_VALUE_MAX and _LABEL_VALUE.fullmatch(value), value
    product = label_value(reported)
    if product is not None and model_words(product) and len(reported) <= LABEL_VALUE_MAX:
        assert model_matches(product, reported)
    model = short_model(reported)
    if model is not None and len(model) < LABEL_VALUE_MAX:
        assert model_matches(model, reported)
