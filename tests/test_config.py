"""Config validation: every mistake is one clear message naming the key, and exit status 2."""

from __future__ import annotations

import itertools
import socket
import textwrap
from datetime import datetime, timedelta

import pytest

from worker import cli, config, sources

GOOD = """
[[sources]]
name = "apify"
kind = "apify"
token_env = "APIFY_TOKEN"
every = "5m"
"""


def load(tmp_path, text: str, env=None):
    path = tmp_path / "runsync.toml"
    path.write_text(textwrap.dedent(text))
    return sources.load_settings(path, env={"APIFY_TOKEN": "secret-abc"} if env is None else env)


def test_a_good_config_loads_with_defaults(tmp_path):
    settings = load(tmp_path, GOOD)
    (source,) = settings.sources
    assert source.every == timedelta(minutes=5)
    assert source.base_url == "https://api.apify.com"
    assert source.token.reveal() == "secret-abc"
    assert "secret-abc" not in repr(settings)
    assert settings.database_url is None and settings.database_url_origin == "embedded"
    assert settings.listen == "127.0.0.1:9464"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("token_env", "tokn_env"), "sources.apify.tokn_env: unknown key"),
        (GOOD + "\n[extra]\n", "(top level).extra: unknown key"),
        (GOOD.replace('"5m"', '"5 minutes"'), "sources.apify.every: '5 minutes' is not a duration"),
        (GOOD.replace('"5m"', "5"), "sources.apify.every: must be a str"),
        (GOOD + GOOD, "sources.apify: two sources share this name"),
        (GOOD.replace('kind = "apify"', 'kind = "zapier"'), "sources.apify.kind: 'zapier' is not a known kind"),
        (GOOD.replace('"APIFY_TOKEN"', '"NOPE_TOKEN"'), "environment variable NOPE_TOKEN is not set"),
        (GOOD + 'base_url = "http://api.example.com"', "plain http is only allowed to this machine"),
        (GOOD + 'actor = "a~b"\ntask = "a~c"', "sources.apify.task: give either actor or task"),
        (GOOD + 'every = "1m"', "not valid TOML"),
        (GOOD + 'page_size = 5000', "sources.apify.page_size: must be between 1 and 1000"),
        (GOOD + 'cron = "*/5 * * * *"', "give either every or cron"),
        (GOOD.replace('every = "5m"', 'cron = "*/15 25 * * *"'), "sources.apify.cron: '*/15 25 * * *': hour 25 is outside 0-23"),
        (GOOD.replace('every = "5m"', 'cron = "1 2 3"'), "sources.apify.cron: '1 2 3' has 3 fields; a cron expression has 5"),
        (GOOD.replace('every = "5m"', 'cron = "0 0 30 2 *"'), "sources.apify.cron: '0 0 30 2 *' never fires"),
        (GOOD.replace('every = "5m"', 'cron = ""'), "sources.apify.cron: '' has 0 fields"),
        ("[database]\nurl = 'mysql://x'\n" + GOOD, "is not a postgresql:// URL"),
        ("", "sources: define at least one [[sources]] table"),
    ],
)  # fmt: skip
def test_mistakes_name_the_key(tmp_path, text, message):
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, text)
    assert message in str(caught.value)
    assert str(tmp_path) in str(caught.value)


def test_cron_schedules(tmp_path):
    (source,) = load(tmp_path, GOOD.replace('every = "5m"', 'cron = " 0 12 * * mon-fri "')).sources
    assert (source.cron, source.every, source.schedule) == (
        "0 12 * * mon-fri",
        None,
        "cron 0 12 * * mon-fri",
    )
    (source,) = load(tmp_path, GOOD.replace('every = "5m"', 'cron = "@daily"')).sources
    assert source.cron == "@daily"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("*/15 25 * * *", "sources.apify.cron: '*/15 25 * * *': hour 25 is outside 0-23"),
        ("1 2 3", "sources.apify.cron: '1 2 3' has 3 fields; a cron expression has 5"),
    ],
)
def test_check_config_exits_2_naming_a_bad_cron_expression(
    tmp_path, monkeypatch, capsys, expression, message
):
    path = tmp_path / "runsync.toml"
    path.write_text(GOOD.replace('every = "5m"', f'cron = "{expression}"'))
    monkeypatch.setenv("APIFY_TOKEN", "apify_api_SECRET123")
    monkeypatch.delenv("RUNSYNC_DATABASE_URL", raising=False)

    assert cli.main(["--config", str(path), "check-config"]) == 2
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert line.startswith(f"runsync: error: {path}: {message}")
    assert "ok" not in out


