"""One upstream, one package: the shared simulator (worker/simulator/) names no upstream, each
upstream's simulation lives in its package, and `runsync simulate` serves what the registry
holds."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from helpers import eventually

from worker import simulator, sources
from worker.simulator import Endpoints, Simulator
from worker.simulator.contract import dialect, dialects
from worker.sources.apify.simulator import ApifyWorld
from worker.sources.github.simulator import GitHubWorld
from worker.sources.rakerone.simulator import RakerWorld

SHARED = Path(simulator.__file__).parent
SHARED_MODULES = sorted(SHARED.rglob("*.py"))
ROOT = SHARED.parent.parent  # the repository (the folder worker/ is in)


def imported(source: str, module: str) -> set[str]:
    """Every module `source` (the text of `module`, a dotted name) imports, wherever in it (under
    TYPE_CHECKING too), and every module it names to importlib.import_module or __import__."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package up
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                found.add(str(first.value))
    return found


def module_of(path: Path) -> str:
    """The dotted name of a module of the shared simulator (its package's, for an __init__.py,
    as a relative import inside it counts from the package)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts if path.name != "__init__.py" else (*parts[:-1], "__init__"))


def test_the_shared_simulator_imports_no_upstream_package() -> None:
    assert {p.name for p in SHARED_MODULES} >= {"__init__.py", "contract.py", "faults.py"}
    for path in SHARED_MODULES:
        found = imported(path.read_text(), module_of(path))
        upstream = sorted(
            m for m in found if m == "worker.sources" or m.startswith("worker.sources.")
        )
        assert not upstream, f"{path.relative_to(ROOT)} imports {upstream}"


def test_the_boundary_check_sees_every_way_of_importing() -> None:
    """The check above, on a module that imports the registry in each way it could."""
    source = (
        "import worker.sources.github\n"
        "from worker import sources\n"
        "from ..sources import apify\n"
        "if TYPE_CHECKING:\n    from worker.sources.rakerone.simulator import RakerWorld\n"
        "importlib.import_module('worker.sources.apify.simulator')\n"
    )
    assert imported(source, "worker.simulator.faults") >= {
        "worker.sources.github",
        "worker.sources",
        "worker.sources.apify",
        "worker.sources.rakerone.simulator",
        "worker.sources.apify.simulator",
    }


def test_the_shared_simulator_names_no_upstream() -> None:
    """Not in code, nor in a docstring or comment: no registered upstream's kind or name."""
    names = {kind for kind in sources.UPSTREAMS} | {demo.name for demo in sources.demos()}
    names |= {"raker"}  # RakerOne's worlds' and endpoints' prefix
    for path in SHARED_MODULES:
        text = path.read_text().lower()
        named = sorted(name for name in names if name.lower() in text)
        assert not named, f"{path.relative_to(ROOT)} names {named}"


