"""The cooperative web cache with real HTTP: caching proxies in their own processes,
an origin server, real clients (httpx, curl) using the nodes as their HTTP proxy."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from cogs.cluster import LocalCluster
from cogs.nf.webcache.cluster import WebCacheCluster, web_cache
from cogs.nf.webcache.origin import object_body, object_size


@pytest.fixture(scope="module")
def cogs_cache(cluster: LocalCluster) -> Iterator[WebCacheCluster]:
    with web_cache(3, "cogs", cluster.url, origin_delay_s=0.01, state="objects") as c:
        yield c


@pytest.fixture(scope="module")
def icp_cache() -> Iterator[WebCacheCluster]:
    with web_cache(3, "icp", origin_delay_s=0.01) as c:
        yield c


def _get(c: WebCacheCluster, node: int, path: str, **kw: object) -> httpx.Response:
    assert c.origin is not None
    with httpx.Client(proxy=c.proxy_url(node), trust_env=False, timeout=10) as client:
        return client.get(c.origin + path, **kw)  # type: ignore[arg-type]


def _origin_served(c: WebCacheCluster) -> dict[str, int]:
    assert c.origin is not None
    served: dict[str, int] = httpx.get(c.origin + "/origin/stats", trust_env=False).json()
    return served


def test_concurrent_misses_on_any_node_fetch_from_the_origin_once(cluster: LocalCluster) -> None:
    # a slow origin: six requests for one new object arrive on three nodes while the
    # first is still loading it; they wait for it rather than fetch it too
    with web_cache(3, "cogs", cluster.url, origin_delay_s=0.6, state="objects") as c:
        assert c.origin is not None
        origin = c.origin

        async def go() -> list[httpx.Response]:
            clients = [httpx.AsyncClient(proxy=c.proxy_url(i), trust_env=False, timeout=10) for i in range(3)]
            out: list[httpx.Response] = []

            async def one(i: int) -> None:
                out.append(await clients[i % 3].get(f"{origin}/obj/5150"))

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(one, 0)
                    await anyio.sleep(0.2)  # the first has taken the object and is loading it
                    for i in range(1, 6):
                        tg.start_soon(one, i)
            finally:
                for cl in clients:
                    await cl.aclose()
            return out

        replies = anyio.run(go)
        assert _origin_served(c)["obj"] == 1
        assert [r.status_code for r in replies] == [200] * 6
        assert {r.content for r in replies} == {object_body(5150, object_size(5150))}
        assert sorted(r.headers["x-cache"].split(" from ")[0] for r in replies).count("MISS") == 1


@pytest.mark.parametrize("mode", ["cogs", "icp"])
def test_miss_then_hit_here_then_hit_from_another_node(mode: str, request: pytest.FixtureRequest) -> None:
    c: WebCacheCluster = request.getfixturevalue(f"{mode}_cache")
    n = {"cogs": 1001, "icp": 1002}[mode]
    before = _origin_served(c).get("obj", 0)
    first = _get(c, 0, f"/obj/{n}")
    assert first.status_code == 200
    assert first.headers["x-cache"] == "MISS from cache-0"
    assert first.content == object_body(n, object_size(n))
    again = _get(c, 0, f"/obj/{n}")
    assert again.headers["x-cache"] == "HIT (local) from cache-0"
    other = _get(c, 2, f"/obj/{n}")
    where = "peer" if mode == "cogs" else "sibling"
    assert other.headers["x-cache"] == f"HIT ({where}) from cache-2"
    assert other.content == first.content
    assert int(other.headers["age"]) >= 0
    assert _origin_served(c)["obj"] == before + 1  # one origin fetch for the whole cluster


@pytest.mark.parametrize("mode", ["cogs", "icp"])
@pytest.mark.parametrize("kind", ["nostore", "private"])
def test_uncacheable_responses_always_go_to_the_origin(mode: str, kind: str, request: pytest.FixtureRequest) -> None:
    c: WebCacheCluster = request.getfixturevalue(f"{mode}_cache")
    before = _origin_served(c).get(kind, 0)
    for node in (0, 0, 1):
        r = _get(c, node, f"/{kind}/7")
        assert r.status_code == 200
        assert r.headers["x-cache"].startswith("MISS")
    assert _origin_served(c)[kind] == before + 3


def test_errors_and_expired_objects_are_not_served_from_cache(cogs_cache: WebCacheCluster) -> None:
    c = cogs_cache
    assert _get(c, 1, "/status/404").status_code == 404
    assert _get(c, 1, "/status/404").headers["x-cache"].startswith("MISS")  # not cached
    assert _get(c, 1, "/short/3").headers["x-cache"].startswith("MISS")
    assert _get(c, 1, "/short/3").headers["x-cache"].startswith("HIT")
    time.sleep(1.2)  # max-age=1
    assert _get(c, 1, "/short/3").headers["x-cache"].startswith("MISS")
    r = _get(c, 1, "/obj/5", headers={"Cache-Control": "no-cache"})  # the client wants it fresh
    assert r.headers["x-cache"].startswith("MISS")


def test_owner_dies_requests_fall_back_to_the_origin(cluster: LocalCluster) -> None:
    with web_cache(2, "cogs", cluster.url, origin_delay_s=0.0, state="objects") as c:
        assert _get(c, 0, "/obj/77").headers["x-cache"] == "MISS from cache-0"  # cache-0 owns it
        assert _get(c, 1, "/obj/78").headers["x-cache"] == "MISS from cache-1"
        before = _origin_served(c)["obj"]
        c.kill(0)
        t0 = time.monotonic()
        r = _get(c, 1, "/obj/77")
        assert r.status_code == 200
        assert r.content == object_body(77, object_size(77))
        assert r.headers["x-cache"] == "MISS from cache-1"  # from the origin, not an error
        assert time.monotonic() - t0 < 6  # no hanging on the dead owner
        assert _origin_served(c)["obj"] == before + 1
        assert _get(c, 1, "/obj/78").headers["x-cache"] == "HIT (local) from cache-1"  # the rest still works


def test_curl_uses_a_node_as_its_http_proxy(cogs_cache: WebCacheCluster) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is part of the test setup (scripts/bootstrap.sh)"
    c = cogs_cache
    assert c.origin is not None
    cmd = [curl, "-s", "-D", "-", "-o", "/dev/null", "-x", c.proxy_url(1), f"{c.origin}/obj/4242"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout.lower()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout.lower()
    assert first.startswith("http/1.1 200")
    assert "x-cache: miss from cache-1" in first
    assert "x-cache: hit (local) from cache-1" in second
    assert f"content-length: {object_size(4242)}" in second


def test_bad_requests_get_clear_errors_and_the_node_stays_up(cogs_cache: WebCacheCluster) -> None:
    c = cogs_cache
    host, _, port = c.nodes[2].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert s.recv(200).split(b" ", 2)[1] == b"400"
    r = httpx.get(c.proxy_url(2) + "/just/a/path", trust_env=False)
    assert r.status_code == 400
    assert "absolute http:// URL" in r.text
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
        assert s.recv(200).startswith(b"HTTP/1.1 501")
    with httpx.Client(proxy=c.proxy_url(2), trust_env=False, timeout=10) as client:
        dead = client.get("http://127.0.0.1:9/obj/1")  # nothing listens there
    assert dead.status_code == 502
    assert "origin is unreachable" in dead.text
    stats = json.loads(httpx.get(c.proxy_url(2) + "/cogs/stats", trust_env=False).text)
    assert stats["node"] == "cache-2"
    assert stats["requests"] >= 3
    assert _get(c, 2, "/obj/9").status_code == 200  # still serving


@pytest.mark.parametrize("mode", ["cogs", "icp"])
def test_a_node_keeps_at_most_its_store_bytes(cluster: LocalCluster, mode: str) -> None:
    """Past its budget a node drops the least recently used objects; in cogs mode their
    locators go too, so another node fetches them from the origin, not from here."""
    ids = [n for n in range(3000, 3400) if 6000 <= object_size(n) <= 14000][:8]
    coordinator = cluster.url if mode == "cogs" else None
    with web_cache(2, mode, coordinator, origin_delay_s=0.0, state="objects", store_bytes=40_000) as c:
        for n in ids:
            assert _get(c, 0, f"/obj/{n}").headers["x-cache"] == "MISS from cache-0"
        assert c.origin is not None
        stats = httpx.get(f"{c.proxy_url(0)}/cogs/stats", trust_env=False).json()
        assert stats["bytes here"] <= 40_000
        assert stats["evicted"] >= 1
        assert stats["objects here"] == len(ids) - stats["evicted"]
        where = "peer" if mode == "cogs" else "sibling"
        assert _get(c, 1, f"/obj/{ids[-1]}").headers["x-cache"] == f"HIT ({where}) from cache-1"  # still kept
        r = _get(c, 1, f"/obj/{ids[0]}")  # the oldest went: from the origin
        assert r.headers["x-cache"] == "MISS from cache-1"
        assert r.content == object_body(ids[0], object_size(ids[0]))


def test_long_and_malformed_urls_are_served_and_logged_bounded(
    cluster: LocalCluster, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 7,000-character URL was logged whole on every request and never cached (over the
    512-byte key limit); aiohttp logged a traceback per malformed request line."""
    monkeypatch.setenv("COGS_LOG_LEVEL", "info")  # the nodes log all they have to say
    with web_cache(2, "cogs", cluster.url, origin_delay_s=0.0, state="objects") as c:
        assert c.origin is not None
        path = "/obj/7?" + "q" * 7000
        with httpx.Client(proxy=c.proxy_url(0), trust_env=False, timeout=10) as client:
            got = [client.get(c.origin + path) for _ in range(20)]
        assert [r.status_code for r in got] == [200] * 20
        assert got[0].headers["x-cache"] == "MISS from cache-0"
        assert {r.headers["x-cache"] for r in got[1:]} == {"HIT (local) from cache-0"}  # kept under a digest key
        assert _get(c, 1, path).headers["x-cache"] == "HIT (peer) from cache-1"  # the same key on every node
        assert got[-1].content == object_body(7, object_size(7))
        host, _, port = c.nodes[0].rpartition(":")
        for _ in range(30):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(b"GET " + c.origin.encode() + b"/obj/8?\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(200).split(b" ", 2)[1] == b"400"
        assert _get(c, 0, "/obj/8").status_code == 200  # still serving
    err = capfd.readouterr().err
    assert "q" * 300 not in err
    assert max(map(len, err.splitlines()), default=0) < 400
    bad = [line for line in err.splitlines() if "Error handling request" in line]
    assert 1 <= len(bad) <= 5  # a few a minute, one line each (no traceback)
    assert "Traceback" not in err