def test_database_url_precedence_and_redaction(tmp_path):
    path = tmp_path / "runsync.toml"
    path.write_text("[database]\nurl = 'postgresql://u:filepw@db/x'\n" + GOOD)
    env = {"APIFY_TOKEN": "t0ken", "RUNSYNC_DATABASE_URL": "postgresql://u:envpw@db/x"}
    assert sources.load_settings(path, env=env).database_url_origin == "RUNSYNC_DATABASE_URL"
    cli_url = sources.load_settings(path, env=env, database_url="postgresql://u:clipw@db/x")
    assert cli_url.database_url_origin == "--database-url"
    assert "clipw" in cli_url.secrets()
    assert config.redact_url("postgresql://u:clipw@db:5433/x") == "postgresql://u:***@db:5433/x"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("250ms", 0.25)],
)
def test_durations(text, seconds):
    assert config.parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "-5m", "0s", "5 minutes", "1h 2x"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        config.parse_duration(text)


def test_check_config_exits_2_naming_a_missing_token_variable(tmp_path, monkeypatch, capsys):
    path = tmp_path / "runsync.toml"
    path.write_text(GOOD)
    monkeypatch.delenv("APIFY_TOKEN", raising=False)

    assert cli.main(["--config", str(path), "check-config"]) == 2
    assert "environment variable APIFY_TOKEN is not set" in capsys.readouterr().err


