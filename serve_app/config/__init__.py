"""Configuration: application settings (pydantic) and Serve config files."""

from serve_app.config.loader import ConfigError, load_serve_config
from serve_app.config.settings import AppSettings, EngineSettings, IngressSettings, ModelSettings

__all__ = [
    "AppSettings",
    "ConfigError",
    "EngineSettings",
    "IngressSettings",
    "ModelSettings",
    "load_serve_config",
]
