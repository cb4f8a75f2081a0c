"""The digest memo: a warm pass stats files instead of hashing them, and never serves a stale digest."""

from __future__ import annotations

import os
import time
from pathlib import Path

import advisor.data.digests as digests
from advisor.data.digests import DigestMemo
from advisor.data.imagefile import file_digest
from advisor.data.scan import scan_dataset
from advisor.measure.features import extract_features


def _files(tmp_path: Path, n: int = 4, *, age: float = 60.0) -> list[Path]:
    out = []
    for i in range(n):
        f = tmp_path / "imgs" / f"f{i}.bin"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(bytes([i]) * (100 + i))
        past = time.time() - age
        os.utime(f, (past, past))
        out.append(f)
    return out


def test_second_memo_remembers_every_unchanged_file(tmp_path):
    files = _files(tmp_path)
    first = DigestMemo(tmp_path / "cache")
    assert [first.digest(f) for f in files] == [file_digest(f) for f in files]
    assert first.hashed == 4 and first.remembered == 0
    first.save()
    second = DigestMemo(tmp_path / "cache")
    assert [second.digest(f) for f in files] == [file_digest(f) for f in files]
    assert second.hashed == 0 and second.remembered == 4


def test_a_changed_file_is_hashed_again(tmp_path):
    files = _files(tmp_path)
    memo = DigestMemo(tmp_path / "cache")
    for f in files:
        memo.digest(f)
    memo.save()
    files[1].write_bytes(b"other bytes, same name")
    past = time.time() - 30
    os.utime(files[1], (past, past))
    again = DigestMemo(tmp_path / "cache")
    assert again.digest(files[1]) == file_digest(files[1])
    assert again.hashed == 1


def test_same_size_same_mtime_rewrite_is_caught_by_ctime(tmp_path):
    files = _files(tmp_path)
    memo = DigestMemo(tmp_path / "cache")
    memo.digest(files[0])
    memo.save()
    st = os.stat(files[0])
    time.sleep(0.01)
    files[0].write_bytes(b"\xff" * st.st_size)  # same size; mtime put back as it was
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    again = DigestMemo(tmp_path / "cache")
    assert again.digest(files[0]) == file_digest(files[0])
    assert again.hashed == 1


def test_a_file_written_just_now_is_not_remembered(tmp_path):
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"abc")
    memo = DigestMemo(tmp_path / "cache")
    memo.digest(f)
    memo.save()
    again = DigestMemo(tmp_path / "cache")
    again.digest(f)
    assert again.hashed == 1 and again.remembered == 0


def test_a_damaged_memo_is_ignored_and_counted(tmp_path):
    files = _files(tmp_path)
    memo = DigestMemo(tmp_path / "cache")
    for f in files:
        memo.digest(f)
    memo.save()
    (memo_file,) = (tmp_path / "cache" / "digests").iterdir()
    memo_file.write_text(memo_file.read_text().replace(file_digest(files[2]), "0" * 32))
    again = DigestMemo(tmp_path / "cache")
    assert [again.digest(f) for f in files] == [file_digest(f) for f in files]
    assert again.hashed == 4 and again.ignored == [str(memo_file)]


def test_warm_extraction_hashes_no_file(tiny_dataset, tmp_path, monkeypatch):
    from advisor.backbones import create_backbone

    for f in tiny_dataset.rglob("*.png"):
        past = time.time() - 60
        os.utime(f, (past, past))
    scan = scan_dataset(tiny_dataset)
    bb = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    kw = dict(cache_dir=tmp_path / "c", num_workers=0, batch_size=4)
    extract_features(scan.samples, bb, **kw)
    hashed: list[str] = []
    monkeypatch.setattr(digests, "file_digest", lambda p: hashed.append(p) or file_digest(p))
    warm = extract_features(scan.samples, bb, **kw)
    assert warm.summary.from_cache == len(scan.samples)
    assert hashed == []
