"""Settings of the embedder service (environment prefix `MESS_EMBEDDER_`)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mess.runtime.endpoints import StackSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESS_EMBEDDER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8002
    log_level: str = "INFO"
    stack: StackSettings = Field(default_factory=StackSettings)
