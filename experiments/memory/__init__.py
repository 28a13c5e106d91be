"""Memory measurement: the ledger, the lecture's prediction, one step measured by category."""
