"""`kill -9` of an appliance while 68 cold requests (17 objects, 4 clients each) are being
filled through a slowed upstream: no client got a whole wrong body; after restart no
partial object is visible, the index counts exactly the whole objects on disk (what a
crash leaves in the middle of a write is swept, not counted), and every object serves
true bytes to a player."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from appliance.objects import decode_header
from origin.store import TitleStore
from player.session import play
from streamcdn.digest import digest_bytes
from tests.conftest import TITLE, free_port
from tests.faults.stack import ApplianceSpec, Proxy, Stack, wait_until

CLIENTS_PER_OBJECT = 4
RATE_BPS = 200_000  # per upstream connection: the biggest segment (400 KB) takes 2 s


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes] | str:
    """(status, body), or the error's name if the response did not arrive whole."""
    try:
        async with http.get(url) as r:
            return r.status, await r.read()
    except (aiohttp.ClientError, ConnectionError) as exc:
        return type(exc).__name__


def whole_objects(cache: Path) -> dict[str, bytes]:
    """Key -> body of every object file in the cache dir; fails on any file not whole."""
    out = {}
    for path in (cache / "objects").glob("*/*.obj"):
        raw = path.read_bytes()
        meta, offset = decode_header(raw)
        body = raw[offset:]
        assert len(body) == meta.size and digest_bytes(body) == meta.digest, path
        assert meta.key not in out, f"two files for {meta.key}"
        out[meta.key] = body
    return out


async def test_kill_9_during_fills_leaves_nothing_partial(
    tmp_path: Path, store: TitleStore
) -> None:
    digests = {rel: f["xxh3-128"] for rel, f in store.manifest(TITLE)["files"].items()}
    proxy_port = free_port()
    spec = ApplianceSpec(
        "a1", upstreams=(f"http://127.0.0.1:{proxy_port}",), flags=("--read-ahead", "0")
    )
    async with Stack(tmp_path, store, [spec]) as stack:
        proxy = Proxy(stack.port("origin"))
        await proxy.start(proxy_port)
        proxy.rate_bps = RATE_BPS
        try:
            await stack.start("origin", "a1")
            cache = stack.cache_dir("a1")
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                urls = [stack.signed("a1", rel) for rel in digests] * CLIENTS_PER_OBJECT
                requests = [asyncio.create_task(fetch(http, url)) for url in urls]

                async def some_written_more_in_flight() -> bool:
                    h = await stack.health("a1")
                    return h["tiers"]["disk"]["objects"] >= 3 and h["fills_in_flight"] >= 3

                await wait_until(some_written_more_in_flight, "fills half done", timeout_s=15)
                in_flight = (await stack.health("a1"))["fills_in_flight"]
                stack.kill("a1")  # SIGKILL
                results = await asyncio.wait_for(asyncio.gather(*requests), 15)
            litter = list((cache / "tmp").iterdir())
            survivors = whole_objects(cache)  # all whole already, before any restart sweep
            # Torn writes, as a crash mid-write leaves them: in tmp/, and (on a filesystem that
            # lost the rename's ordering) a truncated object under a valid name.
            (cache / "tmp" / "torn.part").write_bytes(b"SCDN\x01" + b"\0" * 100)
            a_file = next((cache / "objects").glob("*/*.obj"))
            torn = a_file.with_name(a_file.name.split(".")[0] + ".000000000000.obj")
            torn.write_bytes(a_file.read_bytes()[:-1000])

            # What the clients saw: a whole true body, or a failed response; never a wrong one.
            whole = [
                (url, r) for url, r in zip(urls, results, strict=True) if not isinstance(r, str)
            ]
            for url, (status, body) in whole:
                rel = url.split(f"/titles/{TITLE}/", 1)[1]
                assert status == 200 and digest_bytes(body) == digests[rel], (rel, status)
            cut = len(results) - len(whole)
            assert cut >= 1  # the kill did land while answers were on their way

            proxy.rate_bps = None
            await stack.start("a1")
            health = await stack.health("a1")
            assert list((cache / "tmp").iterdir()) == [] and not torn.exists()  # never indexed
            assert health["tiers"]["disk"]["objects"] == len(survivors) == len(whole_objects(cache))
            for rel, digest in digests.items():  # what survived is a warm hit; the rest refills
                status, headers, body = await stack.get(stack.signed("a1", rel))
                assert status == 200 and digest_bytes(body) == digest, rel
                key = f"titles/{TITLE}/{rel}"
                assert headers["X-Cache"] == ("HIT" if key in survivors else "MISS"), rel
            async with aiohttp.ClientSession() as http:
                summary = await play(
                    [stack.signed("a1", "master.m3u8")], rule="ours", session=http, play_out=False
                )
            assert summary.ended == "title" and not summary.errors, summary.errors
            print(
                f"{len(urls)} requests over {in_flight} fills in flight at the kill; "
                f"{len(whole)} answered whole, {cut} cut; {len(survivors)} whole objects on disk, "
                f"0 partial; {len(litter)} temp files left by the kill, swept"
            )
        finally:
            await proxy.close()
