import pytest

from trl_mtp import MTPConfig

BAD_VALUES = [
    ("head_type", "eagle"),
    ("num_mtp_heads", 0),
    ("num_mtp_heads", 2.0),
    ("num_mtp_heads", True),
    ("mode", "both"),
    ("decoupled_target", "logits"),
    ("self_distill_topk", 0),
    ("mtp_lambda", -0.1),
    ("mtp_lambda", float("nan")),
    ("mtp_depth_decay", 0.0),
    ("mtp_normalize_depth_weights", "yes"),
    ("mtp_loss_chunk_size", -1),
    ("blockwise_hidden_mult", 0),
    ("share_lm_head", 1),
    ("parallel_init_from_last_layer", None),
    ("sequential_init_from_last_layer", "no"),
]


@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_bad_value_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"MTPConfig\.{field}="):
        MTPConfig(**{field: value})


def test_defaults_valid_and_dict_round_trip():
    config = MTPConfig(
        head_type="sequential",
        num_mtp_heads=4,
        mode="decoupled",
        decoupled_target="self_distill",
        self_distill_topk=8,
        mtp_depth_decay=0.8,
    )
    assert MTPConfig.from_dict(config.to_dict()) == config
    assert MTPConfig().num_mtp_heads == 2


def test_from_dict_rejects_unknown_field():
    with pytest.raises(ValueError, match="num_heads"):
        MTPConfig.from_dict({"num_heads": 3})
