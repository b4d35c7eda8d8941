"""`python -m service.reports` in a real subprocess on a migrated SQLite database with the
known usage records: the table, the CSV file, the tenant filter and bad input."""

import csv
import os
import subprocess
import sys

import pytest

from report_seed import seed
from service.core.state import reset_process_state


@pytest.fixture(scope="module")
def db_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{tmp / 'namm.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("NAMM_DATABASE__URL", url)
    reset_process_state()
    from service.api.keys import get_or_create_tenant
    from service.core import migrate
    from service.core.db import session_scope

    migrate.upgrade()
    with session_scope() as s:
        seed(s, get_or_create_tenant(s, "acme").id, get_or_create_tenant(s, "globex").id)
    mp.undo()
    reset_process_state()
    return {**os.environ, "NAMM_DATABASE__URL": url}, tmp


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "service.reports", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_table_by_policy_for_one_tenant(db_env):
    env, _ = db_env
    r = cli(env, "--from", "2026-03-01", "--to", "2026-03-31", "--group-by", "policy",
            "--tenant", "acme")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cost report 2026-03-01T00:00:00+00:00 .. 2026-04-01T00:00:00+00:00")
    rows = {line.split()[0]: line.split() for line in lines[3:] if line and not line.startswith("-")}
    assert rows["h2o"][-2:] == ["-0.000050", "est."]  # the loss, marked as an estimate
    assert rows["full"][-1] == "0.000000"  # measured: no 'est.'
    assert rows["total"][1] == "4" and rows["total"][7] == "0.004500"
    assert "1 job(s) have no full-cache figure" in r.stdout
    assert ("measured on 1 full-cache rerun(s): saved 0.000900 USD, 1 with the same answer, "
            "2.0 s vs 3.0 s") in r.stdout


def test_csv_file_for_every_tenant(db_env):
    env, tmp = db_env
    out = tmp / "by-model.csv"
    r = cli(env, "--from", "2026-03-01", "--to", "2026-03-31", "--group-by", "model",
            "--csv", str(out))
    assert r.returncode == 0, r.stderr
    rows = {row["model"]: row for row in csv.DictReader(out.open())}
    assert rows["m1"]["jobs"] == "4"  # three of acme's and globex's one
    assert rows["total"]["cost_micro_usd"] == str(4500 + 99_999)


def test_bad_input_exits_2_with_a_message(db_env):
    env, _ = db_env
    r = cli(env, "--tz", "Nowhere/Else")
    assert r.returncode == 2 and "time zone" in r.stderr
    r = cli(env, "--tenant", "nobody")
    assert r.returncode == 2 and "no tenant" in r.stderr


def _without_settings(tmp_path):
    # no NAMM_ variable: the defaults, as for a new user; tmp_path has no .env either
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAMM_")}
    return env


def test_from_another_folder_without_settings_creates_nothing_and_says_what_to_set(tmp_path):
    """Issue 23 #15: the default sqlite:///var/namm.db, relative to a folder with no database,
    used to be created empty and end in a traceback ("no such table")."""
    r = subprocess.run([sys.executable, "-m", "service.reports"], cwd=tmp_path,
                       env=_without_settings(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no database file at")
    assert "sqlite:///var/namm.db" in lines[0] and "NAMM_DATABASE__URL" in lines[0]
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # neither var/ nor var/namm.db


def test_an_unmigrated_database_is_named_with_its_password_masked(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    env = {**_without_settings(tmp_path), "NAMM_DATABASE__URL": f"sqlite:///{empty}"}
    r = cli_in(tmp_path, env)
    assert r.returncode == 2 and "not migrated" in r.stderr and "usage_records" in r.stderr
    assert empty.stat().st_size == 0  # opened read-only: nothing written
    env["NAMM_DATABASE__URL"] = "postgresql+psycopg://namm:s3cret@127.0.0.1:5432/no_such_db_x"
    r = cli_in(tmp_path, env)
    assert r.returncode == 2 and "cannot open database" in r.stderr
    assert "s3cret" not in r.stderr and "namm:***@127.0.0.1" in r.stderr
    assert "Traceback" not in r.stderr


def cli_in(cwd, env, *args):
    return subprocess.run([sys.executable, "-m", "service.reports", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
