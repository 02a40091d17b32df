"""Every setting of the service, read from the environment in one place.

Settings come in groups, one per concern (``settings.model``, ``.batching``,
``.limits``, ``.cache``, ``.fetch``, ``.access``, ``.server``); each group is a
frozen dataclass that holds its defaults, and ``settings.fetch`` is the image
fetcher's own ``FetchLimits``. Service knobs carry the ``CLIP_`` prefix;
``PORT`` and ``LOG_LEVEL`` keep the names Cloud Run and most platforms already
use. Every setting also has a flat *key* (``max_texts``, ``fetch_allow``): the
variable's name without its prefix, which ``from_env``'s overrides and the
app factory's ``test_config`` take.

The engine below is our own (about 80 lines) rather than environs or
pydantic-settings: both would need a translation layer as large as it to keep
the one-line refusal (each variable, its value unless secret, what is accepted)
that operators and tests rely on.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .images.limits import FetchLimits
from .images.url_policy import Allowlist, parse_ports

ENV_PREFIX = "CLIP_"
# Shorter keys can be guessed or brute-forced; 16 random characters cannot.
MIN_API_KEY_CHARS = 16


class ConfigError(ValueError):
    """Environment variables hold values the service cannot use; one problem each, all in one line."""

    def __init__(self, *problems: str):
        super().__init__("; ".join(problems))
        self.problems = problems


def _setting(default: Any, doc: str, *, key: str | None = None, env: str | None = None,
             minimum: float | None = None, maximum: float | None = None, secret: bool = False):
    """A setting's default and how it is described; numbers must be positive unless ``minimum`` allows 0."""
    return field(default=default, metadata=_about(doc, key=key, env=env, minimum=minimum, maximum=maximum,
                                                  secret=secret))


def _about(doc: str, *, key: str | None = None, env: str | None = None, minimum: float | None = None,
           maximum: float | None = None, secret: bool = False) -> dict:
    return {"doc": doc, "key": key, "env": env, "minimum": minimum, "maximum": maximum, "secret": secret}


@dataclass(frozen=True)
class ModelSettings:
    """Which model runs, where, and in what arithmetic."""

    name: str = _setting("ViT-B-32", "open_clip model name (or hf-hub:/local-dir: spec)", key="model_name",
                         env="CLIP_MODEL")
    pretrained: str = _setting("laion400m_e32", "open_clip pretrained tag, or a path to a local checkpoint file")
    device: str = _setting("auto", "auto, cpu or cuda (auto picks CUDA when present)")
    cache_dir: str = _setting("", "where open_clip caches downloaded weights ('' = its default)")
    tokenizer: str = _setting("", "a local directory holding the model's Hugging Face tokenizer (tokenizer.json), "
                                  "for SigLIP and SigLIP2, whose tokenizers live on the model hub ('' = the hub, "
                                  "through its cache); other models use open_clip's own and ignore it")
    onednn_prepack: bool = _setting(True, "on CPU, run the transformers' matrix products through oneDNN with "
                                          "weights prepacked at load (same vectors, 1.2-1.7x faster)")
    # auto (#28): bf16 is the faster answer wherever the CPU multiplies it in hardware, and every
    # answer names the precision in force, so a vector that differs from open_clip's says why.
    precision: str = _setting("auto", "auto: bf16 where the CPU has native bfloat16 products (AVX512-BF16, AMX), "
                                      "else fp32 without a warning; fp32: open_clip's arithmetic (its vectors to "
                                      "~3e-7); bf16: the prepacked products in bf16 with fp32 sums, ~1.6x the single "
                                      "images/s, vectors within cosine 0.9999 of fp32's (else fp32, with a warning)")


