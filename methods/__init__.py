"""The method registry: name -> module with a `Config` dataclass and `apply(model, cfg)`.

A method module may also define `PRESET` (training defaults it needs, e.g. its learning rate)
and `prepare_data(model, splits, collate, cfg, ctx)`, a hook the harness calls once before
training (the head method uses it to cache frozen features).
"""

from methods import full, head

METHODS = {
    "head": head,
    "full": full,
}
