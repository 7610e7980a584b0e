"""``semseg predict``: segment files, folders and globs; write masks, overlays and cut-outs."""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from semseg.data.base import IMAGE_SUFFIXES
from semseg.inference.predictor import Predictor, to_rgb_array
from semseg.visualize import cutout, overlay, palette_image

def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Image files named directly, inside folders (not recursive) or matched by globs; plus what matched nothing."""
    files, missing = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            missing.append(item)
        files.extend(found)
    return list(dict.fromkeys(files)), missing


def output_names(files: Sequence[Path]) -> dict[Path, str]:
    """Output file stem for each input: its own stem, with ``-2``, ``-3``... where stems repeat,
    so that ``a/0.png`` and ``b/0.png`` never overwrite each other's results."""
    names, used = {}, set()
    for path in files:
        name, n = path.stem, 1
        while name in used:
            n += 1
            name = f"{path.stem}-{n}"
        used.add(name)
        names[path] = name
    return names


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str],
    out: str | Path,
    *,
    overlays: bool = True,
    cutout_classes: Sequence[str] = (),
    progress: bool = True,
) -> dict:
    """Segment every input; returns a summary. A file that cannot be read is reported and skipped."""
    out = Path(out)
    unknown = [c for c in cutout_classes if c not in predictor.classes]
    if unknown:
        raise ValueError(f"--cutout class(es) {', '.join(unknown)} not in the model's classes: {', '.join(predictor.classes)}")
    keep = [predictor.classes.index(c) for c in cutout_classes]
    files, missing = expand_inputs(inputs)
    failed = {item: "no such file, folder or matching image" for item in missing}
    names = output_names(files)
    written = {}
    for path in tqdm(files, desc="predict", disable=not progress, dynamic_ncols=True):
        try:
            image = to_rgb_array(path)
        except ValueError as exc:
            failed[str(path)] = str(exc)
            continue
        mask = predictor(image)
        targets = {"masks": palette_image(mask, predictor.palette)}
        if overlays:
            targets["overlays"] = overlay(image, mask, predictor.palette)
        if keep:
            targets["cutouts"] = cutout(image, mask, keep)
        for folder, picture in targets.items():
            target = out / folder / f"{names[path]}.png"
            if target.resolve() == path.resolve():
                raise ValueError(f"refusing to overwrite the input {path}; choose another --out")
            target.parent.mkdir(parents=True, exist_ok=True)
            picture.save(target)
        written[str(path)] = f"{names[path]}.png"
    summary = {"images": len(written), "outputs": written, "failed": failed, "out": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
