"""auth.conf, the admin credentials of a locked cluster (cogs/adminauth.py), and the
checks `cogs acl apply` makes before it touches any node."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from cogs import adminauth
from cogs.adminauth import AdminAuth
from cogs.cli import main
from cogs.errors import ConfigError
from cogs.scale import _locked
from cogs.settings import load_settings

TRICKY = ['plain-password-1', 'with "quotes" and \\ backslash\\', "spaces  and ünïcödé ✓", '\\"\\"\\ long enough', "#not-a-comment"]


@pytest.mark.parametrize("pw", TRICKY)
def test_auth_conf_round_trips_any_printable_password(tmp_path: Path, pw: str) -> None:
    path = adminauth.write(tmp_path, AdminAuth(pw))
    assert adminauth.read(path) == AdminAuth(pw)
    text = path.read_text()
    assert "masteruser default\n" in text
    assert text.count("\nmasterauth ") == 1


def test_auth_conf_is_written_0600_whatever_the_umask_and_replaces_an_open_one(tmp_path: Path) -> None:
    (tmp_path / "auth.conf").write_text("old")
    (tmp_path / "auth.conf").chmod(0o644)
    old = os.umask(0)
    try:
        path = adminauth.write(tmp_path, AdminAuth("a-long-password"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["auth.conf"]  # no temporary file left


def test_reading_refuses_a_file_others_may_read_and_names_it(tmp_path: Path) -> None:
    path = adminauth.write(tmp_path, AdminAuth("a-long-password"))
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=f"mode 0640.*chmod 600 {path}"):
        adminauth.read(path)
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope.conf'}: no such file"):
        adminauth.read(tmp_path / "nope.conf")
    assert adminauth.read_dir(tmp_path / "elsewhere") is None  # no file: not locked


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("masteruser default\n", "no masterauth line"),
        ('masterauth "a-long-password"\n', "no masteruser line"),
        ('masteruser default\nmasterauth unquoted-password\n', ":2: not a line cogs writes"),
        ('masteruser default\nmasterauth "a"b"\n', ":2: an unescaped quote"),
        ('masteruser default\nmasterauth "a\\nb"\n', ":2: a bad escape"),
        ('masteruser bob\nmasterauth "a-long-password"\n', "cogs locks the default user only"),
        ("requirepass x\n", ":1: not a line cogs writes"),
    ],
)  # fmt: skip
def test_a_bad_auth_conf_is_a_clear_error_naming_file_and_line(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"^/d/auth.conf.*{problem}"):
        adminauth.parse(text, "/d/auth.conf")


def test_passwords_are_long_printable_and_never_shown() -> None:
    with pytest.raises(ConfigError, match="at least 12"):
        adminauth.check_password("x", "short")
    with pytest.raises(ConfigError, match="control characters"):
        adminauth.check_password("x", "a-long-password\nrequirepass")
    assert "secret-password" not in repr(AdminAuth("secret-password"))


def test_settings_take_an_auth_file_only_when_given_no_credentials(tmp_path: Path) -> None:
    path = adminauth.write(tmp_path, AdminAuth("the-admin-password"))
    kw = load_settings(auth_file=path).connection_kwargs()
    assert (kw["username"], kw["password"]) == ("default", "the-admin-password")
    kw = load_settings(auth_file=path, username="cogs-proxy", password="p" * 12).connection_kwargs()
    assert (kw["username"], kw["password"]) == ("cogs-proxy", "p" * 12)
    assert "password" not in load_settings(auth_file=path, url="redis://u:pw@h:1").connection_kwargs()
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_settings(auth_file=path).connection_kwargs()


def test_redis_refusals_are_said_short() -> None:
    hello = "HELLO must be called with the client already authenticated, otherwise the HELLO AUTH ..."
    assert adminauth.describe(hello) == "NOAUTH authentication required"
    assert adminauth.describe("invalid username-password pair or user is disabled.").startswith("WRONGPASS")
    assert "is missing" in adminauth.refused(Path("/nowhere/auth.conf"), hello)


def test_a_new_nodes_aclfile_says_whether_it_starts_locked() -> None:
    assert _locked("user cogs-proxy on #ab ~cogs:* -@all\nuser default on #cd ~* &* +@all\n")
    assert not _locked("user default on nopass ~* &* +@all\n")
    assert not _locked("")


def test_acl_apply_refuses_bad_input_before_asking_any_node(tmp_path: Path) -> None:
    base = ["acl", "apply", "--url", "redis://127.0.0.1:1", "--proxy-password", "p" * 12, "--monitor-password", "m" * 12]
    r = CliRunner().invoke(main, [*base, "--admin-password", "short"])
    assert r.exit_code == 2, r.output
    assert "--admin-password: use a password of at least 12 characters" in r.output
    r = CliRunner().invoke(main, [*base, "--admin-password", "a" * 12, "--cluster-dir", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert f"--cluster-dir {tmp_path}: no cogs cluster there" in r.output
    (tmp_path / "cluster.json").write_text('{"port": 20000, "masters": 3, "replicas": 0, "host": "127.0.0.1"}')
    r = CliRunner().invoke(main, [*base, "--cluster-dir", str(tmp_path)])  # no password and no auth.conf
    assert r.exit_code == 2, r.output
    assert f"{tmp_path / 'auth.conf'}: no such file" in r.output


def test_the_bench_calibration_authenticates_with_an_auth_file(tmp_path: Path) -> None:
    """`cogs bench ... --url` on a locked cluster: redis-benchmark gets the admin's password."""
    from cogs.benchmarks.harness import _benchmark_argv

    path = adminauth.write(tmp_path, AdminAuth("the-admin-password"))
    argv, shown = _benchmark_argv(load_settings(url="redis://127.0.0.1:7000", auth_file=path), "127.0.0.1", 7000, 10)
    assert argv[-2:] == ["-a", "the-admin-password"]
    assert "--user" not in argv  # the default user: -a alone
    assert "the-admin-password" not in shown
    argv, _ = _benchmark_argv(load_settings(url="redis://bob:pw%21@127.0.0.1:7000", auth_file=path), "h", 1, 10)
    assert argv[-2:] == ["-a", "pw!"]  # the URL's credentials win
    assert argv[argv.index("--user") + 1] == "bob"
