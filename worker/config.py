"""runsync's settings: a TOML file plus the environment, turned into typed, validated values."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from worker import cron as crontab

DEFAULT_CONFIG = Path("config/runsync.toml")
DEFAULT_LISTEN = "127.0.0.1:9464"
DEFAULT_UNHEALTHY_AFTER = "15m"
KINDS = {
    "apify": "https://api.apify.com",
    "rakerone": "https://app.raker.one",
    "github": "https://api.github.com",
}
# Keys that only make sense for some kinds of upstream.
KIND_KEYS = {
    "apify": {"actor", "task", "webhook_secret_env"},
    "rakerone": {"project", "projects", "terminal_statuses"},
    "github": {"repository", "workflow", "webhook_secret_env"},
}
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
RAKERONE_TERMINAL = ("completed", "failed", "cancelled")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A webhook secret is all that stands between the internet and the runs table.
MIN_WEBHOOK_SECRET = 16


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


@dataclass(frozen=True)
class SourceConfig:
    name: str
    kind: str
    token_env: str
    token: Secret = field(repr=False)
    base_url: str
    every: timedelta | None = None
    cron: str | None = None
    actor: str | None = None
    task: str | None = None
    repository: str | None = None  # GitHub: "owner/name"
    workflow: str | None = None  # GitHub: one workflow's runs, by id or file name
    page_size: int = 1000
    # A cap of this source's own, under the upstream's limits (None: the limits alone pace it).
    max_requests_per_second: float | None = None
    concurrency: int = 8
    timeout: timedelta = timedelta(seconds=30)
    max_retries: int = 6
    overlap: timedelta = timedelta(seconds=5)
    max_response_mb: int = 8  # a larger answer is refused, not read into memory
    projects: tuple[str, ...] = ()  # RakerOne: one stream of runs per project
    terminal_statuses: frozenset[str] = frozenset()  # RakerOne: casefolded
    webhook_secret_env: str | None = None  # Apify: the variable holding the webhook secret
    webhook_secret: Secret | None = field(default=None, repr=False)
    # The reconcile sweep reads the last `reconcile_lookback` of history again this often (None:
    # never): it finds the runs that finished, ran again and finished again between two passes.
    reconcile_every: timedelta | None = timedelta(hours=1)
    reconcile_lookback: timedelta = timedelta(days=7)

    @property
    def schedule(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {format_duration(self.every)}"


@dataclass(frozen=True)
class Settings:
    path: Path
    database_url: Secret | None
    database_url_origin: str  # where the URL came from, for the plan
    data_dir: Path
    listen: str
    sources: tuple[SourceConfig, ...]
    # /readyz fails once a source's newest pass failed and it last succeeded longer ago than this.
    unhealthy_after: timedelta = timedelta(minutes=15)
    # The most database connections this process opens, whatever the number of sources.
    max_connections: int = 10
    # A stream's lease not renewed for this long is taken over (its process died).
    takeover_after: timedelta = timedelta(seconds=30)
    # The most passes this process runs at once, over all its sources; others wait their turn.
    max_passes: int = 32

    def source(self, name: str) -> SourceConfig:
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


def load(
    path: Path | None = None,
    *,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
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
    return _Reader(path, env).settings(document, database_url)


class _Reader:
    """Walks the TOML document, naming each key in its errors."""

    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {message}")

    def table(self, value: Any, key: str, known: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {type(value).__name__}")
        unknown = sorted(set(value) - known)
        if unknown:
            raise self.error(
                f"{key}.{unknown[0]}", f"unknown key (known keys: {', '.join(sorted(known))})"
            )
        return value

    def typed(self, table: dict[str, Any], key: str, where: str, kind: type, default: Any = None):
        value = table.get(key, default)
        if value is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        # bool is an int to Python, never to a user
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error(f"{where}.{key}", f"must be a {kind.__name__}, not {value!r}")
        return value

    def duration(self, table: dict[str, Any], key: str, where: str, default: str | None = None):
        text = self.typed(table, key, where, str, default)
        if text is None:
            return None
        try:
            return parse_duration(text)
        except ValueError as error:
            raise self.error(f"{where}.{key}", str(error)) from None

    def settings(self, document: dict[str, Any], database_url: str | None) -> Settings:
        self.table(document, "(top level)", {"database", "http", "worker", "sources"})
        database = self.table(
            document.get("database", {}),
            "database",
            {"url", "data_dir", "max_connections", "takeover_after"},
        )
        http = self.table(document.get("http", {}), "http", {"listen", "unhealthy_after"})
        worker = self.table(document.get("worker", {}), "worker", {"max_passes"})
        # Two at least: a pass's write and the lease renewal, or /readyz, beside it.
        max_connections = self.bounded(database, "max_connections", "database", 10, 2, 1000)
        takeover_after = self.duration(database, "takeover_after", "database", "30s")
        if not timedelta(seconds=1) <= takeover_after <= timedelta(hours=1):
            raise self.error("database.takeover_after", "must be between 1s and 1h")
        max_passes = self.bounded(worker, "max_passes", "worker", 32, 1, 10_000)
        url, origin = self.database_url(database, database_url)
        data_dir = Path(self.typed(database, "data_dir", "database", str, ".runsync"))
        listen = self.typed(http, "listen", "http", str, DEFAULT_LISTEN)
        if not re.fullmatch(r"[^\s:]+:\d{1,5}", listen):
            raise self.error("http.listen", f"{listen!r} is not host:port")
        unhealthy_after = self.duration(http, "unhealthy_after", "http", DEFAULT_UNHEALTHY_AFTER)

        raw_sources = document.get("sources", [])
        if not isinstance(raw_sources, list) or not raw_sources:
            raise self.error("sources", "define at least one [[sources]] table")
        sources = tuple(self.source(raw, index) for index, raw in enumerate(raw_sources, 1))
        seen: set[str] = set()
        for source in sources:
            if source.name in seen:
                raise self.error(f"sources.{source.name}", "two sources share this name")
            seen.add(source.name)
        return Settings(
            self.path, url, origin, data_dir, listen, sources, unhealthy_after,
            max_connections, takeover_after, max_passes,
        )  # fmt: skip

    def database_url(self, database: dict[str, Any], override: str | None):
        for value, origin in (
            (override, "--database-url"),
            (self.env.get("RUNSYNC_DATABASE_URL"), "RUNSYNC_DATABASE_URL"),
            (self.typed(database, "url", "database", str), "[database] url"),
        ):
            if value:
                if urlsplit(value).scheme not in ("postgres", "postgresql"):
                    problem = f"{redact_url(value)!r} is not a postgresql:// URL"
                    if origin == "[database] url":
                        raise self.error("database.url", problem)
                    raise ConfigError(f"{origin}: {problem}")
                return Secret(value), origin
        return None, "embedded"

    def source(self, raw: Any, index: int) -> SourceConfig:
        where = f"sources[{index}]"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            where = f"sources.{raw['name']}"
        table = self.table(
            raw,
            where,
            set(SourceConfig.__dataclass_fields__) - {"token", "webhook_secret"} | {"project"},
        )
        name = self.typed(table, "name", where, str)
        if not name or not _NAME.match(name):
            raise self.error(f"{where}.name", "required: letters, digits, '.', '_' or '-'")
        kind = self.typed(table, "kind", where, str)
        if kind not in KINDS:
            raise self.error(f"{where}.kind", f"{kind!r} is not a known kind ({', '.join(KINDS)})")
        token_env = self.typed(table, "token_env", where, str)
        if not token_env or not _ENV_NAME.match(token_env):
            raise self.error(
                f"{where}.token_env", "required: the environment variable holding the token"
            )
        token = self.env.get(token_env, "")
        if not token.strip():
            raise self.error(f"{where}.token_env", f"environment variable {token_env} is not set")
        every = self.duration(table, "every", where)
        cron = self.cron(table, where)
        if every and cron:
            raise self.error(f"{where}.cron", "give either every or cron, not both")
        if not every and not cron:
            every = parse_duration("1m")
        foreign = {key for keys in KIND_KEYS.values() for key in keys} - KIND_KEYS[kind]
        if misplaced := sorted(foreign & table.keys()):
            raise self.error(f"{where}.{misplaced[0]}", f"not a key of kind {kind!r}")
        actor = self.typed(table, "actor", where, str)
        task = self.typed(table, "task", where, str)
        if actor and task:
            raise self.error(f"{where}.task", "give either actor or task, not both")
        repository, workflow = self.github(table, where) if kind == "github" else (None, None)
        webhook_secret_env, webhook_secret = self.webhook_secret(table, where)
        projects, terminal = (), ()
        if kind == "rakerone":
            projects = self.projects(table, where)
            terminal = self.strings(table, "terminal_statuses", where, RAKERONE_TERMINAL)
        return SourceConfig(
            name=name,
            kind=kind,
            token_env=token_env,
            token=Secret(token.strip()),
            base_url=self.base_url(table, where, KINDS[kind]),
            every=every,
            cron=cron,
            actor=actor,
            task=task,
            repository=repository,
            workflow=workflow,
            page_size=self.bounded(table, "page_size", where, 1000, 1, 1000),
            max_requests_per_second=(
                None
                if table.get("max_requests_per_second") is None
                else self.bounded(table, "max_requests_per_second", where, None, 0.1, 1000.0, float)
            ),
            concurrency=self.bounded(table, "concurrency", where, 8, 1, 64),
            timeout=self.duration(table, "timeout", where, "30s"),
            max_retries=self.bounded(table, "max_retries", where, 6, 0, 20),
            overlap=self.overlap(table, where),
            max_response_mb=self.bounded(table, "max_response_mb", where, 8, 1, 1024),
            projects=projects,
            terminal_statuses=frozenset(status.casefold() for status in terminal),
            webhook_secret_env=webhook_secret_env,
            webhook_secret=webhook_secret,
            reconcile_every=(
                None
                if table.get("reconcile_every") == "off"
                else self.duration(table, "reconcile_every", where, "1h")
            ),
            reconcile_lookback=self.duration(table, "reconcile_lookback", where, "7d"),
        )

    def webhook_secret(self, table: dict[str, Any], where: str) -> tuple[str | None, Secret | None]:
        name = self.typed(table, "webhook_secret_env", where, str)
        if name is None:
            return None, None
        key = f"{where}.webhook_secret_env"
        if not _ENV_NAME.match(name):
            raise self.error(key, "must name the environment variable holding the webhook secret")
        secret = self.env.get(name, "").strip()
        if not secret:
            raise self.error(key, f"environment variable {name} is not set")
        if len(secret) < MIN_WEBHOOK_SECRET:
            raise self.error(
                key,
                f"the secret in {name} is shorter than {MIN_WEBHOOK_SECRET} characters "
                "(make one with: openssl rand -hex 32)",
            )
        return name, Secret(secret)

    def github(self, table: dict[str, Any], where: str) -> tuple[str, str | None]:
        repository = self.typed(table, "repository", where, str)
        if not repository or not _REPOSITORY.match(repository):
            raise self.error(f"{where}.repository", "required for kind 'github': \"owner/name\"")
        workflow = self.typed(table, "workflow", where, str)
        if workflow is not None and (not workflow or "/" in workflow):
            raise self.error(f"{where}.workflow", "a workflow's id or file name, e.g. ci.yml")
        return repository, workflow

    def cron(self, table: dict[str, Any], where: str) -> str | None:
        text = self.typed(table, "cron", where, str)
        if text is None:
            return None
        try:
            return crontab.parse(text).expression
        except crontab.CronError as error:
            raise self.error(f"{where}.cron", str(error)) from None

    def strings(self, table: dict[str, Any], key: str, where: str, default=()) -> tuple[str, ...]:
        value = table.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(f"{where}.{key}", "must be a list of non-empty strings")
        return tuple(value)

    def projects(self, table: dict[str, Any], where: str) -> tuple[str, ...]:
        if "project" in table and "projects" in table:
            raise self.error(f"{where}.projects", "give either project or projects, not both")
        if "project" in table:
            projects = (self.typed(table, "project", where, str),)
        else:
            projects = self.strings(table, "projects", where)
        if not projects or not all(projects):
            raise self.error(f"{where}.project", "required for kind 'rakerone'")
        if len(set(projects)) != len(projects):
            raise self.error(f"{where}.projects", "lists a project twice")
        return projects

    def overlap(self, table: dict[str, Any], where: str) -> timedelta:
        if table.get("overlap") in ("0", "0s"):
            return timedelta(0)
        return self.duration(table, "overlap", where, "5s")

    def bounded(self, table, key, where, default, low, high, kind: type = int):
        value = self.typed(table, key, where, kind, default)
        if not low <= value <= high:
            raise self.error(f"{where}.{key}", f"must be between {low} and {high}, not {value}")
        return value

    def base_url(self, table: dict[str, Any], where: str, default: str) -> str:
        url = self.typed(table, "base_url", where, str, default).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(f"{where}.base_url", f"{url!r} is not an http(s) URL")
        if parts.username or parts.password or parts.query:
            raise self.error(f"{where}.base_url", "must not carry credentials or a query string")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise self.error(
                f"{where}.base_url", "plain http is only allowed to this machine; use https"
            )
        return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
