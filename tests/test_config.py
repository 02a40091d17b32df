"""Settings come from defaults, then the environment, and bad values are refused by name."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clip_service.config import SPECS, ConfigError, Settings
from clip_service.images.limits import FetchLimits
from clip_service.startup import EXIT_BAD_SETTINGS, settings_or_exit

ROOT = Path(__file__).parent.parent


def test_defaults_are_the_real_model():
    settings = Settings.from_env({})
    assert settings.model.name == "ViT-B-32"
    assert settings.model.pretrained == "laion400m_e32"
    assert settings.model.device == "auto"
    assert settings.server.port == 8080
    assert settings.server.log_level == "INFO"


def test_environment_overrides_defaults():
    settings = Settings.from_env({"CLIP_MODEL": "RN50", "CLIP_PRETRAINED": "/w.pt", "PORT": "9000",
                                  "CLIP_WORKERS": "3", "CLIP_FETCH_READ_TIMEOUT": "2.5", "LOG_LEVEL": "debug"})
    assert (settings.model.name, settings.model.pretrained, settings.server.port) == ("RN50", "/w.pt", 9000)
    assert settings.server.workers == 3 and settings.fetch.read_timeout == 2.5


def test_the_fetch_group_is_the_fetchers_own_limits_with_its_defaults():
    settings = Settings.from_env({"CLIP_FETCH_USER_AGENT": "bot/2", "CLIP_MAX_URL_CHARS": "99",
                                  "CLIP_JPEG_DRAFT": "false"})
    assert isinstance(settings.fetch, FetchLimits)
    assert Settings().fetch == FetchLimits()
    assert (settings.fetch.user_agent, settings.fetch.max_url_chars, settings.fetch.jpeg_draft) == ("bot/2", 99, False)


def test_each_default_is_written_once():
    # The spec of each setting takes its default from its group's dataclass: no second copy to drift.
    for spec in SPECS:
        assert Settings().value(spec.key) == spec.default == getattr(getattr(Settings(), spec.group), spec.attr)
    assert len({spec.env for spec in SPECS}) == len({spec.key for spec in SPECS}) == len(SPECS)


@pytest.mark.parametrize("env, name", [
    ({"CLIP_WORKERS": "two"}, "CLIP_WORKERS"),
    ({"PORT": "80.5"}, "PORT"),
    ({"CLIP_DEVICE": "tpu"}, "CLIP_DEVICE"),
    ({"CLIP_MAX_TEXTS": "0"}, "CLIP_MAX_TEXTS"),
    ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
    ({"CLIP_HEADER_TIMEOUT": "0"}, "CLIP_HEADER_TIMEOUT"),
    ({"CLIP_MAX_BUFFERED_BYTES": "1000", "CLIP_MAX_BODY_BYTES": "2000"}, "CLIP_MAX_BUFFERED_BYTES"),
])
def test_bad_values_are_refused_by_name(env, name):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


# (environment, what the one line must say: the variable, the value given, what is accepted)
BAD_VALUES = [
    ({"CLIP_WORKERS": "two"}, "CLIP_WORKERS='two' is invalid: expected a whole number, at least 1"),
    ({"CLIP_THREADS": "-1"}, "CLIP_THREADS='-1' is invalid: expected a whole number, at least 1"),
    ({"CLIP_MAX_TEXTS": "0"}, "CLIP_MAX_TEXTS='0' is invalid: expected a whole number, at least 1"),
    ({"CLIP_MAX_REQUESTS": "-5"}, "CLIP_MAX_REQUESTS='-5' is invalid: expected a whole number, at least 0"),
    ({"CLIP_FETCH_READ_TIMEOUT": "0"}, "CLIP_FETCH_READ_TIMEOUT='0' is invalid: expected a number greater than 0"),
    ({"CLIP_FETCH_READ_TIMEOUT": "nan"}, "CLIP_FETCH_READ_TIMEOUT='nan' is invalid: expected a number greater than 0"),
    ({"CLIP_HEADER_TIMEOUT": "inf"}, "CLIP_HEADER_TIMEOUT='inf' is invalid: expected a number greater than 0"),
    ({"PORT": "80.5"}, "PORT='80.5' is invalid: expected a whole number from 1 to 65535"),
    ({"PORT": "65536"}, "PORT='65536' is invalid: expected a whole number from 1 to 65535"),
    ({"PORT": "0"}, "PORT='0' is invalid: expected a whole number from 1 to 65535"),
    ({"CLIP_CACHE_REDIS_TIMEOUT": "50"},
     "CLIP_CACHE_REDIS_TIMEOUT='50' is invalid: expected a number greater than 0 and at most 1"),
    ({"CLIP_BATCHING": "maybe"}, "CLIP_BATCHING='maybe' is invalid: expected true or false (or 1/0, yes/no, on/off)"),
    ({"CLIP_DEVICE": "tpu"}, "CLIP_DEVICE='tpu' is invalid: expected auto, cpu, cuda or cuda:N"),
    ({"CLIP_DEVICE": "cuda:first"}, "CLIP_DEVICE='cuda:first' is invalid: expected auto, cpu, cuda or cuda:N"),
    ({"CLIP_PRECISION": "fp16"}, "CLIP_PRECISION='fp16' is invalid: expected fp32, bf16 or auto"),
    ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL='chatty' is invalid: expected DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ({"CLIP_FETCH_ALLOW": "10.0.0.0/33"},
     "CLIP_FETCH_ALLOW='10.0.0.0/33' is invalid: expected comma-separated host:port pairs and CIDR blocks"),
    ({"CLIP_FETCH_PORTS": "80,http"},
     "CLIP_FETCH_PORTS='80,http' is invalid: expected comma-separated TCP ports from 1 to 65535 ('http' is not"),
    ({"CLIP_FETCH_USER_AGENT": "bot\u00e9"}, "CLIP_FETCH_USER_AGENT='bot\u00e9' is invalid: expected printable ASCII"),
    ({"CLIP_API_KEYS_FILE": "/no/such/keys"},
     "CLIP_API_KEYS_FILE='/no/such/keys' is invalid: cannot be read (FileNotFoundError)"),
    ({"CLIP_MAX_BUFFERED_BYTES": "1000", "CLIP_MAX_BODY_BYTES": "2000"},
     "CLIP_MAX_BUFFERED_BYTES='1000' is invalid: expected at least CLIP_MAX_BODY_BYTES (2000)"),
]


@pytest.mark.parametrize("env, message", BAD_VALUES, ids=lambda v: "-".join(v) if isinstance(v, dict) else None)
def test_a_bad_value_is_named_with_the_value_and_what_is_accepted(env, message):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert message in str(refused.value) and len(refused.value.problems) == 1
    assert "\n" not in str(refused.value)


def test_every_bad_value_is_reported_at_once_in_the_tables_order():
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"PORT": "http", "CLIP_WORKERS": "0", "CLIP_DEVICE": "tpu", "CLIP_MAX_TEXTS": "many"})
    names = [problem.split("=", 1)[0] for problem in refused.value.problems]
    assert names == ["CLIP_DEVICE", "CLIP_MAX_TEXTS", "CLIP_WORKERS", "PORT"]
    assert str(refused.value) == "; ".join(refused.value.problems) and "\n" not in str(refused.value)


def test_a_bad_override_is_named_with_its_value():
    with pytest.raises(ConfigError, match=r"^CLIP_WORKERS=0 is invalid: expected a whole number, at least 1$"):
        Settings.from_env({}, workers=0)
    with pytest.raises(ConfigError, match="unknown settings: wokers"):
        Settings.from_env({}, wokers=2)


def test_an_override_replaces_a_bad_environment_value():
    assert Settings.from_env({"CLIP_WORKERS": "two"}, workers=2).server.workers == 2


NUMERIC = [spec for spec in SPECS if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool)]
# Where 0 has a meaning: none / off / never / every time (the README's table says which).
ZERO_MEANS_SOMETHING = {"batch_window_ms", "batch_dwell_ms", "label_cache_mb", "cache_mb", "cache_ttl_seconds",
                        "fetch_max_redirects", "timeout", "graceful_timeout", "max_requests",
                        "max_requests_jitter", "ready_cache_seconds"}


@pytest.mark.parametrize("spec", NUMERIC, ids=lambda spec: spec.env)
def test_zero_is_accepted_exactly_where_it_has_a_meaning(spec):
    name = spec.env
    if spec.key in ZERO_MEANS_SOMETHING:
        assert Settings.from_env({name: "0"}).value(spec.key) == 0
    else:
        with pytest.raises(ConfigError, match=f"^{name}='0' is invalid"):
            Settings.from_env({name: "0"})
    with pytest.raises(ConfigError, match=f"^{name}='-1' is invalid"):
        Settings.from_env({name: "-1"})


def test_the_zeros_gunicorn_knows_reach_it_unchanged():
    settings = Settings.from_env({"CLIP_MAX_REQUESTS": "0", "CLIP_MAX_REQUESTS_JITTER": "0", "CLIP_TIMEOUT": "0",
                                  "CLIP_GRACEFUL_TIMEOUT": "0"})
    server = settings.server
    assert (server.max_requests, server.max_requests_jitter, server.timeout, server.graceful_timeout) == (0, 0, 0, 0)


@pytest.mark.parametrize("env, value", [
    ({"PORT": "65535"}, ("port", 65535)), ({"PORT": "1"}, ("port", 1)),
    ({"CLIP_CACHE_REDIS_TIMEOUT": "1"}, ("cache_redis_timeout", 1.0)),
    ({"CLIP_DEVICE": "cuda:1"}, ("device", "cuda:1")), ({"CLIP_PRECISION": "bf16"}, ("precision", "bf16")),
    ({"CLIP_BATCHING": "Off"}, ("batching", False)), ({"CLIP_JPEG_DRAFT": "YES"}, ("jpeg_draft", True)),
    ({"LOG_LEVEL": "critical"}, ("log_level", "critical")),
    ({"CLIP_CACHE_REDIS_URL": "rediss://:pw@cache:6380/1"}, ("cache_redis_url", "rediss://:pw@cache:6380/1")),
    ({"CLIP_WORKERS": " 3 "}, ("workers", 3)), ({"CLIP_WORKERS": ""}, ("workers", 1)),
])
def test_edge_values_that_are_accepted(env, value):
    assert Settings.from_env(env).value(value[0]) == value[1]


def test_secret_values_are_never_printed():
    key, password = "only-nine", "hunter2-hunter2"
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"CLIP_API_KEYS": f"a-long-enough-key-{key}x,{key}",
                           "CLIP_CACHE_REDIS_URL": f"user:{password}@cache:6379"})
    message = str(refused.value)
    assert "CLIP_API_KEYS=(value not shown) is invalid: key 2 has 9 characters" in message
    assert "CLIP_CACHE_REDIS_URL=(value not shown) is invalid: expected a redis://" in message
    assert key not in message and password not in message


def test_settings_or_exit_prints_one_line_and_exits_78():
    stream = io.StringIO()
    with pytest.raises(SystemExit) as stopped:
        settings_or_exit({"CLIP_WORKERS": "two", "PORT": "-1"}, stream=stream)
    assert stopped.value.code == EXIT_BAD_SETTINGS == 78
    assert stream.getvalue() == ("clip-service cannot start: CLIP_WORKERS='two' is invalid: expected a whole number, "
                                 "at least 1; PORT='-1' is invalid: expected a whole number from 1 to 65535\n")
    assert settings_or_exit({"CLIP_WORKERS": "2"}, stream=stream).server.workers == 2


def test_reading_the_settings_imports_neither_torch_nor_prometheus():
    # gunicorn.conf.py reads them before it sets PROMETHEUS_MULTIPROC_DIR and imports torch.
    code = ("import sys, clip_service.startup as s; s.settings_or_exit(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'prometheus_client', 'flask')))")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("CLIP_")})
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_each_bad_variable_is_named_once_with_every_short_key():
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"CLIP_API_KEYS": "short-one,a-long-enough-key-0001,short-two",
                           "CLIP_MAX_BUFFERED_BYTES": "-1"})
    keys = ("CLIP_API_KEYS=(value not shown) is invalid: key 1 has 9 characters, key 3 has 9 characters, and "
            "every API key needs at least 16 (make one with: openssl rand -hex 24)")
    buffered = "CLIP_MAX_BUFFERED_BYTES='-1' is invalid: expected a whole number, at least 1"
    assert refused.value.problems == (keys, buffered)


def test_validate_names_each_bad_field_once_in_order():
    settings = Settings().replace(max_buffered_bytes=-1, workers=0, device="tpu")
    with pytest.raises(ConfigError) as refused:
        settings.validate()
    assert [p.split("=", 1)[0] for p in refused.value.problems] == ["CLIP_DEVICE", "CLIP_WORKERS",
                                                                    "CLIP_MAX_BUFFERED_BYTES"]


def test_the_environment_is_read_once_per_process(monkeypatch):
    # gunicorn.conf.py, the app (wsgi.py) and the worker all take the settings the master read.
    import clip_service.app
    import clip_service.startup as startup

    reads, made = [], []
    real = Settings.from_env.__func__
    monkeypatch.setattr(Settings, "from_env", classmethod(lambda cls, environ=None, **o: reads.append(environ)
                                                          or real(cls, environ, **o)))
    monkeypatch.setattr(startup, "_read_from_environment", None)
    monkeypatch.setattr(clip_service.app, "create_app", lambda **kwargs: made.append(kwargs) or "app")
    first = settings_or_exit()
    assert settings_or_exit() is first and startup.app_or_exit() == "app"
    assert reads == [None] and made == [{"settings": first}]
