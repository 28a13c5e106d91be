"""The token-length table the embedded tasks' max_length budgets come from.

Measured with `python -m experiments.inputs.tasks`; the budgets themselves, and each task's
metric, are the protocol in experiments/contract/tasks.py.
"""

from __future__ import annotations

import sys
from typing import Any

from experiments.contract.tasks import TASKS


def length_table(percentiles: tuple[int, ...] = (50, 75, 90, 95, 99),
                 lengths: tuple[int, ...] = (64, 128, 256, 512)) -> list[dict[str, Any]]:
    """Per embedded task: train rows, token-length percentiles and the share each max_length
    keeps whole (MiniLM's tokenizer, special tokens included)."""
    import numpy as np

    from experiments.harness.config import resolve
    from experiments.inputs.backbones import load_tokenizer, resolve_source
    from experiments.inputs.data import load_data

    rows = []
    for name in TASKS:
        cfg = resolve({"data": name, "test_split": False})
        texts = list(load_data(cfg).splits["train"]["text"])
        tokenizer = load_tokenizer(resolve_source(cfg.model)[1])
        n = np.array([len(ids) for ids in tokenizer(texts)["input_ids"]])
        rows.append({"task": name, "rows": len(n), "mean": round(float(n.mean()), 1),
                     **{f"p{p}": int(np.percentile(n, p)) for p in percentiles},
                     **{f"<={k}": round(float((n <= k).mean()), 3) for k in lengths}})
    return rows


def main() -> int:
    """Print the length table the budgets' max_length came from."""
    for row in length_table():
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
