"""runsync's settings: a TOML file plus the environment, turned into typed, validated values.

The keys every kind of source has are `SourceBase`'s; each upstream's package declares its own
model on top (worker/sources/<kind>/config.py), and `load` is given them: this module knows no
upstream. pydantic validates; the errors come out in runsync's words, naming the file and the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Union
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from worker import cron as crontab

DEFAULT_CONFIG = Path("config/runsync.toml")
DEFAULT_LISTEN = "127.0.0.1:9464"
DEFAULT_UNHEALTHY_AFTER = "15m"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A webhook secret is all that stands between the internet and the runs table.
MIN_WEBHOOK_SECRET = 16
# Read from the environment, never from the file: a table that names them has an unknown key.
_SECRETS = frozenset({"token", "webhook_secret"})


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class Secret:
    """A value that must not leave the process: it prints as ***."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def parse_duration(text: str) -> timedelta:
    """'90s', '5m', '1h30m', '2d' → timedelta; anything else raises ValueError."""
    compact = text.strip().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration (use e.g. 30s, 5m, 1h, 1h30m, 2d)")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{value.total_seconds():g}s"


def redact_url(url: str) -> str:
    """The URL without its password, safe to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


# -- Validation in runsync's words -----------------------------------------------------------


def invalid(message: str, *, key: str | None = None) -> PydanticCustomError:
    """A mistake, said as runsync says it. A check of a whole table (a model validator) names
    the `key` at fault; a field's own check needs none."""
    context = {"message": message} if key is None else {"message": message, "key": key}
    return PydanticCustomError("runsync", "{message}", context)


def _duration(value: Any, *, zero: bool = False, off: bool = False) -> Any:
    if isinstance(value, timedelta) or (off and value is None):
        return value
    if not isinstance(value, str):
        raise invalid(f"must be a str, not {value!r}")
    if off and value == "off":
        return None
    if zero and value.strip() in ("0", "0s"):
        return timedelta(0)
    try:
        return parse_duration(value)
    except ValueError as error:
        raise invalid(str(error)) from None


# A duration as written in the file ("30s", "1h30m"), or a timedelta given in code.
Duration = Annotated[timedelta, BeforeValidator(_duration)]
# The same, where "0" means none (an overlap)...
DurationOrZero = Annotated[timedelta, BeforeValidator(lambda v: _duration(v, zero=True))]
# ...and where "off" switches the thing off (None).
DurationOrOff = Annotated[timedelta | None, BeforeValidator(lambda v: _duration(v, off=True))]


class _Strict(BaseModel):
    # Strict: a TOML 5 is no "5", and true is no 1. Frozen: settings do not change once read.
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, arbitrary_types_allowed=True
    )

    @classmethod
    def file_keys(cls) -> frozenset[str]:
        """The keys its table may hold."""
        return frozenset(cls.model_fields) - _SECRETS


def _environment(info: ValidationInfo) -> Mapping[str, str] | None:
    """The environment `load` reads the secrets from; None for a model built in code."""
    return (info.context or {}).get("env")


