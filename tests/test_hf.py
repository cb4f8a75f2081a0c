"""Hugging Face datasets saved with save_to_disk are read as they are: Image + ClassLabel features, their splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")


def _images(n: int, colour: tuple[int, int, int], seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8))
            for _ in range(n)]


def _save(path, splits: dict[str, int], *, label_feature=None):
    features = datasets.Features({"img": datasets.Image(),
                                  "label": label_feature or datasets.ClassLabel(names=["red thing", "blue/green"])})
    parts = {}
    for i, (name, n) in enumerate(splits.items()):
        imgs = _images(n, (200, 30, 30), i) + _images(n, (30, 60, 200), i + 10)
        labels = [0] * n + [1] * n if label_feature is None else ["a"] * n + ["b"] * n
        parts[name] = datasets.Dataset.from_dict({"img": imgs, "label": labels}, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


def test_a_saved_datasetdict_scans_with_its_own_splits_and_class_names(tmp_path, monkeypatch):
    from advisor.data.scan import scan_dataset

    monkeypatch.setenv("ADVISOR_CACHE_DIR", str(tmp_path / "cache"))
    root = _save(tmp_path / "hf", {"train": 6, "validation": 3})
    scan = scan_dataset(root)
    assert scan.layout == "huggingface" and scan.root == str(root)
    assert scan.classes == ["blue/green", "red thing"]  # any label text: no folder is named after it
    assert scan.counts == {"train": {"blue/green": 6, "red thing": 6}, "val": {"blue/green": 3, "red thing": 3}}
    assert scan.split_source == "manifest" and not scan.skipped
    again = scan_dataset(root)  # written once: the second scan reads the same files
    assert [s.path for s in again.samples] == [s.path for s in scan.samples]


def test_a_run_trains_on_it(tmp_path, monkeypatch):
    import advisor

    monkeypatch.setenv("ADVISOR_CACHE_DIR", str(tmp_path / "cache"))
    root = _save(tmp_path / "hf", {"train": 8})  # one split: a validation split is carved
    out = advisor.run(root, strategy="linear-probe", backbone="test/tiny-cnn", input_size=32, runs_dir=tmp_path / "runs")
    assert out.result.metrics.n_val > 0 and out.result.metrics.val_accuracy > 0.5


def test_without_a_classlabel_it_is_one_line(tmp_path, monkeypatch, capsys):
    from advisor.cli.app import main

    monkeypatch.setenv("ADVISOR_CACHE_DIR", str(tmp_path / "cache"))
    root = _save(tmp_path / "hf", {"train": 4}, label_feature=datasets.Value("string"))
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(root)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "needs exactly one Image and one ClassLabel feature" in err and "cast a column" in err


def test_without_the_datasets_package_it_says_how_to_fix_it(tmp_path, monkeypatch):
    import builtins

    from advisor.core.errors import DatasetError
    from advisor.data.scan import scan_dataset

    root = _save(tmp_path / "hf", {"train": 4})
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) if name == "datasets" else real(name, *a, **k))
    with pytest.raises(DatasetError, match=r"needs the datasets package \(pip install 'advisor\[hf\]'\)"):
        scan_dataset(root)
