"""Seeded golden outputs: a silent change to any model's initialisation or computation fails here.

Each model is built in its tiny configuration after ``torch.manual_seed(0)``, put in
eval mode and run on a fixed input; a few summary numbers of the logits are compared
with ``golden.json``. After an *intended* change, regenerate with::

    python -m pytest tests/models/test_golden.py --update-golden

(the run then rewrites the entries it computed and skips the comparisons). A model
registered after the file was written fails with a hint to do the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import semseg

GOLDEN = Path(__file__).with_name("golden.json")
NUM_CLASSES = 3
SIZE = (33, 47)
# Positions (flattened over the (1, C, H, W) logits) whose values are recorded.
PROBES = (0, 777, 1551, 2468, 4652)
# Loose enough for another CPU's summation order, tight enough for any real change.
RTOL = 1e-3


def summarise(name: str, options: dict) -> dict:
    torch.manual_seed(0)
    model = semseg.create_model(name, num_classes=NUM_CLASSES, **options).eval()
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).double()
    flat = y.flatten()
    return {
        "options": options,
        "sum": flat.sum().item(),
        "abs_mean": flat.abs().mean().item(),
        "std": flat.std().item(),
        "probes": [flat[i].item() for i in PROBES],
    }


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
@pytest.mark.parametrize("name", semseg.list_models())
def test_seeded_output_matches_golden(name, tiny, update_golden):
    actual = summarise(name, tiny(name))
    if update_golden:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[name] = actual
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=2) + "\n")
        pytest.skip("golden.json updated")
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if name not in golden:
        pytest.fail(f"no golden output for {name!r}; run: python -m pytest {__file__} --update-golden")
    expected = golden[name]
    assert actual["options"] == expected["options"], "tiny options changed; regenerate golden.json"
    scale = expected["abs_mean"]
    assert actual["abs_mean"] == pytest.approx(scale, rel=RTOL)
    assert actual["std"] == pytest.approx(expected["std"], rel=RTOL)
    # The sum can nearly cancel, so compare it on the scale of the values it adds up.
    n = NUM_CLASSES * SIZE[0] * SIZE[1]
    assert actual["sum"] == pytest.approx(expected["sum"], abs=RTOL * scale * n)
    assert actual["probes"] == pytest.approx(expected["probes"], abs=RTOL * scale)