@dataclass(frozen=True)
class BatchingSettings:
    """How items reach the model: batch sizes, shared forward passes, threads."""

    max_batch: int = _setting(64, "largest batch sent through the model in one forward pass")
    enabled: bool = _setting(True, "merge concurrent requests' items into shared forward passes", key="batching")
    runners: int = _setting(2, "forward passes run at once per worker (one per core, each with "
                               "CLIP_TORCH_THREADS threads)", key="batch_runners")
    window_ms: float = _setting(0.0, "extra wait (ms) for more work before a batch runs (0 = none)",
                                key="batch_window_ms", minimum=0)
    dwell_ms: float = _setting(40.0, "longest wait (ms) of an idle runner for images other requests are still "
                                     "downloading, so they share its batch (0 = never wait)",
                               key="batch_dwell_ms", minimum=0)
    max_queue: int = _setting(512, "items waiting for the model per worker before 503 + Retry-After",
                              key="batch_max_queue")
    torch_threads: int = _setting(1, "torch intra-op threads per forward pass")


@dataclass(frozen=True)
class LimitSettings:
    """What one request may hold (the URL length is a fetch limit: ``settings.fetch.max_url_chars``)."""

    max_texts: int = _setting(256, "most texts in one request")
    max_urls: int = _setting(64, "most image URLs in one request")
    max_text_chars: int = _setting(10_000, "most characters in one text")
    # Sized for images in the body: a base64 image of fetch_max_bytes (20 MiB) is 26.7 MiB.
    max_body_bytes: int = _setting(32 * 1024 * 1024, "largest request body (bytes)")
    max_labels: int = _setting(1000, "most candidate labels in one /classify request")
    max_templates: int = _setting(100, "most prompt templates in one /classify request's list")
    max_label_chars: int = _setting(300, "most characters in one label or template")
    max_label_texts: int = _setting(5_000, "most labels x templates in one /classify request (each is a text "
                                           "through the model unless its label vector is cached; 5,000 take "
                                           "about 35 s on 2 vCPU, within a 60 s request timeout)")


@dataclass(frozen=True)
class CacheSettings:
    """The vector cache (cache/) and the ensembled label vectors of zero-shot requests."""

    mb: int = _setting(64, "MiB of vectors kept per worker in memory (a 512-d vector and its key take about "
                           "2.2 KiB: 64 MiB holds about 29,000); 0 turns the cache off", key="cache_mb", minimum=0)
    # Secret: a Redis URL may carry a password (redis://:password@host).
    redis_url: str = _setting("", "a Redis shared by every instance (redis://host:6379/0, e.g. Memorystore); "
                                  "empty: memory only", key="cache_redis_url", secret=True)
    # At most 1 s: a lookup slower than a forward pass saves nothing, and 50 is milliseconds written as seconds.
    redis_timeout: float = _setting(0.05, "seconds a Redis call may take before it counts as a miss",
                                    key="cache_redis_timeout", maximum=1)
    ttl_seconds: int = _setting(604_800, "how long Redis keeps a vector (7 days); 0 keeps it until Redis "
                                         "evicts it", key="cache_ttl_seconds", minimum=0)
    label_mb: int = _setting(32, "MiB of ensembled label vectors kept per worker (a 512-d vector is 2 KiB: "
                                 "32 MiB holds about 16,000); 0 keeps none", key="label_cache_mb", minimum=0)


# FetchLimits is the fetcher's own type (images/ knows nothing of the environment):
# its defaults live there, and its variables and descriptions here.
_FETCH = {
    "connect_timeout": _about("seconds to open a connection to an image host"),
    "read_timeout": _about("seconds to wait for each read from an image host"),
    "total_timeout": _about("seconds one image may take in all (connect, redirects, reads)"),
    "request_timeout": _about("seconds all the images of one request may take"),
    "max_bytes": _about("largest image download (bytes)"),
    "max_image_pixels": _about("largest image (width x height) that is decoded", key="max_image_pixels"),
    "concurrency": _about("downloads in flight per request"),
    "worker_concurrency": _about("downloads in flight per worker, all requests together"),
    "max_redirects": _about("redirects followed per image (0 follows none)", minimum=0),
    "user_agent": _about("User-Agent sent to image hosts"),
    "ports": _about("comma-separated ports image URLs may use"),
    "allow": _about("comma-separated host:port pairs and CIDR blocks exempt from the private-address block "
                    "(and the port list)"),
    "max_url_chars": _about("most characters in one URL", key="max_url_chars"),
    "jpeg_draft": _about("decode large JPEGs at a reduced scale (>= 2x the model input)", key="jpeg_draft"),
    "decode_budget_mb": _about("MiB of images being decoded at once per worker: each decode reserves its peak "
                               "(width x height x 3-16 bytes by mode) before it starts, and waits its turn "
                               "within the request's deadline", key="decode_budget_mb"),
}


