"""Every setting of the service, read from the environment in one place.

Service knobs carry the ``CLIP_`` prefix; ``PORT`` and ``LOG_LEVEL`` keep the
names Cloud Run and most platforms already use. The README's table of
environment variables mirrors the defaults below.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .images.url_policy import Allowlist, parse_ports

ENV_PREFIX = "CLIP_"
# Shorter keys can be guessed or brute-forced; 16 random characters cannot.
MIN_API_KEY_CHARS = 16


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _setting(default: Any, env: str | None = None, doc: str = "", minimum: float | None = None):
    """A setting; numbers must be positive unless ``minimum`` allows more (e.g. 0)."""
    return field(default=default, metadata={"env": env, "doc": doc, "minimum": minimum})


@dataclass(frozen=True)
class Settings:
    """Typed settings; ``Settings.from_env()`` is the only reader of os.environ."""

    # --- model -------------------------------------------------------------
    model_name: str = _setting("ViT-B-32", env="CLIP_MODEL", doc="open_clip model name (or hf-hub:/local-dir: spec)")
    pretrained: str = _setting(
        "laion400m_e32", doc="open_clip pretrained tag, or a path to a local checkpoint file"
    )
    device: str = _setting("auto", doc="auto, cpu or cuda (auto picks CUDA when present)")
    cache_dir: str = _setting("", doc="where open_clip caches downloaded weights ('' = its default)")
    onednn_prepack: bool = _setting(True, doc="on CPU, run the transformers' matrix products through oneDNN with "
                                    "weights prepacked at load (same vectors, 1.2-1.7x faster)")
    max_batch: int = _setting(64, doc="largest batch sent through the model in one forward pass")
    batching: bool = _setting(True, doc="merge concurrent requests' items into shared forward passes")
    batch_runners: int = _setting(2, doc="forward passes run at once per worker (one per core, each with "
                                         "CLIP_TORCH_THREADS threads)")
    batch_window_ms: float = _setting(0.0, doc="extra wait (ms) for more work before a batch runs (0 = none)",
                                      minimum=0)
    batch_max_queue: int = _setting(512, doc="items waiting for the model per worker before 503 + Retry-After")

    # --- request limits ----------------------------------------------------
    max_texts: int = _setting(256, doc="most texts in one request")
    max_urls: int = _setting(64, doc="most image URLs in one request")
    max_text_chars: int = _setting(10_000, doc="most characters in one text")
    max_url_chars: int = _setting(2048, doc="most characters in one URL")
    # Sized for images in the body: a base64 image of fetch_max_bytes (20 MiB) is 26.7 MiB.
    max_body_bytes: int = _setting(32 * 1024 * 1024, doc="largest request body (bytes)")

    # --- zero-shot labelling and ranking (/classify, /rank) --------------------
    max_labels: int = _setting(1000, doc="most candidate labels in one /classify request")
    max_templates: int = _setting(100, doc="most prompt templates in one /classify request's list")
    max_label_chars: int = _setting(300, doc="most characters in one label or template")
    max_label_texts: int = _setting(5_000, doc="most labels x templates in one /classify request (each is a text "
                                               "through the model unless its label vector is cached; 5,000 take "
                                               "about 35 s on 2 vCPU, within a 60 s request timeout)")
    label_cache_mb: int = _setting(32, doc="MiB of ensembled label vectors kept per worker (a 512-d vector is "
                                           "2 KiB: 32 MiB holds about 16,000); 0 keeps none", minimum=0)

    # --- the vector cache (cache/) ---------------------------------------------
    cache_mb: int = _setting(64, doc="MiB of vectors kept per worker in memory (a 512-d vector and its key take "
                                     "about 2.2 KiB: 64 MiB holds about 29,000); 0 turns the cache off", minimum=0)
    cache_redis_url: str = _setting("", doc="a Redis shared by every instance (redis://host:6379/0, e.g. "
                                            "Memorystore); empty: memory only")
    cache_redis_timeout: float = _setting(0.05, doc="seconds a Redis call may take before it counts as a miss")
    cache_ttl_seconds: int = _setting(604_800, doc="how long Redis keeps a vector (7 days); 0 keeps it until "
                                                   "Redis evicts it", minimum=0)

    # --- image fetching ----------------------------------------------------
    fetch_connect_timeout: float = _setting(3.0, doc="seconds to open a connection to an image host")
    fetch_read_timeout: float = _setting(10.0, doc="seconds to wait for each read from an image host")
    fetch_concurrency: int = _setting(8, doc="downloads in flight per request")
    fetch_max_bytes: int = _setting(20 * 1024 * 1024, doc="largest image download (bytes)")
    jpeg_draft: bool = _setting(True, doc="decode large JPEGs at a reduced scale (>= 2x the model input)")
    max_image_pixels: int = _setting(50_000_000, doc="largest image (width x height) that is decoded")
    decode_budget_mb: int = _setting(400, doc="MiB of images being decoded at once per worker: each decode "
                                              "reserves its peak (width x height x 3-16 bytes by mode) before it "
                                              "starts, and waits its turn within the request's deadline")
    fetch_user_agent: str = _setting("clip-service/1.0", doc="User-Agent sent to image hosts")
    fetch_total_timeout: float = _setting(20.0, doc="seconds one image may take in all (connect, redirects, reads)")
    fetch_request_timeout: float = _setting(30.0, doc="seconds all the images of one request may take")
    fetch_max_redirects: int = _setting(3, doc="redirects followed per image (0 follows none)", minimum=0)
    fetch_worker_concurrency: int = _setting(16, doc="downloads in flight per worker, all requests together")
    fetch_ports: str = _setting("80,443", doc="comma-separated ports image URLs may use")
    fetch_allow: str = _setting("", doc="comma-separated host:port pairs and CIDR blocks exempt from the "
                                        "private-address block (and the port list)")

    # --- access --------------------------------------------------------------
    api_keys: str = _setting("", doc="comma-separated API keys, each at least 16 characters; clients send "
                                     "Authorization: Bearer <key>. With no keys (and no file) the service is open")
    api_keys_file: str = _setting("", doc="a file of API keys, one per line (# comments and blank lines ignored), "
                                          "e.g. a Secret Manager secret mounted as a file; adds to CLIP_API_KEYS")
    public_docs: bool = _setting(True, doc="with API keys on, /openapi.json, /docs and the demo page still answer "
                                           "without a key (they hold no data)")
    public_metrics: bool = _setting(False, doc="with API keys on, /metrics answers without a key (it then counts "
                                               "no requests by key id)")
    # --- Weaviate (web/weaviate.py) ------------------------------------------
    weaviate: bool = _setting(False, doc="serve Weaviate's multi2vec-clip inference API at the root (POST /vectorize, "
                                         "GET /meta, /.well-known/live and /.well-known/ready); off by default: "
                                         "Weaviate sends no credentials")
    weaviate_public: bool = _setting(False, doc="with API keys set, let /vectorize and /meta through without one "
                                                "(Weaviate cannot send a key; the /.well-known probes are always "
                                                "open); only on a private network")

    # --- process -----------------------------------------------------------
    torch_threads: int = _setting(1, doc="torch intra-op threads per forward pass")
    workers: int = _setting(1, doc="Gunicorn worker processes")
    threads: int = _setting(8, doc="request threads per Gunicorn worker (gthread)")
    # A request reaches a thread only once it has all arrived (clip_service/ops/worker.py).
    header_timeout: float = _setting(10.0, doc="seconds for a request line and headers to arrive, from "
                                               "their first byte (then 408); also the body's head start")
    body_min_rate: int = _setting(32 * 1024, doc="bytes/s a request body must average after that head "
                                                 "start (then 408); 32 MiB may take up to 17 minutes")
    max_connections: int = _setting(1000, doc="open connections per worker; past it the stalest waiting "
                                              "one is dropped")
    max_buffered_bytes: int = _setting(256 * 1024 * 1024, doc="request bodies held in memory per worker, "
                                       "arriving or in service; past it the stalest arriving one gets 503")
    timeout: int = _setting(60, doc="Gunicorn worker timeout (s) for a silent worker")
    graceful_timeout: int = _setting(8, doc="seconds in-flight requests get after SIGTERM")
    max_requests: int = _setting(2000, doc="a worker is recycled after about this many requests")
    max_requests_jitter: int = _setting(200, doc="random extra requests so workers do not recycle together")
    ready_cache_seconds: float = _setting(5.0, doc="how long a readiness probe's inference result is reused")
    ready_timeout: float = _setting(10.0, doc="readiness fails when the model stays busy this long")
    port: int = _setting(8080, env="PORT", doc="port Gunicorn listens on")
    log_level: str = _setting("INFO", env="LOG_LEVEL", doc="DEBUG, INFO, WARNING, ERROR")

    @classmethod
    def env_name(cls, f: dataclasses.Field) -> str:
        return f.metadata.get("env") or ENV_PREFIX + f.name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from defaults, then the environment, then explicit overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = cls.env_name(f)
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(name, raw.strip(), type(f.default))
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"CLIP_DEVICE must be auto, cpu or cuda, not {self.device!r}")
        if not self.pretrained:
            # Serving random weights silently is the failure this guards against.
            raise ConfigError("CLIP_PRETRAINED must name a pretrained tag or a checkpoint file")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                minimum = f.metadata.get("minimum")
                if (value < minimum) if minimum is not None else (value <= 0):
                    bound = "positive" if minimum is None else f"at least {minimum:g}"
                    raise ConfigError(f"{self.env_name(f)} must be {bound}, not {value}")
        for name, parse in (("fetch_ports", parse_ports), ("fetch_allow", Allowlist.parse)):
            try:
                parse(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(f"CLIP_{name.upper()} is not valid: {exc}") from None
        self.api_key_list()  # a short key or an unreadable file refuses the start
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ConfigError("CLIP_MAX_BUFFERED_BYTES must be at least CLIP_MAX_BODY_BYTES")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {self.log_level!r}")

    def api_key_list(self) -> tuple[str, ...]:
        """The API keys of CLIP_API_KEYS and CLIP_API_KEYS_FILE; raise ConfigError for a short or missing one."""
        sources = {ENV_PREFIX + "API_KEYS": [k.strip() for k in self.api_keys.split(",") if k.strip()]}
        if self.api_keys_file:
            try:
                with open(self.api_keys_file, encoding="utf-8") as file:
                    lines = [line.strip() for line in file.read().splitlines()]
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"CLIP_API_KEYS_FILE={self.api_keys_file!r} cannot be read "
                                  f"({type(exc).__name__}); it must be a UTF-8 file of keys, one per line") from None
            sources[ENV_PREFIX + "API_KEYS_FILE"] = [line for line in lines if line and not line.startswith("#")]
        for source, keys in sources.items():
            for position, key in enumerate(keys, 1):
                if len(key) < MIN_API_KEY_CHARS:
                    # The key itself is never printed: it would end up in the platform's logs.
                    raise ConfigError(f"{source}: key {position} has {len(key)} characters; every API key needs "
                                      f"at least {MIN_API_KEY_CHARS} (make one with: openssl rand -hex 24)")
        return tuple(dict.fromkeys(key for keys in sources.values() for key in keys))


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def documented_settings() -> list[tuple[str, Any, str]]:
    """(env name, default, description) for every setting, for docs and tests."""
    return [(Settings.env_name(f), f.default, f.metadata["doc"]) for f in dataclasses.fields(Settings)]
