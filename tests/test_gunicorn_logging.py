"""LOG_LEVEL governs every line a real Gunicorn prints, access lines included."""

from __future__ import annotations

import json

import pytest
import requests

from .support.gunicorn import GunicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.mark.parametrize("level, quiet", [("WARNING", {"DEBUG", "INFO"}), ("ERROR", {"DEBUG", "INFO", "WARNING"})])
def test_no_line_below_the_log_level_reaches_the_output(vit_b32_checkpoint, tmp_path, level, quiet):
    server = GunicornProcess({"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": str(vit_b32_checkpoint),
                              "LOG_LEVEL": level}, tmp_path / "gunicorn.log")
    try:
        server.wait_healthy()
        assert requests.post(server.base + "/embed/text", json={"texts": ["a cat"]}, timeout=30).status_code == 200
        assert requests.get(server.base + "/nowhere", timeout=10).status_code == 404
    finally:
        assert server.stop() == 0
    lines = [line for line in server.output().splitlines() if line.strip()]
    severities = [json.loads(line).get("severity") for line in lines if line.startswith("{")]
    assert not quiet & set(severities), [line for line in lines if any(q in line for q in quiet)][:5]
    # Nothing unstructured either (a stray print or a library's plain-text INFO line).
    assert all(line.startswith("{") for line in lines), lines[:5]


def test_info_shows_access_lines(vit_b32_checkpoint, tmp_path):
    server = GunicornProcess({"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": str(vit_b32_checkpoint),
                              "LOG_LEVEL": "INFO"}, tmp_path / "gunicorn.log")
    try:
        server.wait_healthy()
        requests.post(server.base + "/embed/text", json={"texts": ["a cat"]}, timeout=30)
    finally:
        server.stop()
    records = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert any(r.get("logger") == "gunicorn.access" and r["severity"] == "INFO" for r in records)