@dataclass(frozen=True)
class AccessSettings:
    """Who may call what: API keys, the routes open without one, and Weaviate's API."""

    api_keys: str = _setting("", "comma-separated API keys, each at least 16 characters; clients send "
                                 "Authorization: Bearer <key>. With no keys (and no file) the service is open",
                             secret=True)
    api_keys_file: str = _setting("", "a file of API keys, one per line (# comments and blank lines ignored), "
                                      "e.g. a Secret Manager secret mounted as a file; adds to CLIP_API_KEYS")
    public_docs: bool = _setting(True, "with API keys on, /openapi.json, /docs and the demo page still answer "
                                       "without a key (they hold no data)")
    public_metrics: bool = _setting(False, "with API keys on, /metrics answers without a key (it then counts no "
                                           "requests by key id)")
    weaviate: bool = _setting(False, "serve Weaviate's multi2vec-clip inference API at the root (POST /vectorize, "
                                     "GET /meta, /.well-known/live and /.well-known/ready); off by default: "
                                     "Weaviate sends no credentials")
    weaviate_public: bool = _setting(False, "with API keys set, let /vectorize and /meta through without one "
                                            "(Weaviate cannot send a key; the /.well-known probes are always "
                                            "open); only on a private network")


@dataclass(frozen=True)
class ServerSettings:
    """Gunicorn and the buffering worker: processes, threads, deadlines, recycling, probes, port, logs."""

    workers: int = _setting(1, "Gunicorn worker processes")
    threads: int = _setting(8, "request threads per Gunicorn worker (gthread)")
    # A request reaches a thread only once it has all arrived (clip_service/ops/worker.py).
    header_timeout: float = _setting(10.0, "seconds for a request line and headers to arrive, from their first "
                                           "byte (then 408); also the body's head start")
    body_min_rate: int = _setting(32 * 1024, "bytes/s a request body must average after that head start (then "
                                             "408); 32 MiB may take up to 17 minutes")
    max_connections: int = _setting(1000, "open connections per worker; past it the stalest waiting one is "
                                          "dropped")
    max_buffered_bytes: int = _setting(256 * 1024 * 1024, "request bodies held in memory per worker, arriving or "
                                                          "in service; past it the stalest arriving one gets 503")
    # The zeros below mean what they mean to Gunicorn, which gets these values unchanged.
    timeout: int = _setting(60, "Gunicorn worker timeout (s) for a silent worker (0: never, as Gunicorn's "
                                "timeout = 0)", minimum=0)
    graceful_timeout: int = _setting(8, "seconds in-flight requests get after SIGTERM (0: none, stop at once)",
                                     minimum=0)
    # A recycle stops a worker's traffic for ~1.5 s under load (drain, exit, fork, warm-up) and costs
    # 0.4-1 CPU s (BENCHMARKS.md, #28): at 2,000 that was 2-5% of a busy worker's throughput. The soak
    # (bench/memory.py) finds the RSS flat after the first 500 requests, so 20,000 still bounds the growth.
    max_requests: int = _setting(20_000, "a worker is recycled after about this many requests (0: never, as "
                                         "Gunicorn's max_requests = 0)", minimum=0)
    max_requests_jitter: int = _setting(2_000, "random extra requests so workers do not recycle together (0: none, "
                                               "exactly CLIP_MAX_REQUESTS)", minimum=0)
    ready_cache_seconds: float = _setting(5.0, "how long a readiness probe's inference result is reused (0: every "
                                               "probe runs one)", minimum=0)
    ready_timeout: float = _setting(10.0, "readiness fails when the model stays busy this long")
    port: int = _setting(8080, "port Gunicorn listens on", env="PORT", maximum=65535)
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)", env="LOG_LEVEL")


