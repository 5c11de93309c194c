"""Seeing what the heads learned: a training-time recorder, a world-model consistency probe, plots and a report.

- `MTPRecorder` (recorder.py): a `TrainerCallback` for every trl-mtp trainer; files documented there.
- `consistency_probe` (consistency.py): head i's distribution vs the policy's own distribution i steps ahead.
- `write_report` (report.py): PNG plots and HTML pages from run folders (`trl-mtp report`).
"""

from trl_mtp.diagnostics.recorder import DEFAULT_EVERY, MTPRecorder, make_probe_batch

__all__ = ["DEFAULT_EVERY", "MTPRecorder", "make_probe_batch"]
