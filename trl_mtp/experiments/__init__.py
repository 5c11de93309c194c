"""Experiments: runner, bootstrap confidence intervals."""