@dataclass(frozen=True)
class Spec:
    """One setting: where it lives (``group.attr``), its flat key, variable, default and rules."""

    group: str
    attr: str
    key: str
    env: str
    default: Any
    doc: str
    minimum: float | None
    maximum: float | None
    secret: bool


_GROUPS = {"model": ModelSettings, "batching": BatchingSettings, "limits": LimitSettings, "cache": CacheSettings,
           "fetch": FetchLimits, "access": AccessSettings, "server": ServerSettings}


def _specs() -> tuple[Spec, ...]:
    specs = []
    for group, kind in _GROUPS.items():
        for f in dataclasses.fields(kind):
            about = _FETCH[f.name] if kind is FetchLimits else f.metadata
            key = about["key"] or (f"fetch_{f.name}" if kind is FetchLimits else f.name)
            specs.append(Spec(group, f.name, key, about["env"] or ENV_PREFIX + key.upper(), f.default,
                              about["doc"], about["minimum"], about["maximum"], about["secret"]))
    return tuple(specs)


SPECS = _specs()
_BY_KEY = {spec.key: spec for spec in SPECS}
# The flat names that from_env's overrides and the app factory's test_config take.
SETTING_KEYS = frozenset(_BY_KEY)


@dataclass(frozen=True)
class Settings:
    """Typed settings in groups; ``Settings.from_env()`` is the only reader of os.environ."""

    model: ModelSettings = field(default_factory=ModelSettings)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    fetch: FetchLimits = field(default_factory=FetchLimits)
    access: AccessSettings = field(default_factory=AccessSettings)
    server: ServerSettings = field(default_factory=ServerSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from defaults, then the environment, then explicit overrides (by key); refuse every bad one."""
        environ = os.environ if environ is None else environ
        unknown = set(overrides) - set(_BY_KEY)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        given: dict[str, str] = {}
        unparsed: dict[str, str] = {}
        for spec in SPECS:
            raw = environ.get(spec.env)
            if raw is None or raw.strip() == "" or spec.key in overrides:
                continue
            given[spec.key] = raw.strip()
            try:
                values[spec.key] = _parse(given[spec.key], type(spec.default))
            except ValueError:
                unparsed[spec.key] = _rule(spec)  # the setting keeps its default, so the others are still checked
        settings = cls.of(**values, **overrides)
        # Every bad value at once, in the table's order: one start-up tells the operator all there is to fix.
        found = dict(unparsed)
        for key, reason in settings.problems():  # an unparsed value kept its (valid) default
            found.setdefault(key, reason)
        if found:
            raise ConfigError(*(settings._describe(spec.key, found[spec.key], given.get(spec.key))
                                for spec in SPECS if spec.key in found))
        return settings

    @classmethod
    def of(cls, **values: Any) -> "Settings":
        """Settings with the defaults, less the values given by key (unchecked: see ``validate``)."""
        return cls().replace(**values)

    def replace(self, **values: Any) -> "Settings":
        """These settings with the values given by key replaced (unchecked: see ``validate``)."""
        unknown = set(values) - set(_BY_KEY)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        changes: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            changes.setdefault(_BY_KEY[key].group, {})[_BY_KEY[key].attr] = value
        return dataclasses.replace(self, **{group: dataclasses.replace(getattr(self, group), **attrs)
                                            for group, attrs in changes.items()})

    def value(self, key: str) -> Any:
        """The value of the setting ``key`` (e.g. ``max_texts``)."""
        spec = _BY_KEY[key]
        return getattr(getattr(self, spec.group), spec.attr)

    def validate(self) -> None:
        """Raise ConfigError naming every value these settings cannot run with."""
        problems = self.problems()
        if problems:
            raise ConfigError(*(self._describe(key, reason) for key, reason in problems))

    def problems(self) -> list[tuple[str, str]]:
        """(key, what is accepted) for each value these settings cannot run with, in the table's order."""
        found: list[tuple[str, str]] = []
        for spec in SPECS:
            value = self.value(spec.key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                low, high = spec.minimum, spec.maximum
                if ((value < low) if low is not None else (value <= 0)) or (high is not None and value > high):
                    found.append((spec.key, _rule(spec)))
        model, fetch = self.model, self.fetch
        if model.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", model.device):
            found.append(("device", "expected auto, cpu, cuda or cuda:N"))
        if model.precision not in ("fp32", "bf16", "auto"):
            found.append(("precision", "expected fp32, bf16 or auto"))
        if not model.pretrained:
            # Serving random weights silently is the failure this guards against.
            found.append(("pretrained", "expected a pretrained tag or a checkpoint file, not nothing"))
        for key, value, parse, form in (
                ("fetch_ports", fetch.ports, parse_ports, "comma-separated TCP ports from 1 to 65535"),
                ("fetch_allow", fetch.allow, Allowlist.parse, "comma-separated host:port pairs and CIDR blocks")):
            try:
                parse(value)
            except ValueError as exc:
                found.append((key, f"expected {form} ({exc})"))
        if self.cache.redis_url and not self.cache.redis_url.startswith(("redis://", "rediss://", "unix://")):
            found.append(("cache_redis_url", "expected a redis://, rediss:// or unix:// URL"))
        if not re.fullmatch(r"[ -~]+", fetch.user_agent):
            found.append(("fetch_user_agent", "expected printable ASCII (it is sent as an HTTP header)"))
        found.extend(self._api_keys()[1])  # a short key or an unreadable file refuses the start
        if self.server.max_buffered_bytes < self.limits.max_body_bytes:
            found.append(("max_buffered_bytes", f"expected at least CLIP_MAX_BODY_BYTES "
                                                f"({self.limits.max_body_bytes})"))
        if self.server.log_level.upper() not in _LOG_LEVELS:
            found.append(("log_level", "expected DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)"))
        first: dict[str, str] = {}
        for key, reason in found:
            first.setdefault(key, reason)  # one reason per variable: the first says what is accepted
        order = list(_BY_KEY)
        return sorted(first.items(), key=lambda problem: order.index(problem[0]))

    def api_key_list(self) -> tuple[str, ...]:
        """The API keys of CLIP_API_KEYS and CLIP_API_KEYS_FILE; raise ConfigError for a short or missing one."""
        keys, problems = self._api_keys()
        if problems:
            raise ConfigError(*(self._describe(key, reason) for key, reason in problems))
        return keys

    def _api_keys(self) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
        access = self.access
        sources = {"api_keys": [k.strip() for k in access.api_keys.split(",") if k.strip()]}
        problems: list[tuple[str, str]] = []
        if access.api_keys_file:
            try:
                with open(access.api_keys_file, encoding="utf-8") as file:
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

    def _describe(self, key: str, reason: str, given: str | None = None) -> str:
        """One problem as ``VARIABLE='value' is invalid: reason``, a secret's value left out."""
        spec = _BY_KEY[key]
        shown = "(value not shown)" if spec.secret else repr(given if given is not None else self.value(key))
        return f"{spec.env}={shown} is invalid: {reason}"


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


def _rule(spec: Spec) -> str:
    """What the setting accepts, as the message of a refused value says it."""
    kind = type(spec.default)
    if kind is bool:
        return "expected true or false (or 1/0, yes/no, on/off)"
    if kind not in (int, float):
        return f"expected a {kind.__name__}"
    low, high = spec.minimum, spec.maximum
    if kind is int:
        low = 1 if low is None else low
        return f"expected a whole number from {low:g} to {high:g}" if high is not None \
            else f"expected a whole number, at least {low:g}"
    bound = "greater than 0" if low is None else f"at least {low:g}"
    return f"expected a number {bound}" + (f" and at most {high:g}" if high is not None else "")


def documented_settings() -> list[tuple[str, Any, str]]:
    """(variable, default, description) for every setting, for docs and tests."""
    return [(spec.env, spec.default, spec.doc) for spec in SPECS]
