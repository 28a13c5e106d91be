"""The method registry: name -> `MethodSpec`, the checked contract of each module (`methods.base`).

Registering a module checks it once: it must have `apply(model, cfg)` and a `Config` dataclass,
and each optional hook it defines (`prepare_data`, `lr_scales`, `save`, `load`, `merge`) must take
the contract's arguments, else importing `methods` fails with one line naming the hook.
"""

from methods import bitfit, dora, embedding, full, head, ia3, lora, prefix, soft_prompt
from methods.base import MethodSpec, method_spec

# Ordered from the fewest trained parameters to the most, as tables and plots list them. Counted
# on the embedded MiniLM-L6 (6 layers, hidden 384) with each method's defaults, head (770)
# included: head 770, soft_prompt 8.4k, ia3 14.6k, bitfit 26.5k, prefix 92.9k, lora 332.5k,
# dora 353.3k, embedding 11.7M, full 22.7M.
METHODS: dict[str, MethodSpec] = {
    name: method_spec(name, module) for name, module in {
        "head": head,
        "soft_prompt": soft_prompt,
        "ia3": ia3,
        "bitfit": bitfit,
        "prefix": prefix,
        "lora": lora,
        "dora": dora,
        "embedding": embedding,
        "full": full,
    }.items()
}
