"""Every MTP field of every trainer config has help text (what `trl-mtp <cmd> --help` shows): the help of the
`MTPConfig` fields is read from its docstring, so a field added without documentation would show an empty line."""

from __future__ import annotations

import dataclasses
import re

import pytest

from trl_mtp.config import MTPConfig
from trl_mtp.trainers import mtp_args

CONFIGS = ["MTPSFTConfig", "MTPGRPOConfig", "MTPRLOOConfig", "MTPDPOConfig", "MTPPPOConfig", "WorldModelPPOConfig"]
MTP_FIELDS = [f.name for f in dataclasses.fields(MTPConfig)]
RL_CONFIGS = ["MTPGRPOConfig", "MTPRLOOConfig", "MTPPPOConfig", "WorldModelPPOConfig"]  # + sample filter, alarms
RL_HEAD_FIELDS = [f.name for f in dataclasses.fields(mtp_args.RLHeadArguments)]


def without_help(fields) -> list[str]:
    return [f.name for f in fields if not str(f.metadata.get("help", "")).strip()]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_mtp_field_has_help(name):
    import trl_mtp

    fields = {f.name: f for f in dataclasses.fields(getattr(trl_mtp, name))}
    names = MTP_FIELDS + [n for n, *_ in mtp_args._SCHEDULE_FIELDS] + (RL_HEAD_FIELDS if name in RL_CONFIGS else [])
    mtp_fields = [fields[n] for n in names]
    assert without_help(mtp_fields) == []
    assert all(len(f.metadata["help"]) > 20 for f in mtp_fields)  # a sentence, not a stray word


def test_a_field_missing_from_the_docstring_is_caught(monkeypatch):
    """The check above fails when a field's documentation is missing from MTPConfig's docstring."""
    doc = re.sub(r"\n {8}mtp_lambda \(`.*?(?=\n {8}\w)", "", MTPConfig.__doc__, flags=re.S)
    assert "mtp_lambda (`" not in doc and "mtp_depth_decay (`" in doc
    monkeypatch.setattr(mtp_args, "_MTP_DOCS", mtp_args.docstring_fields(type("Doc", (), {"__doc__": doc})))
    fields = []
    for name, _, field in mtp_args._mtp_config_fields():
        field.name = name
        fields.append(field)
    assert without_help(fields) == ["mtp_lambda"]
