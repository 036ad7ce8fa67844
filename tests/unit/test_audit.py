"""The audit file: JSON lines, rotated by size, never breaking a session."""

from __future__ import annotations

import json

import pytest

from marionet.guard.audit import AuditLog


def test_lines_are_json_and_rotate_by_size(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=4096, keep=2)
    for i in range(200):
        log.write({"event": "deny", "who": "alice", "n": i, "reason": "x" * 40})
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name in files:
        text = (tmp_path / name).read_text()
        assert 0 < len(text.encode()) <= 4096
        for line in text.splitlines():
            rec = json.loads(line)
            assert rec["event"] == "deny" and rec["t"].endswith("Z")
    last = [json.loads(x)["n"] for x in path.read_text().splitlines()]
    assert last[-1] == 199 and last == list(range(last[0], 200))  # newest file, in order
    assert len(log.recent) == 200


def test_a_failing_disk_is_counted_not_raised(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    log._fh.close()  # what a vanished file system looks like to write()
    log._fh = open("/dev/full", "w")
    log.write({"event": "deny"})
    log.write({"event": "deny"})
    assert log.write_errors == 2 and len(log.recent) == 2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        AuditLog(None, max_bytes=10)
    with pytest.raises(ValueError):
        AuditLog(None, keep=0)
