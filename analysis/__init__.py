"""Analysis: run records (or W&B runs) -> DataFrame, seed statistics, figures, dashboard."""