def modules_after(statement: str) -> set[str]:
    """The worker modules a fresh interpreter has loaded after `statement`."""
    listing = "import sys; print('\\n'.join(m for m in sys.modules if m.startswith('worker')))"
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    done = subprocess.run(
        [sys.executable, "-c", f"{statement}; {listing}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
    )
    return set(done.stdout.split())


def test_importing_the_shared_simulator_loads_no_upstream() -> None:
    loaded = modules_after(
        "import worker.simulator, worker.simulator.contract, worker.simulator.faults, "
        "worker.simulator.seconds"
    )
    assert "worker.simulator" in loaded
    assert not {m for m in loaded if m.startswith("worker.sources")}


def test_the_registry_loads_no_simulator_until_a_demo_is_made() -> None:
    """The daemon imports worker.sources: each upstream's simulator (aiohttp's server, a thousand
    lines) is imported only when `runsync simulate` makes its demo world."""
    loaded = modules_after("import worker.sources")
    assert "worker.sources.github" in loaded
    assert not {m for m in loaded if "simulator" in m}
    made = modules_after("import worker.sources as s; [make() for make in s.demo_worlds(2, 1)]")
    for kind in sources.UPSTREAMS:
        assert {m for m in made if m.startswith(f"worker.sources.{kind}.simulator")}, kind


def test_every_upstream_simulates_itself_in_its_own_package() -> None:
    """Each registered upstream has a demo, and its world and endpoints live in its package."""
    assert sources.demos() == [u.demo for u in sources.UPSTREAMS.values()]
    for kind, upstream in sources.UPSTREAMS.items():
        assert upstream.demo is not None, kind
        world = upstream.demo.world(4, 1)
        endpoints = world.endpoints()
        for made in (world, endpoints):
            assert type(made).__module__.startswith(f"worker.sources.{kind}.simulator"), made
        assert Endpoints in type(endpoints).__mro__ and type(endpoints) in dialects()


def test_the_demo_worlds_are_the_ones_runsync_simulate_always_served() -> None:
    """Same sizes and seeds as before the registry made them: Apify's `runs` runs, RakerOne's
    proj_alpha and proj_beta with half as many each, GitHub's octo-org/octo-app with half."""
    apify, raker, hub = (make() for make in sources.demo_worlds(10, 3))
    assert isinstance(apify, ApifyWorld) and isinstance(raker, RakerWorld)
    assert isinstance(hub, GitHubWorld)
    ids = [item["id"] for item in apify.list_items()]
    assert ids == [item["id"] for item in ApifyWorld(runs=10, seed=3).list_items()]
    direct = RakerWorld(projects={"proj_alpha": 5, "proj_beta": 5}, seed=3)
    for project in ("proj_alpha", "proj_beta"):
        listed = [item["id"] for item in raker.list_items(project)]
        assert len(listed) == 5
        assert listed == [item["id"] for item in direct.list_items(project)]
    assert hub.repos == ["octo-org/octo-app"]
    runs = [run["id"] for run in hub.runs("octo-org/octo-app")]
    assert len(runs) == 5
    assert runs == [
        r["id"] for r in GitHubWorld({"octo-org/octo-app": 5}, seed=3).runs("octo-org/octo-app")
    ]


async def test_serve_serves_the_world_of_every_registered_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[Simulator] = []

    class Recorded(Simulator):
        def __init__(self, *worlds: simulator.World, **options: object) -> None:
            super().__init__(*worlds, **options)  # type: ignore[arg-type]
            built.append(self)

    monkeypatch.setattr(simulator, "Simulator", Recorded)
    server = asyncio.create_task(
        simulator.serve(sources.demo_worlds(4, 1), host="127.0.0.1", port=0, token="t")
    )
    try:
        served = await eventually(lambda: built and built[0].base_url and built[0])
        kinds = [k for k, u in sources.UPSTREAMS.items() if u.demo is not None]
        assert len(served.worlds) == len(kinds) == len(sources.UPSTREAMS)
        for kind, world in zip(kinds, served.worlds, strict=True):
            assert type(world).__module__.startswith(f"worker.sources.{kind}.simulator")
        routes = {route.name for route in served.app.router.routes()}
        for world in served.worlds:
            assert {name for *_, name in world.endpoints().routes()} <= routes
        headers = {"Authorization": "Bearer t"}
        async with aiohttp.ClientSession(served.base_url, headers=headers) as http:
            for path in ("/v2/actor-runs", "/api/projects/proj_alpha/action-runs",
                         "/repos/octo-org/octo-app/actions/runs"):  # fmt: skip
                async with http.get(path) as response:
                    assert response.status == 200, path
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


async def test_serve_serves_only_what_the_registry_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream not registered (or without a demo) is not served: its paths are 404s."""
    monkeypatch.setattr(sources, "UPSTREAMS", {"rakerone": sources.UPSTREAMS["rakerone"]})
    worlds = [make() for make in sources.demo_worlds(4, 1)]
    assert [type(w) for w in worlds] == [RakerWorld]
    sim = Simulator(*worlds, token="t")
    await sim.start()
    try:
        async with aiohttp.ClientSession(sim.base_url, headers={"Authorization": "Bearer t"}) as c:
            for path, status in (("/api/projects/proj_alpha/action-runs", 200),
                                 ("/v2/actor-runs", 404),
                                 ("/repos/octo-org/octo-app/actions/runs", 404)):  # fmt: skip
                async with c.get(path) as response:
                    assert response.status == status, path
            # The simulator's own control answers with no default upstream served.
            async with c.get("/_simulator/requests") as response:
                assert response.status == 200
                assert (await response.json())["rate_limited"] == 0
        async with (
            aiohttp.ClientSession(sim.base_url) as anonymous,
            anonymous.get("/_simulator/requests") as response,
        ):
            assert response.status == 401
    finally:
        await sim.stop()


def test_a_simulator_serves_one_world_an_upstream() -> None:
    with pytest.raises(ValueError, match="two worlds of one upstream"):
        Simulator(RakerWorld(projects={"p": 1}), RakerWorld(projects={"q": 1}))
    hub = GitHubWorld({"o/a": 1})
    sim = Simulator(ApifyWorld(runs=1), hub)
    assert sim.world(GitHubWorld) is hub
    with pytest.raises(KeyError, match="RakerWorld"):
        sim.world(RakerWorld)


def test_dialects_do_not_overlap_and_one_is_the_default() -> None:
    """Which upstream's error format answers for a path must not depend on import order."""
    known = dialects()
    with pytest.raises(ValueError, match="overlap"):

        class _Clash(Endpoints):
            paths = ("/api/projects/",)  # under RakerOne's /api/

    with pytest.raises(ValueError, match="both the default"):

        class _SecondDefault(Endpoints):
            paths = ("/elsewhere/",)
            default = True

    assert dialects() == known  # neither was registered
    assert sum(kind.default for kind in known) == 1
    default = next(kind for kind in known if kind.default)
    assert dialect("/nothing/claims/this") is default
    for kind in known:
        for prefix in kind.paths:
            assert dialect(prefix + "x") is kind
