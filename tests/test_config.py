"""Settings come from defaults, then the environment, and bad values are refused by name."""

import pytest

from clip_service.config import ConfigError, Settings


def test_defaults_are_the_real_model():
    settings = Settings.from_env({})
    assert settings.model_name == "ViT-B-32"
    assert settings.pretrained == "laion400m_e32"
    assert settings.device == "auto"
    assert settings.port == 8080
    assert settings.log_level == "INFO"


def test_environment_overrides_defaults():
    settings = Settings.from_env({"CLIP_MODEL": "RN50", "CLIP_PRETRAINED": "/w.pt", "PORT": "9000",
                                  "CLIP_WORKERS": "3", "CLIP_FETCH_READ_TIMEOUT": "2.5", "LOG_LEVEL": "debug"})
    assert (settings.model_name, settings.pretrained, settings.port) == ("RN50", "/w.pt", 9000)
    assert settings.workers == 3 and settings.fetch_read_timeout == 2.5


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
