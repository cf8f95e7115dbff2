"""Every setting is read once, at an edge, and `flywheel config` lists every one of them, grouped by stage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.environment import GROUPS, Environment, variables
from flywheel.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["flywheel", "schemas", "streams", "warehouse", "flows", "infra", "bench"]
PREFIXES = {"FLYWHEEL_"} | {g.prefix for g in GROUPS}


def _mentioned() -> dict[str, list[str]]:
    """Every FLYWHEEL_* name the code, its docs (docs/ included) and the README mention, with where."""
    found: dict[str, list[str]] = {}
    files = [p for d in SOURCES for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".md", ".yaml")]
    for path in files + [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").glob("*.md")]:
        for name in re.findall(r"FLYWHEEL_[A-Z0-9_]+", path.read_text(encoding="utf-8")):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_variable_the_code_mentions_is_a_setting_flywheel_config_lists() -> None:
    res = CliRunner().invoke(main, ["config"], env={})
    assert res.exit_code == 0, res.output
    listed = {line.split()[0] for line in res.output.splitlines() if line.startswith("FLYWHEEL_")}
    assert listed == variables()
    unknown = {name: where for name, where in _mentioned().items() if name not in listed and name not in PREFIXES}
    assert unknown == {}, f"mentioned but not a setting `flywheel config` lists: {unknown}"


def test_config_groups_settings_by_stage_with_their_values() -> None:
    res = CliRunner().invoke(main, ["config"], env={"FLYWHEEL_DRIFT_MIN_SAMPLES": "321",
                                                    "FLYWHEEL_LAKE_MIN_FILES": "4"})
    assert res.exit_code == 0, res.output
    for g in GROUPS:
        assert f"# {g.title}" in res.output
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.startswith("FLYWHEEL_")}
    assert " 321 " in lines["FLYWHEEL_DRIFT_MIN_SAMPLES"] and "(default: 200)" in lines["FLYWHEEL_DRIFT_MIN_SAMPLES"]
    assert " 4 " in lines["FLYWHEEL_LAKE_MIN_FILES"]
    drift_only = CliRunner().invoke(main, ["config", "--stage", "drift", "--format", "json"], env={})
    assert drift_only.exit_code == 0 and all('"stage": "drift"' in ln for ln in drift_only.output.splitlines())


def test_a_mistyped_boolean_is_an_error_not_false() -> None:
    with pytest.raises(ConfigError, match="FLYWHEEL_DRIFT_CACHE='ture' is not a valid bool") as err:
        Environment.load({"FLYWHEEL_DRIFT_CACHE": "ture"})
    assert err.value.variable == "FLYWHEEL_DRIFT_CACHE"
    assert Environment.load({"FLYWHEEL_DRIFT_CACHE": "off"}).drift.cache is False
    assert Environment.load({"FLYWHEEL_DRIFT_CACHE": "Yes"}).drift.cache is True
    res = CliRunner().invoke(main, ["drift", "report"], env={"FLYWHEEL_DRIFT_CACHE": "ture"})
    assert res.exit_code == 1 and "Error: FLYWHEEL_DRIFT_CACHE='ture' is not a valid bool" in res.output


def test_a_setting_that_does_not_parse_says_what_to_set_it_to() -> None:
    cases = {"FLYWHEEL_DRIFT_CACHE": ("ture", "set it to 1/true/yes/on or 0/false/no/off, or unset it for the "
                                              "default (True)"),
             "FLYWHEEL_PARTITIONS": ("many", "set it to a whole number, or unset it for the default (3)"),
             "FLYWHEEL_EVAL_PASS_THRESHOLD": ("half", "set it to a finite number, or unset it for the default (0.5)")}
    for var, (raw, fix) in cases.items():
        with pytest.raises(ConfigError) as err:
            Environment.load({var: raw})
        assert f"{var}={raw!r} is not a valid" in str(err.value) and fix in str(err.value), str(err.value)
        assert "`flywheel config` lists every setting" in str(err.value) and err.value.variable == var


def test_the_lake_is_a_local_path_or_an_s3_uri_and_other_urls_are_refused() -> None:
    """`s3://bucket/prefix` is a lake on object storage; any other URL would become a local directory (`gs:`)."""
    with pytest.raises(ConfigError, match="FLYWHEEL_LAKE: 'gs://bucket/lake'") as err:
        Environment.load({"FLYWHEEL_LAKE": "gs://bucket/lake"})
    assert err.value.variable == "FLYWHEEL_LAKE"
    assert Environment.load({"FLYWHEEL_LAKE": "/srv/flywheel/lake"}).core.lake == "/srv/flywheel/lake"
    assert not Environment.load({"FLYWHEEL_LAKE": "/srv/flywheel/lake"}).core.lake_location.remote
    s3 = Environment.load({"FLYWHEEL_LAKE": "s3://bucket/lake/", "FLYWHEEL_LAKE_S3_ENDPOINT": "http://127.0.0.1:9000",
                           "FLYWHEEL_LAKE_S3_ALLOW_HTTP": "true", "FLYWHEEL_LAKE_S3_REGION": "eu-west-1"}).core
    where = s3.lake_location
    assert where.remote and where.uri == "s3://bucket/lake" and where.join("inferences") == "s3://bucket/lake/inferences"
    assert where.options["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and where.options["AWS_REGION"] == "eu-west-1"
    # Commits are safe from several hosts only by conditional put: never by delta-rs's unsafe rename.
    assert where.options["AWS_S3_ALLOW_UNSAFE_RENAME"] == "false" and where.options["aws_conditional_put"] == "etag"
    with pytest.raises(ConfigError, match="plain http") as err:
        Environment.load({"FLYWHEEL_LAKE": "s3://bucket/lake", "FLYWHEEL_LAKE_S3_ENDPOINT": "http://10.0.0.5:9000"})
    assert err.value.variable == "FLYWHEEL_LAKE_S3_ALLOW_HTTP"
    with pytest.raises(ConfigError, match="names no bucket"):
        Environment.load({"FLYWHEEL_LAKE": "s3:///lake"})
    # The datasets' root is opened the same way: the same refusal, naming its own variable.
    with pytest.raises(ConfigError, match="FLYWHEEL_DATASETS_ROOT='gs://bucket/ds' is a URL") as err:
        Environment.load({"FLYWHEEL_DATASETS_ROOT": "gs://bucket/ds"})
    assert err.value.variable == "FLYWHEEL_DATASETS_ROOT"


def test_the_environment_is_read_only_at_the_edges() -> None:
    """Library code takes settings as arguments: only the CLI, the flows, the edge module and the SDK's
    constructor (an application's edge) read the environment."""
    edges = {"flywheel/environment.py", "flywheel/cli.py", "streams/client.py",
             "warehouse/datasets/api.py"}  # the Python API an ML team calls: its edge, like the SDK
    edge_dirs = ("flywheel/commands/", "flows/")
    offenders = []
    for d in ("flywheel", "schemas", "streams", "warehouse", "flows", "infra"):
        for path in (ROOT / d).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            if rel in edges or rel.startswith(edge_dirs):
                continue
            text = path.read_text(encoding="utf-8")
            for n, line in enumerate(text.splitlines(), 1):
                # Reading a value is what counts; handing the whole environment to a child process is not.
                if re.search(r"\.from_env\(|Environment\.load\(|os\.environ\.get\(|os\.environ\[|os\.getenv", line) \
                        and not line.lstrip().startswith(("def ", "#", '"', "`")) and "env_settings(" not in line:
                    offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []
