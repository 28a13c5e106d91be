"""Helpers the tests share (not fixtures): reading what W&B wrote offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_wandb_file(path: str | Path) -> dict[str, Any]:
    """What an offline W&B run file holds: run info, final summary and history rows.

    The `.wandb` file is a LevelDB-style log (7-byte file header, then 32 KiB blocks of
    records with a 7-byte header: crc32, length, type) of protobuf `Record`s. Used by the tests
    to check what W&B would sync, without a server.
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos = Path(path).read_bytes(), 32768, 7
    chunks: list[bytes] = []
    partial = b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            partial = (b"" if kind == 2 else partial) + chunk
        elif kind == 4:
            chunks.append(partial + chunk)
    out: dict[str, Any] = {"run": {}, "summary": {}, "history": [], "config": {}}
    for raw in chunks:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = {"id": rec.run.run_id, "project": rec.run.project,
                          "group": rec.run.run_group, "job_type": rec.run.job_type,
                          "resume": rec.run.resume, "name": rec.run.display_name,
                          "tags": list(rec.run.tags)}
            out["config"] = {i.key: json.loads(i.value_json) for i in rec.run.config.update}
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in rec.summary.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in rec.history.item})
        elif kind == "artifact":
            out.setdefault("artifacts", []).append(
                {"name": rec.artifact.name, "type": rec.artifact.type,
                 "files": [m.path for m in rec.artifact.manifest.contents]})
        elif kind == "metric":
            out.setdefault("metrics", {})[rec.metric.name or rec.metric.glob_name] = \
                rec.metric.step_metric
        elif kind in ("output", "output_raw"):
            out["console"] = out.get("console", "") + getattr(rec, kind).line
    return out




def eval_logits(model: Any, batch: dict) -> Any:
    """The model's logits on a batch (labels dropped), in eval mode, without gradients."""
    import torch

    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def load_peft_folder(model: Any, folder: Any) -> Any:
    """A fresh `Classifier` (shared head) with a PEFT folder loaded the way its model card
    does: the adapters onto the backbone (names as in `AutoModel`; PEFT injects them in place),
    the head from `head.safetensors`."""
    from pathlib import Path

    from peft import PeftModel
    from safetensors.torch import load_file

    PeftModel.from_pretrained(model.backbone, str(folder))
    model.classifier.load_state_dict(load_file(str(Path(folder) / "head.safetensors")))
    return model


def on_training_forward(monkeypatch: Any, call: int,
                        act: Callable[[Any], None]) -> None:
    """Run `act(output)` right after the model's `call`-th training-step forward (the memory
    measurement's extra step, which is undone, is not counted)."""
    from experiments.memory import canonical
    from methods.model import Classifier

    real, real_measure = Classifier.forward, canonical.measure
    state = {"n": 0, "measuring": False}

    def measure(*a: object, **k: object) -> object:
        state["measuring"] = True
        try:
            return real_measure(*a, **k)
        finally:
            state["measuring"] = False

    def forward(self: Classifier, *a: object, **k: object) -> object:
        out = real(self, *a, **k)
        if self.training and not state["measuring"]:  # the loss is computed from the logits
            state["n"] += 1
            if state["n"] == call:
                act(out)
        return out

    monkeypatch.setattr(canonical, "measure", measure)
    monkeypatch.setattr(Classifier, "forward", forward)
