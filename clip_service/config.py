"""Every setting of the service, read from the environment in one place.

Service knobs carry the ``CLIP_`` prefix; ``PORT`` and ``LOG_LEVEL`` keep the
names Cloud Run and most platforms already use. The README's table of
environment variables mirrors the defaults below.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .images.url_policy import Allowlist, parse_ports

ENV_PREFIX = "CLIP_"
# Shorter keys can be guessed or brute-forced; 16 random characters cannot.
MIN_API_KEY_CHARS = 16


class ConfigError(ValueError):
    """Environment variables hold values the service cannot use; one problem each, all in one line."""

    def __init__(self, *problems: str):
        super().__init__("; ".join(problems))
        self.problems = problems


def _setting(default: Any, env: str | None = None, doc: str = "", minimum: float | None = None,
             maximum: float | None = None, secret: bool = False):
    """A setting; numbers must be positive unless ``minimum`` allows 0; a ``secret`` value is never printed."""
    return field(default=default, metadata={"env": env, "doc": doc, "minimum": minimum, "maximum": maximum,
                                            "secret": secret})


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
    precision: str = _setting("fp32", doc="fp32 (open_clip's vectors), bf16: on a CPU with native bfloat16 "
                              "(AVX512-BF16, AMX) the prepacked products run in bf16, ~1.6x the single images/s, "
                              "vectors within cosine 0.9999 of fp32's (else fp32, with a warning), or auto: bf16 "
                              "where the CPU has it, else fp32 without a warning")
    max_batch: int = _setting(64, doc="largest batch sent through the model in one forward pass")
    batching: bool = _setting(True, doc="merge concurrent requests' items into shared forward passes")
    batch_runners: int = _setting(2, doc="forward passes run at once per worker (one per core, each with "
                                         "CLIP_TORCH_THREADS threads)")
    batch_window_ms: float = _setting(0.0, doc="extra wait (ms) for more work before a batch runs (0 = none)",
                                      minimum=0)
    batch_dwell_ms: float = _setting(40.0, doc="longest wait (ms) of an idle runner for images other requests are "
                                     "still downloading, so they share its batch (0 = never wait)", minimum=0)
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
    # Secret: a Redis URL may carry a password (redis://:password@host).
    cache_redis_url: str = _setting("", doc="a Redis shared by every instance (redis://host:6379/0, e.g. "
                                            "Memorystore); empty: memory only", secret=True)
    # At most 1 s: a lookup slower than a forward pass saves nothing, and 50 is milliseconds written as seconds.
    cache_redis_timeout: float = _setting(0.05, doc="seconds a Redis call may take before it counts as a miss",
                                          maximum=1)
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
                                     "Authorization: Bearer <key>. With no keys (and no file) the service is open",
                             secret=True)
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
    # The zeros below mean what they mean to Gunicorn, which gets these values unchanged.
    timeout: int = _setting(60, doc="Gunicorn worker timeout (s) for a silent worker (0: never, as Gunicorn's "
                                    "timeout = 0)", minimum=0)
    graceful_timeout: int = _setting(8, doc="seconds in-flight requests get after SIGTERM (0: none, stop at once)",
                                     minimum=0)
    max_requests: int = _setting(2000, doc="a worker is recycled after about this many requests (0: never, as "
                                           "Gunicorn's max_requests = 0)", minimum=0)
    max_requests_jitter: int = _setting(200, doc="random extra requests so workers do not recycle together "
                                                 "(0: none, exactly CLIP_MAX_REQUESTS)", minimum=0)
    ready_cache_seconds: float = _setting(5.0, doc="how long a readiness probe's inference result is reused "
                                                   "(0: every probe runs one)", minimum=0)
    ready_timeout: float = _setting(10.0, doc="readiness fails when the model stays busy this long")
    port: int = _setting(8080, env="PORT", doc="port Gunicorn listens on", maximum=65535)
    log_level: str = _setting("INFO", env="LOG_LEVEL", doc="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)")

    @classmethod
    def env_name(cls, f: dataclasses.Field) -> str:
        return f.metadata.get("env") or ENV_PREFIX + f.name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from defaults, then the environment, then explicit overrides; refuse every bad one."""
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(overrides) - set(fields)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        given: dict[str, str] = {}
        unparsed: dict[str, str] = {}
        for f in fields.values():
            raw = environ.get(cls.env_name(f))
            if raw is None or raw.strip() == "":
                continue
            given[f.name] = raw.strip()
            try:
                values[f.name] = _parse(given[f.name], type(f.default))
            except ValueError:
                unparsed[f.name] = _rule(f)  # the field keeps its default, so the others are still checked
        values.update(overrides)
        given = {name: raw for name, raw in given.items() if name not in overrides}
        settings = cls(**values)
        # Every bad value at once, in the table's order: one start-up tells the operator all there is to fix.
        found = {name: reason for name, reason in unparsed.items() if name not in overrides}
        for name, reason in settings.problems():  # an unparsed value kept its (valid) default
            found.setdefault(name, reason)
        if found:
            raise ConfigError(*(settings._describe(name, found[name], given.get(name))
                                for name in fields if name in found))
        return settings

    def validate(self) -> None:
        """Raise ConfigError naming every value these settings cannot run with."""
        problems = self.problems()
        if problems:
            raise ConfigError(*(self._describe(name, reason) for name, reason in problems))

    def problems(self) -> list[tuple[str, str]]:
        """(field name, what is accepted) for each value these settings cannot run with, in the fields' order."""
        found: list[tuple[str, str]] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
                if ((value < low) if low is not None else (value <= 0)) or (high is not None and value > high):
                    found.append((f.name, _rule(f)))
        if self.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", self.device):
            found.append(("device", "expected auto, cpu, cuda or cuda:N"))
        if self.precision not in ("fp32", "bf16", "auto"):
            found.append(("precision", "expected fp32, bf16 or auto"))
        if not self.pretrained:
            # Serving random weights silently is the failure this guards against.
            found.append(("pretrained", "expected a pretrained tag or a checkpoint file, not nothing"))
        for name, parse, form in (("fetch_ports", parse_ports, "comma-separated TCP ports from 1 to 65535"),
                                  ("fetch_allow", Allowlist.parse,
                                   "comma-separated host:port pairs and CIDR blocks")):
            try:
                parse(getattr(self, name))
            except ValueError as exc:
                found.append((name, f"expected {form} ({exc})"))
        if self.cache_redis_url and not self.cache_redis_url.startswith(("redis://", "rediss://", "unix://")):
            found.append(("cache_redis_url", "expected a redis://, rediss:// or unix:// URL"))
        if not re.fullmatch(r"[ -~]+", self.fetch_user_agent):
            found.append(("fetch_user_agent", "expected printable ASCII (it is sent as an HTTP header)"))
        found.extend(self._api_keys()[1])  # a short key or an unreadable file refuses the start
        if self.max_buffered_bytes < self.max_body_bytes:
            found.append(("max_buffered_bytes", f"expected at least CLIP_MAX_BODY_BYTES ({self.max_body_bytes})"))
        if self.log_level.upper() not in _LOG_LEVELS:
            found.append(("log_level", "expected DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)"))
        first: dict[str, str] = {}
        for name, reason in found:
            first.setdefault(name, reason)  # one reason per variable: the first says what is accepted
        order = list(self.__dataclass_fields__)
        return sorted(first.items(), key=lambda problem: order.index(problem[0]))

    def api_key_list(self) -> tuple[str, ...]:
        """The API keys of CLIP_API_KEYS and CLIP_API_KEYS_FILE; raise ConfigError for a short or missing one."""
        keys, problems = self._api_keys()
        if problems:
            raise ConfigError(*(self._describe(name, reason) for name, reason in problems))
        return keys

    def _api_keys(self) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
        sources = {"api_keys": [k.strip() for k in self.api_keys.split(",") if k.strip()]}
        problems: list[tuple[str, str]] = []
        if self.api_keys_file:
            try:
                with open(self.api_keys_file, encoding="utf-8") as file:
                    lines = [line.strip() for line in file.read().splitlines()]
                sources["api_keys_file"] = [line for line in lines if line and not line.startswith("#")]
            except (OSError, UnicodeDecodeError) as exc:
                reason = (f"cannot be read ({type(exc).__name__}): expected a readable UTF-8 file of API keys, "
                          "one per line")
                problems.append(("api_keys_file", reason))
        for source, keys in sources.items():
            # Only positions and lengths: the keys themselves would end up in the platform's logs.
            short = [f"key {position} has {len(key)} characters" for position, key in enumerate(keys, 1)
                     if len(key) < MIN_API_KEY_CHARS]
            if short:
                reason = (f"{', '.join(short)}, and every API key needs at least {MIN_API_KEY_CHARS} "
                          "(make one with: openssl rand -hex 24)")
                problems.append((source, reason))
        return tuple(dict.fromkeys(key for keys in sources.values() for key in keys)), problems

    def _describe(self, name: str, reason: str, given: str | None = None) -> str:
        """One problem as ``VARIABLE='value' is invalid: reason``, a secret's value left out."""
        f = self.__dataclass_fields__[name]
        if f.metadata.get("secret"):
            shown = "(value not shown)"
        else:
            shown = repr(given if given is not None else getattr(self, name))
        return f"{self.env_name(f)}={shown} is invalid: {reason}"


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse(raw: str, kind: type) -> Any:
    """``raw`` as a ``kind``; raise ValueError when it is not one (a float must be finite)."""
    if kind is bool:
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(raw)
    value = kind(raw)
    if kind is float and not math.isfinite(value):
        raise ValueError(raw)
    return value


def _rule(f: dataclasses.Field) -> str:
    """What the setting ``f`` accepts, as the message of a refused value says it."""
    kind = type(f.default)
    if kind is bool:
        return "expected true or false (or 1/0, yes/no, on/off)"
    if kind not in (int, float):
        return f"expected a {kind.__name__}"
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if kind is int:
        low = 1 if low is None else low
        return f"expected a whole number from {low:g} to {high:g}" if high is not None \
            else f"expected a whole number, at least {low:g}"
    bound = "greater than 0" if low is None else f"at least {low:g}"
    return f"expected a number {bound}" + (f" and at most {high:g}" if high is not None else "")


def documented_settings() -> list[tuple[str, Any, str]]:
    """(env name, default, description) for every setting, for docs and tests."""
    return [(Settings.env_name(f), f.default, f.metadata["doc"]) for f in dataclasses.fields(Settings)]