def test_check_config_prints_the_plan_without_secrets(tmp_path, monkeypatch, capsys, database_url):
    path = tmp_path / "runsync.toml"
    path.write_text(GOOD + 'actor = "janedoe~my-actor"\n')
    monkeypatch.setenv("APIFY_TOKEN", "apify_api_SECRET123")
    # The test server trusts every password, so the URL can carry one.
    url = database_url.replace("postgresql://postgres:@", "postgresql://postgres:dbpassword42@")

    assert cli.main(["check-config", "--config", str(path), "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert "https://api.apify.com/v2/acts/janedoe~my-actor/runs" in out
    assert "every 5m" in out and "$APIFY_TOKEN (set)" in out
    assert "postgresql://postgres:***@" in out and "reachable" in out
    assert "SECRET123" not in out and "dbpassword42" not in out


def test_check_config_prints_each_sources_next_ticks(tmp_path, monkeypatch, capsys):
    path = tmp_path / "runsync.toml"
    weekly = GOOD.replace('every = "5m"', 'cron = "0 12 * * 0"')
    path.write_text(weekly + GOOD.replace('name = "apify"', 'name = "often"'))
    monkeypatch.setenv("APIFY_TOKEN", "apify_api_SECRET123")
    monkeypatch.delenv("RUNSYNC_DATABASE_URL", raising=False)

    assert cli.main(["--config", str(path), "check-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ticks = {}
    for line, after in itertools.pairwise(lines):
        if line.startswith("source "):
            assert after.startswith("  next ticks (UTC): "), after
            listed = after.removeprefix("  next ticks (UTC): ").split(" (")[0].split(", ")
            ticks[line.split(":")[0]] = [datetime.fromisoformat(t) for t in listed]
    sundays, often = ticks["source apify"], ticks["source often"]
    assert len(sundays) == 3 and all(t.isoweekday() == 7 and t.hour == 12 for t in sundays)
    assert [b - a for a, b in itertools.pairwise(sundays)] == [timedelta(days=7)] * 2
    assert len(often) == 3
    assert [b - a for a, b in itertools.pairwise(often)] == [timedelta(minutes=5)] * 2


def test_check_config_exits_1_when_the_database_is_unreachable(tmp_path, monkeypatch, capsys):
    path = tmp_path / "runsync.toml"
    path.write_text(GOOD)
    monkeypatch.setenv("APIFY_TOKEN", "apify_api_SECRET123")
    url = "postgresql://runsync:dbpassword42@127.0.0.1:9/analytics"

    assert cli.main(["check-config", "--config", str(path), "--database-url", url]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to the database at postgresql://runsync:***@127.0.0.1:9/analytics" in err
    assert "dbpassword42" not in err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert cli.main(["--config", str(tmp_path / "nope.toml"), "status"]) == 2
    assert "nope.toml not found" in capsys.readouterr().err


RAKER = """
[[sources]]
name = "raker"
kind = "rakerone"
token_env = "APIFY_TOKEN"
"""


def test_rakerone_sources(tmp_path):
    one = load(tmp_path, RAKER + 'project = "proj_1"\n').sources[0]
    assert one.projects == ("proj_1",) and one.base_url == "https://app.raker.one"
    assert one.terminal_statuses == {"completed", "failed", "cancelled"}
    many = load(tmp_path, RAKER + 'projects = ["a", "b"]\nterminal_statuses = ["Done"]\n').sources[
        0
    ]
    assert many.projects == ("a", "b") and many.terminal_statuses == {"done"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (RAKER, "sources.raker.project: required for kind 'rakerone'"),
        (RAKER + 'project = "a"\nprojects = ["b"]', "give either project or projects"),
        (RAKER + 'projects = ["a", "a"]', "lists a project twice"),
        (RAKER + 'projects = "a"', "must be a list of non-empty strings"),
        (RAKER + 'project = "a"\nactor = "x~y"', "sources.raker.actor: not a key of kind 'rakerone'"),
        (GOOD + 'project = "a"', "sources.apify.project: not a key of kind 'apify'"),
    ],
)  # fmt: skip
def test_rakerone_mistakes_name_the_key(tmp_path, text, message):
    with pytest.raises(config.ConfigError, match=message):
        load(tmp_path, text)


WEBHOOK = GOOD + 'webhook_secret_env = "APIFY_WEBHOOK_SECRET"\n'
WEBHOOK_SECRET = "whsec-0123456789abcdef"


def test_webhook_secret_and_readiness_threshold(tmp_path):
    settings = load(
        tmp_path,
        '[http]\nunhealthy_after = "90s"\n' + WEBHOOK,
        env={"APIFY_TOKEN": "secret-abc", "APIFY_WEBHOOK_SECRET": f" {WEBHOOK_SECRET}\n"},
    )
    (source,) = settings.sources
    assert source.webhook_secret_env == "APIFY_WEBHOOK_SECRET"
    assert source.webhook_secret.reveal() == WEBHOOK_SECRET
    assert WEBHOOK_SECRET in settings.secrets()  # so the log scrubber knows it
    assert WEBHOOK_SECRET not in repr(settings)
    assert settings.unhealthy_after == timedelta(seconds=90)
    defaults = load(tmp_path, GOOD)
    assert defaults.unhealthy_after == timedelta(minutes=15)
    assert defaults.sources[0].webhook_secret is None


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (WEBHOOK, {}, "sources.apify.webhook_secret_env: environment variable APIFY_WEBHOOK_SECRET is not set"),
        (WEBHOOK, {"APIFY_WEBHOOK_SECRET": "short"}, "shorter than 16 characters"),
        (GOOD + 'webhook_secret_env = "not a name"\n', {}, "sources.apify.webhook_secret_env: must name"),
        (RAKER + 'project = "a"\nwebhook_secret_env = "APIFY_WEBHOOK_SECRET"\n',
         {"APIFY_WEBHOOK_SECRET": WEBHOOK_SECRET}, "sources.raker.webhook_secret_env: not a key of kind 'rakerone'"),
        ('[http]\nunhealthy_after = "soon"\n' + GOOD, {}, "http.unhealthy_after: 'soon' is not a duration"),
        ("[http]\nunhealthy_after = 15\n" + GOOD, {}, "http.unhealthy_after: must be a str"),
    ],
)  # fmt: skip
def test_webhook_and_readiness_mistakes_name_the_key(tmp_path, text, env, message):
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, text, env={"APIFY_TOKEN": "secret-abc", **env})
    assert message in str(caught.value)
    assert "short\n" not in str(caught.value) and "'short'" not in str(caught.value)


def test_check_config_exits_2_naming_a_missing_webhook_secret(tmp_path, monkeypatch, capsys):
    path = tmp_path / "runsync.toml"
    path.write_text(WEBHOOK)
    monkeypatch.setenv("APIFY_TOKEN", "apify_api_SECRET123")
    monkeypatch.delenv("APIFY_WEBHOOK_SECRET", raising=False)

    assert cli.main(["--config", str(path), "check-config"]) == 2
    assert "environment variable APIFY_WEBHOOK_SECRET is not set" in capsys.readouterr().err


HUB = """
[[sources]]
name = "hub"
kind = "github"
token_env = "GITHUB_TOKEN"
repository = "octo-org/hello.world"
"""


def test_github_sources(tmp_path):
    env = {"GITHUB_TOKEN": "ghp_secret", "HUB_SECRET": WEBHOOK_SECRET}
    (hub,) = load(tmp_path, HUB, env=env).sources
    assert (hub.repository, hub.workflow, hub.webhook_secret) == (
        "octo-org/hello.world",
        None,
        None,
    )
    assert hub.token.reveal() == "ghp_secret" and "ghp_secret" not in repr(hub)
    text = HUB + 'workflow = "ci.yml"\nwebhook_secret_env = "HUB_SECRET"\n'
    (hub,) = load(tmp_path, text, env=env).sources
    assert hub.workflow == "ci.yml" and hub.webhook_secret.reveal() == WEBHOOK_SECRET
    assert WEBHOOK_SECRET not in repr(hub)
    # A workflow's id is a number, and the TOML may say it as one.
    (hub,) = load(tmp_path, HUB + "workflow = 161335\n", env=env).sources
    assert hub.workflow == "161335"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HUB.replace('repository = "octo-org/hello.world"', ""), "sources.hub.repository: required for kind 'github': \"owner/name\""),
        (HUB.replace("octo-org/hello.world", "hello-world"), "sources.hub.repository: 'hello-world' is not \"owner/name\""),
        (HUB + 'workflow = ".github/workflows/ci.yml"', "sources.hub.workflow: a workflow's id or file name, e.g. ci.yml"),
        (HUB + 'workflow = ""', "sources.hub.workflow: a workflow's id or file name, e.g. ci.yml"),
        (HUB + "page_size = 1000", "sources.hub.page_size: must be between 1 and 100, not 1000"),
        (HUB + 'actor = "a~b"', "sources.hub.actor: not a key of kind 'github'"),
        (HUB + 'project = "a"', "sources.hub.project: not a key of kind 'github'"),
        (HUB + 'webhook_secret_env = "HUB_SECRET"', "sources.hub.webhook_secret_env: environment variable HUB_SECRET is not set"),
        (GOOD + 'repository = "a/b"', "sources.apify.repository: not a key of kind 'apify'"),
        (GOOD + 'workflow = "ci.yml"', "sources.apify.workflow: not a key of kind 'apify'"),
    ],
)  # fmt: skip
def test_github_mistakes_name_the_key(tmp_path, text, message):
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, text, env={"APIFY_TOKEN": "secret-abc", "GITHUB_TOKEN": "ghp_secret"})
    assert str(caught.value) == f"{tmp_path / 'runsync.toml'}: {message}"


