"""The embedded world: everything the package ships so that a run needs no download.

Named for what it is, the default every command falls back to ("the embedded default", "an embedded task"): a
byte-level tokenizer trained on Python's standard library (`tokenizer`), tiny model presets (`presets`), seeded tasks
with exact-match rewards (`tasks/`), their evaluation (`evaluate`), plain next-token pretraining of a base model on
that data (`pretrain`), and the cache the built tokenizer and bases live in (`cache`). Importing this package is
cheap (no torch).
"""
