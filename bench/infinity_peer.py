"""Infinity (infinity-emb 0.0.78) as a peer in the benchmarks: an offline CLIP folder, its server, its requests.

Infinity is installed in a virtual environment of its own, outside the repository (its pins, torch and
transformers, clash with the service's):

    python -m venv /tmp/infinity-venv
    /tmp/infinity-venv/bin/pip install "infinity-emb[server,torch,vision]==0.0.78" "numpy<2" \
        torch==2.14.1 torchvision==0.29.1 aiohttp

(aiohttp: Infinity fetches image URLs with it, and its extras do not install it; without it every image
request answers 500.)

Nothing of it is committed; a script takes the venv's path (``--infinity PATH``) and skips the peer without one.
Its model is a Hugging Face-format CLIP ViT-B/32 with fixed-seed random weights (transformers' CLIPConfig
defaults: ViT-B/32 with quick_gelu, the service's default architecture), written by the venv's own
transformers with a tokenizer built here from open_clip's BPE vocabulary (the hub is out of reach): the
same vocabulary, merges and special tokens as open_clip's SimpleTokenizer.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.gunicorn import free_port  # noqa: E402

# Run by the venv's python: transformers writes the model and the processor (CLIPImageProcessor's defaults
# are CLIP's 224 px resize, crop and normalisation).
_WRITE_MODEL = r"""
import sys, torch
from transformers import CLIPConfig, CLIPModel, CLIPImageProcessor, CLIPProcessor, CLIPTokenizerFast
folder = sys.argv[1]
torch.manual_seed(0)
CLIPModel(CLIPConfig()).save_pretrained(folder)
tokenizer = CLIPTokenizerFast(vocab_file=folder + "/vocab.json", merges_file=folder + "/merges.txt")
CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
"""


def _bpe_files(folder: Path) -> None:
    """vocab.json and merges.txt as open_clip's SimpleTokenizer builds its vocabulary (tokenizer.py)."""
    import open_clip.tokenizer as oc

    merges = gzip.open(oc.default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(oc.bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")


def model_dir(venv: Path, folder: Path) -> Path:
    """The Hugging Face CLIP folder Infinity serves, written once into ``folder``."""
    if (folder / "model.safetensors").is_file() and (folder / "preprocessor_config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    _bpe_files(folder)
    subprocess.run([str(venv / "bin" / "python"), "-c", _WRITE_MODEL, str(folder)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return folder


class InfinityServer:
    """``infinity_emb v2`` on 127.0.0.1 serving ``model`` in bf16 on the CPU, with the process-tree CPU time."""

    def __init__(self, venv: Path, model: Path, *, batch_size: int = 32, dtype: str = "bfloat16",
                 log_path: Path | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.model = str(model)
        self._log = open(log_path or os.devnull, "wb")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
               "DO_NOT_TRACK": "1",
               # Its default list of refused media addresses with the loopback range taken out: the photos are
               # served from 127.0.0.1 (private ranges stay refused).
               "INFINITY_MEDIA_URL_BLACKLIST": "0.0.0.0/8;10.0.0.0/8;100.64.0.0/10;169.254.0.0/16;172.16.0.0/12;"
                                               "192.168.0.0/16;224.0.0.0/4;::/128;fc00::/7;fe80::/10;ff00::/8"}
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", self.model, "--served-model-name", "clip",
             "--engine", "torch", "--dtype", dtype, "--device", "cpu", "--batch-size", str(batch_size),
             "--host", "127.0.0.1", "--port", str(self.port), "--no-vector-disk-cache", "--log-level", "warning"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 300) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity_emb exited {self.proc.returncode}")
            try:
                if requests.get(self.base + "/health", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"infinity_emb not healthy after {timeout} s")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server and every process under it (live and reaped)."""
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (all threads, user + system) of ``pid`` and its descendants, with the children it reaped."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


def post(session: requests.Session, base: str, inputs: list[str], modality: str) -> bool:
    """One /embeddings request (OpenAI's shape; ``modality`` "text" or "image", images as URLs)."""
    response = session.post(base + "/embeddings", json={"model": "clip", "input": inputs, "modality": modality},
                            timeout=300)
    return response.status_code == 200 and len(response.json().get("data", ())) == len(inputs)


if __name__ == "__main__":  # python bench/infinity_peer.py VENV FOLDER: write the model, start, embed one text
    venv = Path(sys.argv[1])
    peer = InfinityServer(venv, model_dir(venv, Path(sys.argv[2])), log_path=Path("/dev/stderr"))
    try:
        print("ready in", peer.wait_healthy())
        print(post(requests.Session(), peer.base, ["a photo of a cat"], "text"))
    finally:
        peer.stop()