@pytest.mark.parametrize(
    ("text", "kind", "page_size", "lookback"),
    [
        (GOOD.replace('every = "5m"\n', ""), "apify", 1000, timedelta(days=7)),
        (RAKER + 'project = "p"\n', "rakerone", 1000, timedelta(days=7)),
        # GitHub's pages hold at most 100 runs; a run may be re-run for 30 days.
        (HUB, "github", 100, timedelta(days=30)),
    ],
)
def test_each_kind_has_its_own_defaults(tmp_path, text, kind, page_size, lookback):
    env = {"APIFY_TOKEN": "secret-abc", "GITHUB_TOKEN": "ghp_secret"}
    (source,) = load(tmp_path, text, env=env).sources
    model = sources.upstream(kind).config
    assert type(source) is model and source.kind == kind
    assert source.base_url == sources.upstream(kind).base_url
    assert (source.page_size, source.reconcile_lookback) == (page_size, lookback)
    # The keys every kind has, with the same defaults.
    assert (source.every, source.cron, source.schedule) == (timedelta(minutes=1), None, "every 1m")
    assert (source.concurrency, source.max_retries, source.max_response_mb) == (8, 6, 8)
    assert (source.timeout, source.overlap) == (timedelta(seconds=30), timedelta(seconds=5))
    assert (source.reconcile_every, source.max_requests_per_second) == (timedelta(hours=1), None)
    # Frozen: settings do not change once read.
    with pytest.raises(ValueError, match="frozen"):
        source.page_size = 5


