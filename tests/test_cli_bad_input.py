"""Bad input through the CLI, as a new user types it: each ends with one line naming the bad value, exit code 2, no
traceback, and the files it read are left as they were. And the rule that decides what is bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from trl_mtp import cli


@pytest.fixture(scope="module")
def folders(model_folders) -> Path:
    """The folder holding `base` and `mtp` (tests/conftest.py)."""
    return model_folders["base"].parent


def copy_of(folders, name, tmp_path) -> Path:
    return Path(shutil.copytree(folders / name, tmp_path / name))


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails_in_one_line(argv, capsys, *named) -> str:
    """Run the CLI in this process: exit code 2 and one stderr line naming every `named` value."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line or "Traceback" in line]
    assert code == 2 and len(lines) == 1, err
    for value in named:
        assert value in lines[0], (value, lines[0])
    return lines[0]


def test_corrupt_config_json_is_named_and_kept(folders, tmp_path, capsys):
    mtp = copy_of(folders, "mtp", tmp_path)
    (mtp / "config.json").write_text('{"model_type": ')
    before = digest(mtp)
    fails_in_one_line(["generate", "--model", str(mtp), "--prompt", "a"], capsys, "config.json", "not valid JSON")
    fails_in_one_line(
        ["sft", "--model", str(mtp), "--output_dir", str(tmp_path / "out"), "--max_steps", "1"],
        capsys,
        "config.json",
        "not valid JSON",
    )
    assert digest(mtp) == before and not (tmp_path / "out").exists()


def test_model_pointing_at_a_file_says_so(folders, capsys):
    for command in (
        ["generate", "--prompt", "a"],
        ["sft", "--output_dir", "unused"],
        ["probe"],
        ["export", "--native", "x"],
    ):
        file = str(folders / "mtp" / "config.json")
        argv = (
            [command[0], file, *command[1:]]
            if command[0] in ("probe", "export")
            else [command[0], "--model", file, *command[1:]]
        )
        line = fails_in_one_line(argv, capsys, file, "is a file, not a model folder")
        assert "does not exist" not in line


@pytest.mark.parametrize("command", ["sft", "grpo", "dpo"])
def test_mistyped_task_name_suggests_the_task(folders, tmp_path, capsys, command):
    fails_in_one_line(
        [
            command,
            "--model",
            str(folders / "base"),
            "--dataset_name",
            "star_grap",
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capsys,
        "'star_grap'",
        "did you mean the embedded task 'star_graph'",
    )
    assert not (tmp_path / "out").exists()  # it fails before anything is loaded or written


@pytest.mark.parametrize("prompts, named", [(["", "b"], "prompt 1 of 2"), (["a", ""], "prompt 2 of 2")])
def test_empty_prompt_is_refused(folders, capsys, prompts, named):
    argv = ["generate", "--model", str(folders / "mtp"), "--max-new-tokens", "4"]
    fails_in_one_line(argv + [x for p in prompts for x in ("--prompt", p)], capsys, "--prompt ''", named)


@pytest.mark.parametrize(
    "args, named",
    [
        (["--do-sample", "--top-p", "1.5"], "1.5"),
        (["--do-sample", "--top-p", "0"], "--top-p"),
        (["--do-sample", "--temperature", "0"], "--temperature"),
        (["--do-sample", "--temperature", "-1"], "-1"),
        (["--do-sample", "--top-k", "-1"], "-1"),
        (["--top-p", "0.9"], "--top-p 0.9 only applies to sampling"),  # would be silently ignored by greedy decoding
        (["--temperature", "0.7"], "--temperature 0.7 only applies to sampling"),
        (["--lookahead", "--do-sample"], "--do-sample"),
    ],
)
def test_sampling_settings_are_checked(folders, capsys, args, named):
    fails_in_one_line(["generate", "--model", str(folders / "mtp"), "--prompt", "a", *args], capsys, named)


def test_good_generate_still_runs(folders, capsys):
    assert (
        cli.main(
            [
                "generate",
                "--model",
                str(folders / "mtp"),
                "--prompt",
                "a",
                "--prompt",
                "b c",
                "--do-sample",
                "--top-p",
                "0.9",
                "--temperature",
                "0.8",
                "--top-k",
                "5",
                "--max-new-tokens",
                "3",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert len(out["completions"]) == 2 and out["stats"]["new_tokens"] <= 6


@pytest.mark.parametrize("field, value", [("num_mtp_heads", 3), ("head_type", "parallel")])
def test_mtp_config_disagreeing_with_the_weights_names_both(folders, tmp_path, capsys, field, value):
    mtp = copy_of(folders, "mtp", tmp_path)
    config = json.loads((mtp / "mtp_config.json").read_text())
    config[field] = value
    (mtp / "mtp_config.json").write_text(json.dumps(config))
    before = digest(mtp)
    line = fails_in_one_line(
        ["generate", "--model", str(mtp), "--prompt", "a"],
        capsys,
        "mtp_config.json says",
        f"{field}={value!r}",
        "mtp_heads.safetensors holds",
    )
    assert "head_type='sequential', num_mtp_heads=2" in line  # what the weights are, from the file's metadata
    assert digest(mtp) == before


def test_heads_file_without_metadata_is_checked_by_tensor_names(folders, tmp_path, capsys, monkeypatch):
    """Checkpoints saved before the heads file recorded what it holds: the tensor names tell."""
    from safetensors.torch import load_file, save_file

    mtp = copy_of(folders, "mtp", tmp_path)
    save_file(load_file(mtp / "mtp_heads.safetensors"), mtp / "mtp_heads.safetensors", metadata={"format": "pt"})
    config = json.loads((mtp / "mtp_config.json").read_text())
    (mtp / "mtp_config.json").write_text(json.dumps({**config, "num_mtp_heads": 3}))
    argv = ["generate", "--model", str(mtp), "--prompt", "a"]
    fails_in_one_line(argv, capsys, "num_mtp_heads=3", "tensors missing", "'layers.2.")
    # without the check, torch's load_state_dict trace is what the user would get
    monkeypatch.setattr("trl_mtp.model.check_heads_match", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError, match="state_dict"):
        cli.main(argv)


def test_only_trl_mtp_checks_are_one_line(monkeypatch, capsys):
    """ValueError raised by trl-mtp's own code is a message for the user; one raised inside a library is a bug or an
    unchecked case and keeps its traceback."""
    import types

    from trl_mtp.config import MTPConfig
    from trl_mtp.errors import UserInputError

    def ours(argv):
        MTPConfig(num_mtp_heads=0)  # trl-mtp's own check

    def library(argv):
        json.loads("{")  # a ValueError raised inside the json module

    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_module", ""))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: types.SimpleNamespace(main=ours))
    assert cli.main(["fake"]) == 2
    assert capsys.readouterr().err.strip() == "trl-mtp fake: error: MTPConfig.num_mtp_heads=0: must be an integer >= 1"
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: types.SimpleNamespace(main=library))
    with pytest.raises(json.JSONDecodeError):
        cli.main(["fake"])
    assert cli.is_user_error(UserInputError("raised anywhere"))
    monkeypatch.setenv("TRL_MTP_DEBUG", "1")
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: types.SimpleNamespace(main=ours))
    with pytest.raises(ValueError, match="num_mtp_heads=0"):
        cli.main(["fake"])


def test_version(capsys):
    import trl_mtp

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"trl-mtp {trl_mtp.__version__}"
