"""Turn a trained checkpoint into a model shipped inside semseg (``src/semseg/pretrained/``).

    python scripts/ship_pretrained.py runs/lraspp_camvid_8h_student/last.safetensors --name camvid-lraspp \\
        --recipe configs/ddrnet_23_slim_camvid_8h_teacher.yaml configs/lraspp_camvid_8h_student.yaml \\
        --data camvid --root ../shared/data/camvid --card docs/model_card_camvid_lraspp.md

A distilled model names its teacher's recipe first: the reproduce command runs them in order.

Drops the training-only auxiliary head (``aux: false`` in the shipped ``model_config``),
stores every float tensor as fp16, then scores the *written* file on the validation split
with ``semseg evaluate``'s own code (plain, and with flip + scales 0.75/1/1.25) so the
mIoU in ``index.json`` and ``semseg pretrained`` is the shipped file's, not the fp32
checkpoint's. An existing entry of the same name is replaced.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from semseg.engine.checkpoint import load_model, save_weights
from semseg.inference.evaluation import evaluate_checkpoint
from semseg.pretrained import PRETRAINED_DIR
from semseg.registry import aux_free_twin

SIZE_LIMIT = 10 * 10**6  # bytes: issue 11's 10 MB (tests/test_pretrained.py holds a shipped model to it)
TTA_SCALES = (0.75, 1.0, 1.25)


def shipped_model(checkpoint: Path) -> tuple[torch.nn.Module, dict]:
    """The checkpoint's model without its auxiliary head, in fp16, and its metadata."""
    model, meta = load_model(checkpoint)
    lean = aux_free_twin(model)
    if lean is not None:
        kept = lean.state_dict().keys()
        lean.load_state_dict({k: v for k, v in model.state_dict().items() if k in kept})
        model = lean
    return model.half(), meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--name", required=True, help="camvid-<arch>: how users address it")
    parser.add_argument("--recipe", required=True, nargs="+",
                        help="the recipe that trained it (for the reproduce command); a distilled model's teacher's first")
    parser.add_argument("--data", required=True, help="dataset to score it on (its val split)")
    parser.add_argument("--root", default=None)
    parser.add_argument("--card", required=True, help="the model card in docs/")
    args = parser.parse_args()

    model, meta = shipped_model(args.checkpoint)
    file = f"{args.name}.safetensors"
    extra = {k: v for k, v in meta.items() if k != "model_config"}
    path = save_weights(model, PRETRAINED_DIR / file, **extra, shipped_from=str(args.checkpoint),
                        recipe=args.recipe[-1])
    size = path.stat().st_size
    print(f"wrote {path} ({size / 10**6:.2f} MB{', OVER the 10 MB limit' if size > SIZE_LIMIT else ''})")

    plain = evaluate_checkpoint(path, args.data, root=args.root, backend="torch", progress=False)
    tta = evaluate_checkpoint(path, args.data, root=args.root, backend="torch", flip=True, scales=TTA_SCALES,
                              progress=False)  # fmt: skip
    print(f"val mIoU {plain['mIoU']:.4f} plain, {tta['mIoU']:.4f} with flip + scales {list(TTA_SCALES)}")
    print("per class (plain):", json.dumps({c: round(v, 4) for c, v in plain["per_class_IoU"].items()}))

    index_path = PRETRAINED_DIR / "index.json"
    index = json.loads(index_path.read_text())
    entry = {"name": args.name, "file": file, "architecture": model.model_config["name"], "dataset": args.data,
             "classes": list(meta["classes"]), "val_mIoU": round(plain["mIoU"], 4),
             "command": " && ".join(f"semseg train {r}" for r in args.recipe), "card": args.card}  # fmt: skip
    index["models"] = [m for m in index["models"] if m["name"] != args.name] + [entry]
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    print(f"updated {index_path}")


if __name__ == "__main__":
    main()
