"""eda: summary numbers equal a direct count of the sample folder, plots are real PNGs."""

from __future__ import annotations

import json
import statistics
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from artclf.eda import EdaConfig, eda
from artclf.errors import ArtclfError
from artclf.ingest import IngestConfig, ingest
from tests.conftest import assert_figure


@pytest.fixture(scope="module")
def eda_work(sample_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    ingest(IngestConfig(data_dir=sample_dir, work=work, workers=2))
    eda(EdaConfig(work=work))
    return work


def test_summary_equals_a_direct_count_of_the_folders(eda_work, sample_dir):
    truth = json.loads((sample_dir / "sample_truth.json").read_text())
    unusable = {o["path"] for o in truth["odd_files"] if not o["usable"]}
    skip = truth["duplicate_folder"]["path"]
    counts: Counter[str] = Counter()
    sizes = []
    for p in sorted((sample_dir / "images/images").rglob("*")):
        rel = p.relative_to(sample_dir).as_posix()
        if p.is_file() and rel not in unusable and not rel.startswith(skip + "/"):
            counts[p.parent.name] += 1
            with Image.open(p) as im:
                orient = im.getexif().get(0x0112, 1)
                sizes.append(im.size[::-1] if orient in (5, 6, 7, 8) else im.size)
    summary = json.loads((eda_work / "eda/summary.json").read_text())
    pc = summary["per_class"]
    assert summary["images"] == sum(counts.values())
    assert summary["classes"] == len(counts) == 50
    assert (pc["min"], pc["max"]) == (min(counts.values()), max(counts.values()))
    assert pc["mean"] == round(statistics.mean(counts.values()), 2)
    assert sorted(summary["counts"].values()) == sorted(counts.values())
    w = np.array([s[0] for s in sizes])
    mp = np.array([s[0] * s[1] for s in sizes]) / 1e6
    assert summary["width"]["q50"] == pytest.approx(np.median(w))
    assert summary["megapixels"]["q100"] == pytest.approx(mp.max())


def test_plots_are_readable_pngs(eda_work):
    for name, min_height in (("class_counts.png", 800), ("image_sizes.png", 300)):
        with Image.open(eda_work / "eda" / name) as im:
            assert im.format == "PNG"
            assert im.height >= min_height  # 50 names need room to be readable
            assert np.asarray(im.convert("L")).std() > 10  # not a blank canvas
        assert_figure(eda_work / "eda" / name)


def test_no_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ArtclfError, match="manifest.jsonl: not found; run `artclf ingest"):
        eda(EdaConfig(work=tmp_path))
