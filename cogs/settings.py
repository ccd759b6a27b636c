"""Settings from ``COGS_*`` environment variables or a ``.env`` file (pydantic-settings).

Anything given explicitly (a URL on the command line, a keyword to StateProxy) wins
over the environment, which wins over the defaults below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from cogs.errors import ConfigError
from cogs.keys import DEFAULT_NF, nf_problem

DEFAULT_PORT = 7000
DEFAULT_URL = f"redis://127.0.0.1:{DEFAULT_PORT}"


class CogsSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="COGS_", env_file=".env", extra="ignore", frozen=True, validate_default=True
    )

    #: Any one coordinator node: ``redis://[user:pass@]host:port`` or ``rediss://`` for TLS.
    #: Cluster or standalone is detected.
    url: str = DEFAULT_URL
    #: The NF this process works for: its own keys, channels, catalog and library on a
    #: cluster several NFs share (cogs/keys.py, Namespace). "default": the names
    #: single-NF use always had (cogs:*, library cogs).
    nf: str = DEFAULT_NF
    #: Redis ACL user and password (override what the URL carries).
    username: str | None = None
    password: SecretStr | None = None
    #: A locked coordinator's admin credentials: its cluster dir's ``auth.conf`` (written
    #: by ``cogs acl apply --admin-password ... --cluster-dir DIR``); used when neither
    #: the URL nor username/password carry credentials.
    auth_file: Path | None = None
    #: TLS (with a ``rediss://`` URL): CA bundle, client certificate and key.
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_check_hostname: bool = False
    connect_timeout_s: float = Field(2.0, gt=0)
    command_timeout_s: float = Field(5.0, gt=0)
    #: The state catalog (TOML) this process expects; None = take the stored one.
    catalog: Path | None = None
    #: Extra directories holding ``types/*.lua`` and ``checkers/*.lua``: a JSON list or,
    #: like PATH, directories separated by ``:``.
    lua_paths: Annotated[tuple[Path, ...], NoDecode] = ()
    #: Proxies: count a batch as applied only once a replica has it (WAIT), so an
    #: acknowledged update survives the loss of its primary. Needs replicas.
    durable: bool = False
    durable_timeout_s: float = Field(1.0, gt=0)
    #: Proxies: an op not confirmed within this fails its waiters (and flush()) with
    #: DeliveryTimeout; it stays queued and applies exactly once when the node answers.
    delivery_timeout_s: float = Field(30.0, gt=0)
    #: Proxies: how long an op may keep coming back MOVED/ASK (its slot being moved)
    #: before it fails with a Moved error instead of waiting for the move to complete.
    reroute_timeout_s: float = Field(30.0, gt=0)
    #: Indirect states: the secret every proxy shares to talk to its peers, and where
    #: this proxy listens for them (port 0: any free port, published in the registry).
    peer_secret: SecretStr | None = None
    peer_host: str = "127.0.0.1"
    peer_port: int = Field(0, ge=0, le=65535)
    peer_timeout_s: float = Field(5.0, gt=0)
    #: Indirect states: bytes of values this proxy keeps as their owner; past it the least
    #: recently used go (their locators too: readers then load them anew).
    max_owned_bytes: int = Field(1 << 30, ge=1)
    #: Proxies: serve their statistics for Prometheus on this port (unset: no; 0: a
    #: free port, advertised in the proxy's heartbeat) and address.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{v!r} is not a Redis URL (redis://host:port, rediss://..., unix://...)")
        return v

    @field_validator("nf")
    @classmethod
    def _nf_name(cls, v: str) -> str:
        if problem := nf_problem(v):
            raise ValueError(problem)
        return v

    @field_validator("lua_paths", mode="before")
    @classmethod
    def _path_list(cls, v: object) -> object:
        if not isinstance(v, str):
            return v
        if v.lstrip().startswith("["):
            try:
                return json.loads(v)
            except json.JSONDecodeError as e:
                raise ValueError(f"{v!r} is not a JSON list of directories: {e}") from e
        return [p for p in v.split(os.pathsep) if p]

    def connection_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for redis-py's ``from_url`` (credentials, TLS, timeouts)."""
        kw: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout_s,
            "socket_timeout": self.command_timeout_s,
        }
        if self.username:
            kw["username"] = self.username
        if self.password:
            kw["password"] = self.password.get_secret_value()
        if self.auth_file is not None and not (self.username or self.password or "@" in self.url):
            from cogs import adminauth

            kw |= adminauth.read(self.auth_file).client_kw()
        if self.url.startswith("rediss://"):
            if self.tls_ca_file:
                kw["ssl_ca_certs"] = str(self.tls_ca_file)
            if self.tls_cert_file:
                kw["ssl_certfile"] = str(self.tls_cert_file)
            if self.tls_key_file:
                kw["ssl_keyfile"] = str(self.tls_key_file)
            kw["ssl_check_hostname"] = self.tls_check_hostname
        return kw


def load_settings(**overrides: Any) -> CogsSettings:
    """Settings with ``overrides`` (None values ignored); bad values -> :class:`ConfigError`."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return CogsSettings(**given)
    except ValidationError as e:
        problems = "; ".join(f"COGS_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"bad settings: {problems}") from e
    except SettingsError as e:  # a value pydantic-settings could not even decode
        raise ConfigError(f"bad settings: {e}") from e
