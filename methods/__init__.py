"""The method registry: name -> module with a `Config` dataclass and `apply(model, cfg)`.

A method module may also define `PRESET` (training defaults it needs, e.g. its learning rate),
`prepare_data(model, splits, collate, cfg, ctx)`, a hook the harness calls once before training
(the head method uses it to cache frozen features), and `lr_scales(model, cfg)`, parameters that
learn at a multiple of the run's learning rate (LoRA+).
"""

from methods import bitfit, dora, embedding, full, head, ia3, lora, prefix, soft_prompt

# Ordered from the fewest trained parameters to the most, as tables and plots list them. Counted
# on the embedded MiniLM-L6 (6 layers, hidden 384) with each method's defaults, head (770)
# included: head 770, soft_prompt 8.4k, ia3 14.6k, bitfit 26.5k, prefix 92.9k, lora 332.5k,
# dora 353.3k, embedding 11.7M, full 22.7M.
METHODS = {
    "head": head,
    "soft_prompt": soft_prompt,
    "ia3": ia3,
    "bitfit": bitfit,
    "prefix": prefix,
    "lora": lora,
    "dora": dora,
    "embedding": embedding,
    "full": full,
}