def test_the_registration_carries_each_kinds_model():
    for kind, upstream in sources.UPSTREAMS.items():
        assert issubclass(upstream.config, config.SourceBase)
        assert upstream.config.model_fields["kind"].annotation.__args__ == (kind,)
        assert upstream.config.model_fields["base_url"].default == upstream.base_url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # An unknown key lists the keys of its source's kind.
        (GOOD + 'pagesize = 10', "sources.apify.pagesize: unknown key (known keys: actor, base_url, concurrency, cron, every, kind, max_requests_per_second, max_response_mb, max_retries, name, overlap, page_size, reconcile_every, reconcile_lookback, task, timeout, token_env, webhook_secret_env)"),
        (RAKER + 'project = "p"\npagesize = 10', "sources.raker.pagesize: unknown key (known keys: base_url, concurrency, cron, every, kind, max_requests_per_second, max_response_mb, max_retries, name, overlap, page_size, project, projects, reconcile_every, reconcile_lookback, terminal_statuses, timeout, token_env)"),
        # A misspelt key is told before the key it leaves missing, or a check of several keys.
        (RAKER + 'projetcs = ["a"]', "sources.raker.projetcs: unknown key"),
        (GOOD + 'actor = "a~b"\ntask = "a~c"\ntsak = "a~c"', "sources.apify.tsak: unknown key"),
        (RAKER + 'project = ""', "sources.raker.project: must name a project"),
        (RAKER + "project = 5", "sources.raker.project: must be a str, not 5"),
        # The secrets come from the environment, never from the file.
        (GOOD + 'token = "apify_api_INFILE"', "sources.apify.token: unknown key (known keys: actor,"),
        (GOOD + 'webhook_secret = "whsec-INFILE-0123456789"', "sources.apify.webhook_secret: unknown key"),
        (GOOD.replace('kind = "apify"', 'kind = "zapier"'), "sources.apify.kind: 'zapier' is not a known kind (apify, rakerone, github)"),
        (GOOD.replace('kind = "apify"\n', ""), "sources.apify.kind: required: one of apify, rakerone, github"),
        (GOOD.replace('name = "apify"\n', ""), "sources[1].name: required: letters, digits, '.', '_' or '-'"),
        (GOOD.replace('name = "apify"', "name = 7"), "sources[1].name: must be a str, not 7"),
        (GOOD.replace('name = "apify"', 'name = "my apify"'), "sources.my apify.name: 'my apify' is not a name"),
        (GOOD.replace('token_env = "APIFY_TOKEN"\n', ""), "sources.apify.token_env: required: the environment variable holding the token"),
        (GOOD.replace('"APIFY_TOKEN"', '"apify-api-PASTED"'), "sources.apify.token_env: must name the environment variable holding the token"),
        (GOOD + "concurrency = true", "sources.apify.concurrency: must be an int, not True"),
        (GOOD + 'max_retries = "3"', "sources.apify.max_retries: must be an int, not '3'"),
        (GOOD + "max_requests_per_second = 0", "sources.apify.max_requests_per_second: must be between 0.1 and 1000.0, not 0"),
        (GOOD + 'reconcile_every = "never"', "sources.apify.reconcile_every: 'never' is not a duration"),
        ("sources = [5]", "sources[1]: must be a table, not 5"),
        ("[database]\nmax_connections = 1\n" + GOOD, "database.max_connections: must be between 2 and 1000, not 1"),
        ('[database]\ntakeover_after = "2h"\n' + GOOD, "database.takeover_after: must be between 1s and 1h"),
        ("[database]\npool = 3\n" + GOOD, "database.pool: unknown key (known keys: data_dir, max_connections, takeover_after, url)"),
        ('[http]\nlisten = "9464"\n' + GOOD, "http.listen: '9464' is not host:port"),
        ("[worker]\nmax_passes = 0\n" + GOOD, "worker.max_passes: must be between 1 and 10000, not 0"),
        ("database = 5\n" + GOOD, "database: must be a table, not 5"),
    ],
)  # fmt: skip
def test_pydantics_errors_in_runsyncs_words(tmp_path, text, message):
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, text)
    assert str(caught.value).startswith(f"{tmp_path / 'runsync.toml'}: {message}")
    assert "INFILE" not in str(caught.value) and "PASTED" not in str(caught.value)


