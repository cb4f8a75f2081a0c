"""Per-depth transferability evidence inside `recommend`, and notes where it contradicts the table."""

from __future__ import annotations

from conftest import EXAMPLE

from advisor.backbones import create_backbone
from advisor.decide.advise import depth_evidence_notes, recommend_dataset
from advisor.measure.transferability import TapEvidence


def test_recommend_reports_evidence_per_tap_and_notes_contradictions(tmp_path):
    rec = recommend_dataset(EXAMPLE, cache_dir=tmp_path, num_workers=0)
    taps = [t for t in create_backbone("efficientnet_lite0").taps]
    ev = rec.profile.tap_evidence
    assert [e.tap for e in ev] == [t.name for t in taps]
    assert [e.dim for e in ev] == [t.channels for t in taps]
    assert all(0.0 <= e.knn_accuracy <= 1.0 for e in ev)
    # real ants/bees photos: the top layer separates them better than the first stage
    by = {e.tap: e for e in ev}
    assert by["pre_logits"].knn_accuracy > by["stage1"].knn_accuracy
    assert rec.decision.table == "linear-probe"  # the table's cell (R1); the policy may run another strategy

    def with_evidence(best_tap: str):
        rows = [TapEvidence(tap=e.tap, dim=e.dim, logme=0.0, knn_accuracy=0.6) for e in ev]
        rows = [r.model_copy(update={"knn_accuracy": 0.9, "logme": 1.0}) if r.tap == best_tap else r for r in rows]
        return rec.model_copy(update={"strategy": "linear-probe",
                                      "profile": rec.profile.model_copy(update={"tap_evidence": rows})})

    notes = depth_evidence_notes(with_evidence("stage4"))
    assert len(notes) == 1 and "stage4" in notes[0] and "layer probe" in notes[0] and "R1" in notes[0]
    assert depth_evidence_notes(with_evidence("pre_logits")) == []
