"""The settings every short trainer run in the tests shares: no saving, no reporting, no progress bar, seeded, 2 heads.
Each test adds its own step count, batch size and method fields: `{**SMALL_RUN, "max_steps": 2, ...}`."""

SMALL_RUN = dict(
    learning_rate=1e-3,
    logging_steps=1,
    report_to=[],
    activation_checkpointing=False,
    save_strategy="no",
    dataloader_pin_memory=False,
    num_mtp_heads=2,
    seed=0,
    disable_tqdm=True,
)

# the smallest model of the from-scratch task runs' tests (preset fields): `run_*(..., model=SCRATCH_MODEL)`
SCRATCH_MODEL = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2
)
