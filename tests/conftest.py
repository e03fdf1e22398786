"""Shared fixtures: a real Postgres (embedded, or RUNSYNC_DATABASE_URL) and the simulator on loopback.

Each test gets its own database, copied from a template that the migrations built once.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from helpers import GITHUB_BUDGET, REPO, TOKEN

from worker import config, database, sources, store
from worker.simulator import Simulator
from worker.sources.apify.simulator import ApifyWorld
from worker.sources.github.simulator import GitHubWorld
from worker.sources.rakerone.simulator import RakerWorld

TEMPLATE = "runsync_test_template"

# The fixtures that reach Postgres: a test that uses any of them, even through another fixture,
# is an integration test (or a process-level one, marked so by hand); any other is a unit test.
DATABASE_FIXTURES = {"server_url", "template_url", "database_url", "db"}
LAYERS = ("unit", "integration", "process")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test in one layer: `pytest -m unit` runs in seconds with no database at all."""
    for item in items:
        marked = [layer for layer in LAYERS if item.get_closest_marker(layer)]
        if marked:
            continue
        database = DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))
        item.add_marker("integration" if database else "unit")


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    url = os.environ.get("RUNSYNC_DATABASE_URL")
    if url:
        yield url
        return
    with database.embedded(tmp_path_factory.mktemp("embedded")) as url:
        yield url


@pytest.fixture(scope="session")
def template_url(server_url):
    url = with_database(server_url, TEMPLATE)

    async def build():
        await _admin(
            server_url, f"DROP DATABASE IF EXISTS {TEMPLATE}", f"CREATE DATABASE {TEMPLATE}"
        )
        db = await store.Store.open(url, columns=sources.columns())
        try:
            await db.migrate()
        finally:
            await db.close()

    asyncio.run(build())
    yield url
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {TEMPLATE}"))


@pytest.fixture
def database_url(server_url, template_url):
    name = f"runsync_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    yield with_database(server_url, name)
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def db(database_url):
    opened = await store.Store.open(database_url, columns=sources.columns())
    yield opened
    await opened.close()


@pytest.fixture
def world():
    return ApifyWorld(runs=0, seed=7)


@pytest.fixture
def raker():
    return RakerWorld(projects={"proj_a": 0, "proj_b": 0}, seed=5, max_limit=100)


@pytest.fixture
def hub():
    """A GitHub repository with no runs yet (REPO), and a budget no test comes near: runsync
    paces GitHub by the budget its answers state, so with a large one a test goes at GitHub's
    own cap (15 requests a second), not at a personal token's 5,000 an hour."""
    return GitHubWorld(repos={REPO: 0}, seed=11, rate_limit=GITHUB_BUDGET)


@pytest.fixture
async def sim(world, raker, hub):
    served = Simulator(world, raker, hub, token=TOKEN)
    await served.start()
    yield served
    await served.stop()


@pytest.fixture
def write_config(tmp_path, database_url):
    """Writes a config file of [[sources]] tables and loads it as runsync would."""

    def write(tables: str, *, env: dict[str, str] | None = None) -> config.Settings:
        path = tmp_path / "runsync.toml"
        path.write_text(textwrap.dedent(tables))
        environment = {"APIFY_TOKEN": TOKEN, "RAKER_TOKEN": TOKEN} if env is None else env
        return sources.load_settings(path, database_url=database_url, env=environment)

    return write


@pytest.fixture
def apify_settings(sim, write_config):
    """One Apify source (all runs of the user) against the simulator, with small pages."""

    def settings(
        page_size: int = 10, extra: str = "", listen: str = "127.0.0.1:0"
    ) -> config.Settings:
        return write_config(
            f"""
            [http]
            listen = "{listen}"

            [[sources]]
            name = "apify"
            kind = "apify"
            token_env = "APIFY_TOKEN"
            base_url = "{sim.base_url}"
            page_size = {page_size}
            every = "1s"
            {extra}
            """
        )

    return settings


@pytest.fixture
def raker_settings(sim, write_config):
    """One RakerOne source against the simulator: a project, or several."""

    def settings(projects=("proj_a",), extra: str = "") -> config.Settings:
        listed = ", ".join(f'"{p}"' for p in projects)
        return write_config(
            f"""
            [http]
            listen = "127.0.0.1:0"

            [[sources]]
            name = "raker"
            kind = "rakerone"
            token_env = "RAKER_TOKEN"
            base_url = "{sim.base_url}"
            projects = [{listed}]
            every = "1s"
            {extra}
            """
        )

    return settings
