"""The tables the conformance results are read through."""

from trl_mtp.conformance.paths import Result
from trl_mtp.conformance.report import format_table, markdown_matrix, verdict


def test_markdown_matrix_numbers_each_kind_of_reason_once():
    refused = "model_type {!r} has no native MTP layers (native: deepseek_v3, glm4_moe, mellum)"
    results = {
        "llama3": [
            Result("greedy[medusa]", "pass", acceptance=0.25),
            Result("native_export", "refused", refused.format("llama")),
        ],
        "gpt2": [
            Result("greedy[medusa]", "fail", "IndexError: index out of range in self"),
            Result("native_export", "refused", refused.format("gpt2")),
        ],
    }
    lines = markdown_matrix(results).splitlines()
    assert lines[0] == "| path | llama3 | gpt2 |"
    assert lines[2] == "| greedy[medusa] | pass 0.25 | **FAIL** (1) |"
    assert lines[3] == "| native_export | refused (2) | refused (2) |"
    assert lines[-2:] == ["(1) IndexError: index out of range in self", "(2) e.g. " + refused.format("llama")]


def test_plain_table_and_verdict():
    results = [Result("greedy[sequential]", "pass", acceptance=0.0), Result("bf16", "pass", detail="3/3 rows")]
    table = format_table(results).splitlines()
    assert table[1].split() == ["greedy[sequential]", "pass", "0.00"] and table[2].split()[-2:] == ["3/3", "rows"]
    assert "draft nothing" in verdict(results, has_heads=True)
    assert verdict(results, has_heads=False) is None  # new heads on a plain base: nothing to judge
    assert verdict([Result("greedy[sequential]", "pass", acceptance=0.3)], has_heads=True) is None
    failed = verdict(results + [Result("save_load", "fail", "the loaded heads' tensors differ")], has_heads=True)
    assert failed == "1 of 3 paths failed; save_load: the loaded heads' tensors differ"
