"""The method registry: name -> module with a `Config` dataclass and `apply(model, cfg)`.

A method module may also define `PRESET` (training defaults it needs, e.g. its learning rate)
and `prepare_data(model, splits, collate, cfg, ctx)`, a hook the harness calls once before
training (the head method uses it to cache frozen features).
"""

from methods import embedding, full, head, lora, soft_prompt

# Ordered from the fewest trained parameters to the most, as tables and plots list them.
METHODS = {
    "head": head,
    "embedding": embedding,
    "soft_prompt": soft_prompt,
    "lora": lora,
    "full": full,
}