def test_a_reconcile_sweep_can_be_switched_off_and_an_overlap_be_none(tmp_path):
    (source,) = load(tmp_path, GOOD + 'reconcile_every = "off"\noverlap = "0"\n').sources
    assert source.reconcile_every is None and source.overlap == timedelta(0)


def test_load_knows_only_the_kinds_it_is_given(tmp_path):
    """config.py knows no upstream: its caller says which kinds there are."""
    from worker.sources.apify import ApifyConfig

    path = tmp_path / "runsync.toml"
    path.write_text(HUB)
    with pytest.raises(
        config.ConfigError, match=r"sources.hub.kind: 'github' is not a known kind \(apify\)"
    ):
        config.load(path, kinds={"apify": ApifyConfig}, env={"GITHUB_TOKEN": "t"})
    path.write_text(GOOD + 'repository = "a/b"\n')
    # With no other kind that has it, a key of GitHub's is simply unknown.
    with pytest.raises(config.ConfigError, match=r"sources\.apify\.repository: unknown key"):
        config.load(path, kinds={"apify": ApifyConfig}, env={"APIFY_TOKEN": "t"})


@pytest.mark.parametrize(
    ("http", "shown"),
    [
        ("", "status page: http://127.0.0.1:9464/"),
        ("status_page = false\n", "status page: off"),
        ('status_page_listen = "10.0.0.5:9470"\n', "status page: http://10.0.0.5:9470/"),
    ],
)
def test_check_config_says_where_the_status_page_is(tmp_path, monkeypatch, capsys, http, shown):
    path = tmp_path / "runsync.toml"
    path.write_text(f"[http]\n{http}" + GOOD)
    monkeypatch.setenv("APIFY_TOKEN", "apify_api_SECRET123")
    monkeypatch.delenv("RUNSYNC_DATABASE_URL", raising=False)

    assert cli.main(["--config", str(path), "check-config"]) == 0
    assert shown in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    ("http", "message"),
    [
        ('status_page = false\nstatus_page_listen = "127.0.0.1:9470"\n',
         "http.status_page_listen: the status page is off (status_page = false)"),
        ('status_page_listen = "127.0.0.1:9464"\n', "http.status_page_listen: is listen itself"),
        ('status_page_listen = "9470"\n', "http.status_page_listen: '9470' is not host:port"),
        ('status_page = "yes"\n', "http.status_page: must be a bool, not 'yes'"),
    ],
)  # fmt: skip
def test_a_wrong_status_page_setting_is_named(tmp_path, monkeypatch, capsys, http, message):
    path = tmp_path / "runsync.toml"
    path.write_text(f"[http]\n{http}" + GOOD)
    monkeypatch.setenv("APIFY_TOKEN", "apify_api_SECRET123")

    assert cli.main(["--config", str(path), "check-config"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("key", ["listen", "status_page_listen"])
def test_an_address_in_use_is_named_and_exits_2(tmp_path, monkeypatch, capsys, key):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    other = "" if key == "listen" else 'listen = "127.0.0.1:0"\n'
    path = tmp_path / "runsync.toml"
    path.write_text(f'[http]\n{other}{key} = "127.0.0.1:{port}"\n' + GOOD)
    monkeypatch.setenv("APIFY_TOKEN", "apify_api_SECRET123")
    try:
        assert cli.main(["--config", str(path), "run"]) == 2
    finally:
        taken.close()
    message = f"cannot listen on 127.0.0.1:{port} ([http] {key}): "
    assert message in capsys.readouterr().err
