"""Conformance: the paths a user takes with a checkpoint (heads, MTP-SFT, speculative decoding, save/load, native
export, bf16), run on tiny random models built from real checkpoints' configs (`configs`), or on a user's own
checkpoint (`trl-mtp check`). `subjects`: what the paths run on; `paths`: the paths; `report`: tables and figures."""
