"""`trl-mtp check` on a user's checkpoint, and `trl-mtp export --check`: the table, and failing (exit 1, one line) on
heads that were lost or draft nothing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import trl_mtp.native
from trl_mtp.cli import main as cli_main
from trl_mtp.config import HEAD_TYPES
from trl_mtp.conformance.subjects import tiny_subject
from trl_mtp.native import export_native


def trained_checkpoint(name, family, directory):
    """A tiny model whose heads draft its greedy prompts' continuations, saved as an MTP checkpoint."""
    model = tiny_subject(name).mtp(family)
    model.save_pretrained(directory)
    return model


def check(capsys, *args):
    # only the command's own output: a test's set-up before it (save_pretrained's progress bar, shown until a first
    # `check` in the process turns the bars off) is not the command's
    capsys.readouterr()
    code = cli_main(["check", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def row(table: str, path: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.split()[:1] == [path])


def test_check_passes_trained_heads_and_prints_the_table(tmp_path, capsys):
    trained_checkpoint("llama3", "blockwise", tmp_path)
    code, out, err = check(capsys, tmp_path, "--paths", "greedy,save_load,native_export")
    assert code == 0, err
    greedy = row(out, "greedy[blockwise]")
    assert greedy[1] == "pass" and float(greedy[2]) > 0
    assert row(out, "save_load")[1] == "pass"
    assert row(out, "native_export")[1:3] == ["refused", "model_type"]  # with its reason
    assert out.strip().splitlines()[-1] == "trl-mtp check: passed"


def test_check_fails_heads_that_draft_nothing(tmp_path, capsys):
    """Zeroed sequential heads draft token 0 everywhere (their logits are all 0), a token this base never predicts
    (its output row is zero, every other row wins somewhere above 0): acceptance exactly 0."""
    model = tiny_subject("llama3").mtp("sequential")
    with torch.no_grad():
        for p in model.heads.parameters():
            p.zero_()
        model.get_output_embeddings().weight[0].zero_()
    model.save_pretrained(tmp_path)
    code, out, err = check(capsys, tmp_path, "--paths", "greedy")
    assert row(out, "greedy[sequential]")[1:3] == ["pass", "0.00"]  # lossless, and useless
    assert code == 1 and len(err) == 1 and "draft nothing" in err[0] and "0.00" in err[0]
    # the same base with its fitted heads drafts, and passes
    trained_checkpoint("llama3", "sequential", tmp_path / "fitted")
    assert check(capsys, tmp_path / "fitted", "--paths", "greedy")[0] == 0


def glm_export(tmp_path):
    model = tiny_subject("glm4.5").mtp("sequential")
    export_native(model, tmp_path / "native")
    return tmp_path / "native"


def test_check_fails_native_layers_that_were_lost(tmp_path, capsys):
    native = glm_export(tmp_path)
    code, out, err = check(capsys, native, "--paths", "greedy,stock_use_mtp")
    assert code == 0, err
    assert row(out, "stock_use_mtp")[1] == "pass" and float(row(out, "greedy[sequential]")[2]) > 0
    # the MTP layers (model.layers.2.*: decoder layer 2 of a 2-layer model) dropped from the weights
    weights = load_file(native / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("model.layers.2.")},
        native / "model.safetensors",
        metadata={"format": "pt"},
    )
    code, out, err = check(capsys, native, "--paths", "greedy,stock_use_mtp")
    assert code == 1 and len(err) == 1 and "heads cannot be loaded" in err[0] and "no native MTP weights" in err[0]


def test_export_check(tmp_path, capsys, monkeypatch):
    trained_checkpoint("glm4.5", "sequential", tmp_path / "run")
    code = cli_main(["export", str(tmp_path / "run"), "--native", str(tmp_path / "ok"), "--check"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "stock_use_mtp" in out.out and not out.err.strip()
    # an export that loses the layers: the config says num_mtp_layers = 3, the weights hold none
    monkeypatch.setattr(trl_mtp.native, "native_state_dict", lambda model: {})
    code = cli_main(["export", str(tmp_path / "run"), "--native", str(tmp_path / "lost"), "--check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert json.loads((tmp_path / "lost" / "config.json").read_text())["num_nextn_predict_layers"] == 3
    assert code == 1 and len(err) == 1 and err[0].startswith("trl-mtp export: --check FAILED: ") and "lost" in err[0]


def test_check_on_a_plain_base_runs_every_family(tmp_path, capsys):
    from trl_mtp.conformance.configs import tiny_model

    tiny_model("qwen3").save_pretrained(tmp_path)
    code, out, err = check(capsys, tmp_path, "--paths", "greedy")
    assert code == 0, err  # new heads draft little, and that is no failure for a base without heads
    assert [row(out, f"greedy[{f}]")[1] for f in HEAD_TYPES] == ["pass"] * len(HEAD_TYPES)


@pytest.mark.parametrize(
    "args,bad",
    [
        (["/no/such/dir"], "/no/such/dir"),
        (["{dir}", "--paths", "greedy,nope"], "nope"),
        (["{dir}", "--dtype", "int8"], "int8"),
    ],
)
def test_check_bad_input_is_one_line(args, bad, tmp_path, capsys):
    from trl_mtp.conformance.configs import tiny_model

    tiny_model("qwen3").save_pretrained(tmp_path)
    code, _, err = check(capsys, *[a.format(dir=tmp_path) for a in args])
    assert code == 2 and len(err) == 1 and bad in err[0]


@pytest.mark.slow
def test_check_passes_every_default_path_on_a_trained_checkpoint(tmp_path, capsys):
    trained_checkpoint("glm4.5", "sequential", tmp_path)
    code, out, err = check(capsys, tmp_path)
    assert code == 0, (out, err)