class SourceBase(_Strict):
    """The keys every kind of source has. An upstream's model (worker/sources/<kind>/config.py)
    adds its own keys and says its `kind`, its defaults and its bounds."""

    # Whether the kind takes webhooks: without, webhook_secret_env is not one of its keys.
    takes_webhooks: ClassVar[bool] = True

    name: str = Field(description="letters, digits, '.', '_' or '-'")
    kind: str
    token_env: str = Field(description="the environment variable holding the token")
    token: Secret = Field(repr=False, exclude=True)  # read from the variable token_env names
    base_url: str
    every: Duration | None = None  # neither every nor cron: every minute
    cron: str | None = None
    page_size: int = Field(1000, ge=1, le=1000)
    # A cap of this source's own, under the upstream's limits (None: the limits alone pace it).
    max_requests_per_second: float | None = Field(None, ge=0.1, le=1000.0)
    concurrency: int = Field(8, ge=1, le=64)
    timeout: Duration = timedelta(seconds=30)
    max_retries: int = Field(6, ge=0, le=20)
    overlap: DurationOrZero = timedelta(seconds=5)
    max_response_mb: int = Field(8, ge=1, le=1024)  # a larger answer is refused, not read
    # The reconcile sweep reads the last `reconcile_lookback` of history again this often (None:
    # never): it finds the runs that finished, ran again and finished again between two passes.
    reconcile_every: DurationOrOff = timedelta(hours=1)
    reconcile_lookback: Duration = timedelta(days=7)
    webhook_secret_env: str | None = None  # the variable holding the webhook secret
    webhook_secret: Secret | None = Field(None, repr=False, exclude=True)

    @classmethod
    def file_keys(cls) -> frozenset[str]:
        keys = super().file_keys()
        return keys if cls.takes_webhooks else keys - {"webhook_secret_env"}

    @property
    def schedule(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {format_duration(self.every)}"

    @model_validator(mode="before")
    @classmethod
    def _secrets_and_schedule(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        env = _environment(info)
        if env is not None:  # from a file: the secrets come from the environment alone
            for secret in _SECRETS:
                name = data.get(f"{secret}_env")  # their checks are token_env's and its sibling's
                if secret not in data and isinstance(name, str) and env.get(name, "").strip():
                    data[secret] = Secret(env[name].strip())
        if data.get("every") is None and data.get("cron") is None:
            data["every"] = timedelta(minutes=1)
        return data

    # A check of several keys comes after each key's own, so that a misspelt key is told first.
    @model_validator(mode="after")
    def _one_schedule(self) -> SourceBase:
        if self.every is not None and self.cron is not None:
            raise invalid("give either every or cron, not both", key="cron")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise invalid(f"{name!r} is not a name: use letters, digits, '.', '_' or '-'")
        return name

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, name: str, info: ValidationInfo) -> str:
        if not _ENV_NAME.match(name):  # the value is not shown: it may be the token itself
            raise invalid("must name the environment variable holding the token")
        env = _environment(info)
        if env is not None and not env.get(name, "").strip():
            raise invalid(f"environment variable {name} is not set")
        return name

    @field_validator("webhook_secret_env")
    @classmethod
    def _webhook_secret_env(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is None:
            return None
        if not cls.takes_webhooks:
            raise invalid("not a key of this kind")  # said in full by _explain
        if not _ENV_NAME.match(name):
            raise invalid("must name the environment variable holding the webhook secret")
        env = _environment(info)
        if env is None:
            return name
        secret = env.get(name, "").strip()
        if not secret:
            raise invalid(f"environment variable {name} is not set")
        if len(secret) < MIN_WEBHOOK_SECRET:
            raise invalid(
                f"the secret in {name} is shorter than {MIN_WEBHOOK_SECRET} characters "
                "(make one with: openssl rand -hex 32)"
            )
        return name

    @field_validator("cron")
    @classmethod
    def _cron(cls, text: str | None) -> str | None:
        if text is None:
            return None
        try:
            return crontab.parse(text).expression
        except crontab.CronError as error:
            raise invalid(str(error)) from None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        url = url.rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise invalid(f"{url!r} is not an http(s) URL")
        if parts.username or parts.password or parts.query:
            raise invalid("must not carry credentials or a query string")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise invalid("plain http is only allowed to this machine; use https")
        return url


# The name the shared layers use for a configured source, of whatever kind.
SourceConfig = SourceBase


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- The tables beside the sources -------------------------------------------------------------


class _Database(_Strict):
    url: str | None = None  # the last of --database-url, RUNSYNC_DATABASE_URL and this
    data_dir: str = ".runsync"
    # Two at least: a pass's write and the lease renewal, or /readyz, beside it.
    max_connections: int = Field(10, ge=2, le=1000)
    takeover_after: Duration = timedelta(seconds=30)

    @field_validator("takeover_after")
    @classmethod
    def _takeover_after(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(hours=1):
            raise invalid("must be between 1s and 1h")
        return value


class _Http(_Strict):
    listen: str = DEFAULT_LISTEN
    unhealthy_after: Duration = parse_duration(DEFAULT_UNHEALTHY_AFTER)
    status_page: bool = True  # the status page at / on listen (or on status_page_listen)
    status_page_listen: str | None = None  # the page on an address of its own, not on listen

    @field_validator("listen", "status_page_listen")
    @classmethod
    def _listen(cls, listen: str | None) -> str | None:
        if listen is not None and not re.fullmatch(r"[^\s:]+:\d{1,5}", listen):
            raise invalid(f"{listen!r} is not host:port")
        return listen

    @model_validator(mode="after")
    def _page_address(self) -> _Http:
        if self.status_page_listen is None:
            return self
        if not self.status_page:
            message = "the status page is off (status_page = false): remove this or turn it on"
            raise invalid(message, key="status_page_listen")
        if self.status_page_listen == self.listen:
            message = "is listen itself: leave it out to serve the page on listen"
            raise invalid(message, key="status_page_listen")
        return self


class _Worker(_Strict):
    max_passes: int = Field(32, ge=1, le=10_000)


class _Document(_Strict):
    database: _Database = _Database()
    http: _Http = _Http()
    worker: _Worker = _Worker()
    sources: Any = None  # each source is validated on its own, by its kind's model


@dataclass(frozen=True)
class Settings:
    path: Path
    database_url: Secret | None
    database_url_origin: str  # where the URL came from, for the plan
    data_dir: Path
    listen: str
    sources: tuple[SourceBase, ...]
    # /readyz fails once a source's newest pass failed and it last succeeded longer ago than this.
    unhealthy_after: timedelta = timedelta(minutes=15)
    # The most database connections this process opens, whatever the number of sources.
    max_connections: int = 10
    # A stream's lease not renewed for this long is taken over (its process died).
    takeover_after: timedelta = timedelta(seconds=30)
    # The most passes this process runs at once, over all its sources; others wait their turn.
    max_passes: int = 32
    # The status page: served at / on listen, on status_page_listen instead when set, or not at all.
    status_page: bool = True
    status_page_listen: str | None = None

    def source(self, name: str) -> SourceBase:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"{self.path}: no source named {name!r} (configured: {known})")

    def secrets(self) -> list[str]:
        found = [s.token.reveal() for s in self.sources]
        found += [s.webhook_secret.reveal() for s in self.sources if s.webhook_secret]
        if self.database_url is not None:
            password = urlsplit(self.database_url.reveal()).password
            if password:
                found.append(password)
        return [s for s in found if s]


# -- Loading -----------------------------------------------------------------------------------


def load(
    path: Path | str | None = None,
    *,
    kinds: Mapping[str, type[SourceBase]],
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """The settings in the file at `path` (default: $RUNSYNC_CONFIG, else config/runsync.toml),
    its sources read by the models of `kinds` (kind → model; worker.sources.load_settings gives
    the registered ones), the secrets from `env` (default: the process's environment)."""
    env = os.environ if env is None else env
    path = Path(path or env.get("RUNSYNC_CONFIG") or DEFAULT_CONFIG)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found (pass --config or set RUNSYNC_CONFIG)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the config file: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None

    def fail(where: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: {where}: {message}")

    try:
        top = _Document.model_validate(document)
    except ValidationError as error:
        raise fail(*_explain(_first(error), _Document, "")) from None
    url, origin = _database_url(top.database.url, database_url, env, fail)

    raw_sources = top.sources
    if not isinstance(raw_sources, list) or not raw_sources:
        raise fail("sources", "define at least one [[sources]] table")
    # One model per kind, told apart by `kind` (a Union built at run time: no `|` for that).
    any_kind: Any = Union[tuple(kinds.values())]  # noqa: UP007
    adapter: TypeAdapter[SourceBase] = TypeAdapter(Annotated[any_kind, Field(discriminator="kind")])
    sources: list[SourceBase] = []
    for index, raw in enumerate(raw_sources, 1):
        where = f"sources[{index}]"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            where = f"sources.{raw['name']}"
        try:
            sources.append(adapter.validate_python(raw, context={"env": env}))
        except ValidationError as error:
            raise fail(*_explain_source(_first(error), kinds, where)) from None
    seen: set[str] = set()
    for source in sources:
        if source.name in seen:
            raise fail(f"sources.{source.name}", "two sources share this name")
        seen.add(source.name)
    return Settings(
        path, url, origin, Path(top.database.data_dir), top.http.listen, tuple(sources),
        top.http.unhealthy_after, top.database.max_connections, top.database.takeover_after,
        top.worker.max_passes, top.http.status_page, top.http.status_page_listen,
    )  # fmt: skip


def _database_url(
    in_file: str | None,
    override: str | None,
    env: Mapping[str, str],
    fail: Callable[[str, str], ConfigError],
) -> tuple[Secret | None, str]:
    for value, origin in (
        (override, "--database-url"),
        (env.get("RUNSYNC_DATABASE_URL"), "RUNSYNC_DATABASE_URL"),
        (in_file, "[database] url"),
    ):
        if value:
            if urlsplit(value).scheme not in ("postgres", "postgresql"):
                problem = f"{redact_url(value)!r} is not a postgresql:// URL"
                if origin == "[database] url":
                    raise fail("database.url", problem)
                raise ConfigError(f"{origin}: {problem}")
            return Secret(value), origin
    return None, "embedded"


def _first(error: ValidationError) -> ErrorDetails:
    """The error to tell: an unknown key first, as a typo explains the key it left missing."""
    errors = error.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


def _explain_source(
    error: ErrorDetails, kinds: Mapping[str, type[SourceBase]], where: str
) -> tuple[str, str]:
    """(where, message) for pydantic's first error about one [[sources]] table."""
    known = ", ".join(kinds)
    if error["type"] == "union_tag_invalid":
        return f"{where}.kind", f"{error['ctx']['tag']!r} is not a known kind ({known})"
    if error["type"] == "union_tag_not_found":
        return f"{where}.kind", f"required: one of {known}"
    if not error["loc"]:  # not a table at all
        return _explain(error, SourceBase, where)
    kind, *loc = error["loc"]  # a discriminated union's errors start with the tag
    others = [model for name, model in kinds.items() if name != kind]
    return _explain({**error, "loc": tuple(loc)}, kinds[str(kind)], where, others)


def _explain(
    error: ErrorDetails,
    model: type[_Strict],
    where: str,
    others: list[type[SourceBase]] | None = None,
) -> tuple[str, str]:
    """(where, message) for one of pydantic's errors about a table read by `model`; `others`
    are the models of the other kinds of source, for a key that belongs to one of them."""
    loc = [str(part) for part in error["loc"]]
    # A table within the table ([database], [http], [worker]): its own model knows its keys.
    nested = model.model_fields[loc[0]].annotation if loc and loc[0] in model.model_fields else None
    within = len(loc) > 1 or error["type"] == "runsync"  # a key of it, or a check of it whole
    if within and isinstance(nested, type) and issubclass(nested, _Strict):
        return _explain({**error, "loc": tuple(loc[1:])}, nested, _join(where, loc[0]))
    # A check of the whole table names its key in its context.
    key = loc[0] if loc else (error.get("ctx") or {}).get("key")
    at = _join(where, key)
    if key is not None and key not in model.file_keys():
        at = f"{where or '(top level)'}.{key}"
        kind = _kind(model)
        if kind and any(key in other.file_keys() for other in others or ()):
            return at, f"not a key of kind {kind!r}"
        return at, f"unknown key (known keys: {', '.join(sorted(model.file_keys()))})"
    return at, _message(error, model, key)


def _join(where: str, key: str | None) -> str:
    return f"{where}.{key}" if where and key else where or key or "(top level)"


def _kind(model: type[_Strict]) -> str | None:
    """The kind a source's model is for (its `kind: Literal[...]`); None for other tables."""
    field = model.model_fields.get("kind")
    return getattr(field.annotation, "__args__", (None,))[0] if field else None


# pydantic's type errors, by the TOML type they asked for.
_TYPES = {
    "string_type": "a str", "int_type": "an int", "float_type": "a float", "bool_type": "a bool",
    "list_type": "a list", "tuple_type": "a list", "frozen_set_type": "a list",
    "model_type": "a table", "model_attributes_type": "a table", "dict_type": "a table",
}  # fmt: skip


def _message(error: ErrorDetails, model: type[_Strict], key: str | None) -> str:
    """The words for one error about one of the model's keys (or the table, for None). The input
    is shown only for a wrong type or a bound; a secret is never an input (it is not a key)."""
    context = error.get("ctx") or {}
    if error["type"] == "runsync":
        return str(context["message"])
    if error["type"] == "missing" and key is not None:
        kind = _kind(model)
        own = kind is not None and key not in SourceBase.model_fields
        required = f"required for kind {kind!r}" if own else "required"
        description = model.model_fields[key].description
        return f"{required}: {description}" if description else required
    if error["type"] in _TYPES:
        found = error["input"]
        shown = type(found).__name__ if isinstance(found, dict | list) else repr(found)
        return f"must be {_TYPES[error['type']]}, not {shown}"
    if error["type"] in ("greater_than_equal", "less_than_equal") and key is not None:
        bounds = {type(m).__name__: m for m in model.model_fields[key].metadata}
        if "Ge" in bounds and "Le" in bounds:
            return f"must be between {bounds['Ge'].ge} and {bounds['Le'].le}, not {error['input']}"
    if error["type"] == "value_error":
        return str(context.get("error"))
    return error["msg"][:1].lower() + error["msg"][1:]
