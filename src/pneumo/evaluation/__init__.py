"""Evaluation: metrics, intervals, plots, the shift suite, reports and comparisons."""
