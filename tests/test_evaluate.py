"""A trained classifier scored on labelled images nothing was chosen on: a run's test split, and `advisor evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_class_images, write_splits

from advisor.core.errors import AdvisorError
from advisor.data.scan import scan_dataset
from advisor.decide.models import RunPlan
from advisor.execute.evaluate import evaluate_run
from advisor.execute.predict import predict
from advisor.execute.runner import run_plan


def _plan(dataset) -> RunPlan:
    return RunPlan(dataset=str(dataset), backbone="test/tiny-cnn", strategy="linear-probe", rule_ids=["test"], input_size=32)


def _top1(run_dir, samples, classes) -> float:
    rep = predict(run_dir, [s.path for s in samples], top_k=1)
    return sum(p.top[0].label == classes[s.label] for p, s in zip(rep.predictions, samples)) / len(samples)


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    root = write_splits(tmp_path_factory.mktemp("tvt") / "tvt", {"train": 8, "val": 3, "test": 4})
    out = run_plan(_plan(root), runs_dir=root.parent / "runs", num_workers=0)
    return root, out


def test_a_test_split_is_scored_once_by_the_saved_classifier_and_reported(split_run):
    root, out = split_run
    scan = scan_dataset(root)
    t = out.result.test
    assert t is not None and t.split == "test" and t.n == 12 and t.skipped == 0
    assert out.result.metrics.n_val == 9  # the validation split alone: the test images are not mixed in
    assert t.accuracy == pytest.approx(_top1(out.run_dir, scan.split("test"), scan.classes))
    assert t.accuracy_ci[0] <= t.accuracy <= t.accuracy_ci[1] and sum(map(sum, t.confusion)) == 12
    rd = Path(out.run_dir)
    assert json.loads((rd / "metrics.json").read_text())["test"]["n"] == 12
    html = (rd / "report.html").read_text()
    assert "- test accuracy: **" in (rd / "report.md").read_text() and 'id="test-accuracy"' in html
    assert "<h2>Test split</h2>" in html and html.count("<svg") >= 2  # its own confusion matrix beside validation's
    events = [json.loads(line) for line in (rd / "events.jsonl").read_text().splitlines()]
    assert [e["n"] for e in events if e["event"] == "test"] == [12]


def test_top5_accuracy_counts_the_true_class_among_the_five_most_probable():
    import torch

    from strategies.results import split_score

    classes = [f"c{i}" for i in range(7)]
    logits = torch.tensor([[7, 6, 5, 4, 3, 2, 1], [7, 6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6, 7]], dtype=torch.float)
    y = torch.tensor([0, 4, 0])  # top-1 right; 5th most probable; last
    score = split_score(logits, y, classes, split="test")
    assert score.accuracy == pytest.approx(1 / 3) and score.top5_accuracy == pytest.approx(2 / 3)
    assert split_score(logits[:, :3], torch.tensor([0, 1, 2]), classes[:3], split="test").top5_accuracy is None


def test_a_dataset_without_a_test_split_gets_no_test_score(tmp_path):
    root = write_class_images(tmp_path / "plain", {"red": 6, "blue": 6}, size=36)
    out = run_plan(_plan(root), runs_dir=tmp_path / "runs", num_workers=0)
    assert out.result.test is None and "test" not in json.loads((Path(out.run_dir) / "metrics.json").read_text())


def test_evaluate_scores_class_folders_as_a_test_set_with_the_runs_classes(split_run, tmp_path):
    root, out = split_run
    # a held-out folder of two of the run's three classes: scored in the run's class order
    held = write_class_images(tmp_path / "held", {"red": 3, "green": 5}, size=36, seed=7)
    score = evaluate_run(out.run_dir, held)
    scan = scan_dataset(held, training=False)
    assert {s.split for s in scan.samples} == {"test"} and score.split == "test" and score.n == 8
    assert score.accuracy == pytest.approx(_top1(out.run_dir, scan.samples, scan.classes))
    assert [c.name for c in score.per_class] == ["blue", "green", "red"] and score.per_class[0].support == 0
    # one class is enough to score; the dataset's own splits are honoured, "all" takes every image
    assert evaluate_run(out.run_dir, write_class_images(tmp_path / "one", {"red": 2}, size=36, seed=5)).n == 2
    assert evaluate_run(out.run_dir, root, split="val", include_seen=True).n == 9
    everything = evaluate_run(out.run_dir, root, split="all")  # the run's own images are left out and counted
    assert everything.n == 12 and (everything.seen_train, everything.seen_val) == (24, 9)
    assert evaluate_run(out.run_dir, root, split="all", include_seen=True).n == 24 + 9 + 12
    # a dataset root that holds test/ alone (training needs train/; scoring does not)
    only_test = write_class_images(tmp_path / "tonly" / "test", {"blue": 2, "red": 2}, size=36, seed=6).parent
    assert evaluate_run(out.run_dir, only_test).n == 4


@pytest.mark.parametrize("classes, split, message", [
    ({"red": 2, "purple": 2}, "test", "1 class\\(es\\) of .* are not among the run's 3: purple"),
    ({"red": 2}, "val", "has no val images \\(it has: test\\)"),
    ({"red": 2}, "every", "unknown split 'every'"),
])
def test_evaluate_refuses_what_it_cannot_score(split_run, tmp_path, classes, split, message):
    data = write_class_images(tmp_path / "d", classes, size=36)
    with pytest.raises(AdvisorError, match=message):
        evaluate_run(split_run[1].run_dir, data, split=split)


def test_cli_evaluate_prints_json_and_errors_are_one_line(split_run, tmp_path, capsys):
    from test_cli import run_main

    root, out = split_run
    code, printed, err = run_main(["evaluate", out.run_dir, str(root), "--json"], capsys)
    assert code == 0, err
    assert json.loads(printed)["n"] == 12 and json.loads(printed)["accuracy"] == out.result.test.accuracy
    code, printed, err = run_main(["evaluate", out.run_dir, str(root)], capsys)
    assert code == 0 and "test accuracy" in printed and "Test per class" in printed
    code, printed, err = run_main(["inspect", str(root)], capsys)
    assert code == 0 and "test: scored once at the end of every run; strategies choose on val only" in printed
    code, _, err = run_main(["evaluate", out.run_dir, str(tmp_path / "missing")], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_test_split_that_cannot_be_scored_leaves_the_trained_run_standing(split_run, tmp_path, monkeypatch):
    import advisor.execute.runner as runner

    def unreadable(*args, **kwargs):  # every test image failing to decode after the scan passed their headers
        raise AdvisorError("none of the 12 test images could be read")

    monkeypatch.setattr(runner, "score_samples", unreadable)
    out = run_plan(_plan(split_run[0]), runs_dir=tmp_path / "runs", num_workers=0)
    assert out.result.test is None and out.result.metrics.n_val == 9
    events = [json.loads(line) for line in (Path(out.run_dir) / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "test_not_scored" and "none of the 12" in e["reason"] for e in events)
    assert json.loads((Path(out.run_dir) / "run.json").read_text())["status"] == "finished"


def test_images_the_run_trained_or_validated_on_are_left_out_of_a_later_score(split_run, tmp_path, capsys):
    import shutil

    from test_cli import run_main

    root, out = split_run
    # its validation images only: refused, since their accuracy is no test accuracy
    with pytest.raises(AdvisorError, match=r"all 9 images of .* were used by the run \(0 to train, 9 to validate\)"):
        evaluate_run(out.run_dir, root, split="val")
    # renamed copies of two training images among three new ones: matched by content, left out, counted
    mixed = write_class_images(tmp_path / "mixed", {"red": 3}, size=36, seed=11)
    for i, f in enumerate(sorted((root / "train" / "red").iterdir())[:2]):
        shutil.copyfile(f, mixed / "red" / f"renamed_{i}.png")
    score = evaluate_run(out.run_dir, mixed)
    assert score.n == 3 and (score.seen_train, score.seen_val, score.seen_included) == (2, 0, False)
    kept = evaluate_run(out.run_dir, mixed, include_seen=True)
    assert kept.n == 5 and (kept.seen_train, kept.seen_included) == (2, True)
    code, printed, err = run_main(["evaluate", out.run_dir, str(mixed)], capsys)
    assert code == 0 and "left out 2 image(s) the run trained or validated on" in printed
    code, printed, err = run_main(["evaluate", out.run_dir, str(mixed), "--include-seen"], capsys)
    assert code == 0 and "this is not a test accuracy" in " ".join(printed.split())
    code, _, err = run_main(["evaluate", out.run_dir, str(root), "--split", "val"], capsys)
    assert code == 2 and "--include-seen" in err and len(err.strip().splitlines()) == 1
    # a seen.json that fails its checksum is not trusted (nothing left out, and the score says why); none at all: same
    copy = Path(shutil.copytree(out.run_dir, tmp_path / "run-copy"))
    record = json.loads((copy / "seen.json").read_text())
    record["train"] = record["train"][1:]
    (copy / "seen.json").write_text(json.dumps(record))
    score = evaluate_run(copy, mixed)
    assert score.n == 5 and score.seen_train == 0 and "does not match its checksum" in score.seen_note
    (copy / "seen.json").unlink()
    assert "has no seen.json" in evaluate_run(copy, mixed).seen_note


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_as_the_cpu_does(split_run):  # run by benchmarks/gpu_check.sh's CUDA tests
    root, out = split_run
    cpu = evaluate_run(out.run_dir, root, device="cpu")
    gpu = evaluate_run(out.run_dir, root, device="cuda")
    assert gpu.n == cpu.n == 12 and abs(gpu.accuracy - cpu.accuracy) <= 1 / 12 and abs(gpu.loss - cpu.loss) < 1e-3


def test_the_evaluate_screen_names_the_most_confused_pairs(capsys):
    import torch

    from advisor.cli.render import render_score
    from strategies.results import split_score

    eye = torch.eye(3) * 5
    logits = torch.stack([eye[0], eye[1], eye[1], eye[2], eye[0], eye[0]])
    score = split_score(logits, torch.tensor([0, 1, 0, 2, 2, 2]), ["ant", "bee", "cat"], split="test", dataset="/d")
    render_score(score)
    printed = capsys.readouterr().out
    assert "test accuracy 0.5000" in printed and "most confused (true -> predicted): cat -> ant 2, ant -> bee 1" in printed
