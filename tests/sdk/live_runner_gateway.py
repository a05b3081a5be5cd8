"""Drives a persistent Live Runner through an orchestrator, gateway side,
with the official SDK (livepeer-gateway 1.0.0, unchanged, in .venv-sdk),
off chain: no signer, no payments.

usage: live_runner_gateway.py --orch URL --app APP [--timeout SECONDS]

The runner behind APP is tests/sdk/live_runner_app.py (its routes: /v1/echo,
/v1/sse, /ws, /v1/channels, /v1/stop). Steps, in order:

  discovery      discover_runners(discovery_url={orch}/discovery, app=APP)
  reserve        reserve_session(orchestrators=orch, app=APP)
  echo           call_runner({app_url}/v1/echo?x=1&y=two, payload=...)
  echo_spoofed   aiohttp POST {app_url}/v1/echo with forged Livepeer-Session-*,
                 X-Forwarded-For and Forwarded headers (the SDK cannot set
                 request headers): the proxy must overwrite / drop them
  sse            call_runner({app_url}/v1/sse, method="GET", stream=True)
  ws             aiohttp ws_connect({app_url}/ws) (the SDK has no WebSocket client)
  channels       call_runner({app_url}/v1/channels, payload={"channels":[out]})
  trickle        TricklePublisher -> 2 JSON segments -> TrickleSubscriber
  close          session.aclose(); the subscriber must then see the channel end
  after_close    call_runner({old app_url}/v1/echo) must fail with 404
  runner_stop    a second session, stopped by the runner itself (POST
                 {app_url}/v1/stop -> stop_runner_session(request)); its
                 app_url must then 404; session.aclose() afterwards still works
  discovery_after  discover_runners again (capacity_used back to 0)

Prints one JSON report on stdout (also on failure, with "ok": false and
"error"); exits 1 with the message on stderr on any failure.

TLS: every SDK HTTP client uses ssl=False (sdk: http.py:269, 359;
trickle_publisher.py:168; trickle_subscriber.py:107); the aiohttp calls here
pass ssl=False too, so a self-signed orchestrator certificate is fine.
"""
import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlparse

import aiohttp

from livepeer_gateway.discovery import discover_runners
from livepeer_gateway.errors import LivepeerGatewayError, LivepeerHTTPError
from livepeer_gateway.live_runner import LiveRunnerSession, call_runner
from livepeer_gateway.selection import reserve_session
from livepeer_gateway.trickle_publisher import TricklePublisher
from livepeer_gateway.trickle_subscriber import TrickleSubscriber

from gateway_report import check, http_error, run_reported


def runner_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        for r in entry.get("runners") or []:
            out.append({"address": entry.get("address"), **r})
    return out


def find_runner(entries: list[dict[str, Any]], url: str) -> dict[str, Any] | None:
    for r in runner_entries(entries):
        if r.get("url") == url:
            return r
    return None


async def discover(orch: str, app: str) -> list[dict[str, Any]]:
    # sdk: discover_runners(*, signer_url=None, signer_headers=None, discovery_url=None,
    #   discovery_headers=None, app=None, gpu=None) -> list[dict]
    # GET {orch}/discovery?app=APP; needs a JSON list of {"address", "runners":[{"url","app",...}]}
    # (runners without url/app, or of another app, are dropped locally).
    return await discover_runners(discovery_url=orch.rstrip("/") + "/discovery", app=app)


def check_injected(headers: dict[str, Any], session: LiveRunnerSession, what: str) -> None:
    sid = session.session_id
    check(headers.get("Livepeer-Session-Id") == sid, f"{what}: Livepeer-Session-Id {headers.get('Livepeer-Session-Id')!r} != {sid!r}")
    route = headers.get("Livepeer-Runner-Route")
    check(bool(route), f"{what}: no Livepeer-Runner-Route")
    check(bool(headers.get("Livepeer-Session-Token")), f"{what}: no Livepeer-Session-Token")
    control = headers.get("Livepeer-Session-Control") or ""
    check(
        control.endswith(f"/runner/{route}/session/{sid}"),
        f"{what}: Livepeer-Session-Control {control!r} is not .../runner/{route}/session/{sid}",
    )
    check(headers.get("X-Forwarded-For") is None, f"{what}: X-Forwarded-For reached the runner: {headers.get('X-Forwarded-For')!r}")
    host = headers.get("Host") or ""
    check(
        host != urlparse(session.app_url).netloc,
        f"{what}: Host {host!r} is the orchestrator's, not the runner's",
    )


async def read_segments(sub: TrickleSubscriber, out: list) -> bool:
    """Reads JSON segments until the stream ends; True on end of stream."""
    while True:
        seg = await sub.next()
        if seg is None:
            return True  # 404 or Lp-Trickle-Closed
        data = b""
        reader = seg.make_reader()
        while True:
            chunk = await reader.read(32 * 1024)
            if not chunk:
                break
            data += chunk
        await seg.close()
        if data:
            out.append({"seq": seg.seq(), "data": json.loads(data)})


async def run(orch: str, app: str, report: dict[str, Any], cleanup: list) -> None:
    # ---- discovery ---------------------------------------------------------
    entries = await discover(orch, app)
    runners = runner_entries(entries)
    report["discovery"] = {"entries": entries}
    check(len(runners) > 0, f"discovery lists no runner for app {app!r}")
    persistent = [r for r in runners if r.get("mode") in ("persistent", "", None)]
    check(len(persistent) > 0, f"discovery lists no persistent runner for {app!r}: {runners}")
    check(
        persistent[0]["url"].rstrip("/").endswith("/session"),
        f"a persistent runner's discovery url should end in /session: {persistent[0]['url']!r}",
    )

    # ---- reserve -------------------------------------------------------------
    # sdk: reserve_session(*, signer_url=None, signer_headers=None, discovery_url=None,
    #   discovery_headers=None, orchestrators=None, app=None, gpu=None, timeout=5.0)
    #   -> LiveRunnerSession(session_id, app_url, runner_url, control_url, runner, released)
    # = GET {orch}/discovery?app=APP, then call_runner(runner=<first candidate>, payload={})
    # = POST <discovery url> body "{}" (Content-Type application/json, Accept */*);
    # the answer must be Content-Type application/json (else call_runner leaves
    # .data empty) with session_id, app_url, control_url.
    # Off chain: no signer_url -> no Livepeer-Payer-Address header and no payment;
    # a 402 would raise "Live runner paid call requires signer_url" (wrapped in
    # NoRunnerAvailableError by the selection cursor).
    session = await reserve_session(orchestrators=orch, app=app)
    cleanup.append(session)
    report["session"] = {
        "session_id": session.session_id,
        "app_url": session.app_url,
        "control_url": session.control_url,
        "runner_url": session.runner_url,
    }
    during = await discover(orch, app)
    report["discovery_during"] = {"runner": find_runner(during, session.runner_url)}

    app_url = session.app_url.rstrip("/")

    # ---- echo through the proxy (SDK) ---------------------------------------
    payload = {"hello": "world", "n": 1}
    # sdk: call_runner(runner_url="", *, runner=None, payload=None, method="POST",
    #   signer_url=None, signer_headers=None, payment_unit=None, timeout=5.0,
    #   max_payment_challenge_retries=3, stream=False) -> LiveRunnerCallResult(data, ...)
    # Raises LivepeerHTTPError on >= 400.
    res = await call_runner(app_url + "/v1/echo?x=1&y=two", payload=payload)
    echo = res.data
    report["echo"] = {"content_type": res.content_type, "data": echo}
    check(echo.get("method") == "POST", f"echo: method {echo.get('method')!r}")
    check(echo.get("path") == "/v1/echo", f"echo: path {echo.get('path')!r}")
    check(echo.get("query") == "x=1&y=two", f"echo: query {echo.get('query')!r}")
    check(echo.get("body") == json.dumps(payload), f"echo: body {echo.get('body')!r}")
    check_injected(echo.get("headers") or {}, session, "echo")
    token = echo["headers"]["Livepeer-Session-Token"]

    # ---- forged headers (aiohttp: call_runner cannot set request headers) ----
    forged = {
        "Livepeer-Session-Id": "session_forged",
        "Livepeer-Session-Token": "forged-token",
        "Livepeer-Runner-Route": "forged-route",
        "Livepeer-Session-Control": "http://forged.invalid/x",
        "X-Forwarded-For": "203.0.113.7",
        "Forwarded": "for=203.0.113.7",
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.post(app_url + "/v1/echo", data=b"forged", headers=forged, ssl=False) as resp:
            spoof_status = resp.status
            spoof = await resp.json(content_type=None)
    report["echo_spoofed"] = {"status": spoof_status, "data": spoof}
    check(spoof_status == 200, f"echo_spoofed: status {spoof_status}")
    sh = spoof.get("headers") or {}
    check_injected(sh, session, "echo_spoofed")
    check(sh.get("Livepeer-Session-Token") == token, "echo_spoofed: the forged session token reached the runner")
    check(
        not any(k.lower() == "forwarded" for k, _ in spoof.get("all_headers") or []),
        "echo_spoofed: Forwarded reached the runner",
    )

    # ---- SSE through the proxy (SDK streaming call) --------------------------
    # The SDK can stream: call_runner(..., stream=True) -> LiveRunnerCallStream
    # (status, headers, content_type, aiter_lines(), aclose()). Note it sends the
    # JSON body "{}" even on GET (http.py _json_request_parts).
    stream = await call_runner(app_url + "/v1/sse", method="GET", stream=True)
    events: list[str] = []
    arrival_ms: list[int] = []
    async with stream:
        t0 = time.monotonic()

        async def consume() -> None:
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    events.append(line[5:].strip())
                    arrival_ms.append(int((time.monotonic() - t0) * 1000))

        await asyncio.wait_for(consume(), timeout=15)
        report["sse"] = {
            "status": stream.status,
            "content_type": stream.content_type,
            "events": events,
            "arrival_ms": arrival_ms,
        }
    check(stream.status == 200, f"sse: status {stream.status}")
    check(stream.content_type == "text/event-stream", f"sse: content type {stream.content_type!r}")
    check(events == ["0", "1", "2", "3", "4"], f"sse: events {events}")
    # 5 events 100 ms apart span ~400 ms; a buffering proxy delivers them together.
    check(arrival_ms[-1] - arrival_ms[0] >= 200, f"sse: events not flushed one by one: {arrival_ms}")

    # ---- WebSocket through the proxy (aiohttp; no SDK helper exists) ---------
    echoes: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        async with http.ws_connect(app_url + "/ws", ssl=False) as ws:
            for m in ("hello", "world"):
                await ws.send_str(m)
                msg = await ws.receive(timeout=5)
                check(msg.type == aiohttp.WSMsgType.TEXT, f"ws: got {msg.type} for {m!r}")
                echoes.append(msg.data)
            await ws.send_str("__headers__")
            msg = await ws.receive(timeout=5)
            check(msg.type == aiohttp.WSMsgType.TEXT, f"ws: got {msg.type} for __headers__")
            ws_headers = json.loads(msg.data)
            await ws.close()
    report["ws"] = {"echoes": echoes, "headers": ws_headers}
    check(echoes == ["echo:hello", "echo:world"], f"ws: echoes {echoes}")
    check_injected(ws_headers, session, "ws")

    # ---- trickle channel created by the runner -------------------------------
    # The runner calls create_trickle_channels(request, [...]) (SDK) ->
    # POST {Livepeer-Session-Control}/channels with Livepeer-Session-Token.
    want = [{"name": "out", "mime_type": "application/json"}]
    res = await call_runner(app_url + "/v1/channels", payload={"channels": want})
    report["channels"] = {"data": res.data}
    chans = res.data.get("channels") or []
    check(len(chans) == 1, f"channels: {res.data}")
    ch = chans[0]
    sid = session.session_id
    check(ch.get("name") == "out", f"channels: name {ch.get('name')!r}")
    check(ch.get("channel_name") == f"{sid}-out", f"channels: channel_name {ch.get('channel_name')!r}")
    check(ch.get("mime_type") == "application/json", f"channels: mime_type {ch.get('mime_type')!r}")
    check(str(ch.get("url", "")).endswith(f"/ai/trickle/{sid}-out"), f"channels: url {ch.get('url')!r}")

    # ---- trickle: publish 2 JSON segments, read them back --------------------
    url = ch["url"]
    published = [{"seg": 0, "msg": "first"}, {"seg": 1, "msg": "second"}]
    read: list[dict[str, Any]] = []
    # sdk: TrickleSubscriber(url, *, start_seq=-2, max_retries=5, connection_close=False,
    #   max_bytes=None); next() -> SegmentReader | None (None = end of stream)
    sub = TrickleSubscriber(url, start_seq=-1)
    # sdk: TricklePublisher(url, mime_type, *, start_seq=-1, ...); next() -> SegmentWriter
    # (GET {url}/next, then POST {url}/{Lp-Trickle-Latest} with Lp-Trickle-Reset: 1)
    pub = TricklePublisher(url, "application/json")
    trickle: dict[str, Any] = {"url": url, "published": published, "read": read}
    report["trickle"] = trickle
    reader = asyncio.create_task(read_segments(sub, read))
    try:
        await asyncio.sleep(0.3)  # the subscriber waits on the next segment first
        for obj in published:
            seg = await pub.next()
            await seg.write(json.dumps(obj).encode())
            await seg.close()
        for _ in range(200):
            if len(read) >= len(published) or reader.done():
                break
            await asyncio.sleep(0.05)
        check(
            [r["data"] for r in read] == published,
            f"trickle: read {read}, published {published}, reader {'ended' if reader.done() else 'waiting'}",
        )

        # ---- close the session: the channel must end with it -----------------
        # sdk: LiveRunnerSession.aclose() -> stop_runner_session(session):
        # stops funding (none off chain), then POST {control_url}/stop (empty body).
        await session.aclose()
        cleanup.remove(session)
        report["close"] = {"ok": True, "released": session.released}
        try:
            trickle["eos_on_session_close"] = await asyncio.wait_for(asyncio.shield(reader), timeout=10)
        except asyncio.TimeoutError:
            trickle["eos_on_session_close"] = False
        check(trickle["eos_on_session_close"] is True, "trickle: the subscriber did not see the channel end when the session closed")
    finally:
        if not reader.done():
            reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await pub.close()  # DELETE {url}: the channel is already gone; errors are swallowed
        await sub.close()

    # ---- the old app_url is gone ---------------------------------------------
    try:
        res = await call_runner(app_url + "/v1/echo", payload={"after": "close"})
        report["after_close"] = {"status": 200, "data": res.data}
    except LivepeerGatewayError as e:
        report["after_close"] = http_error(e)
    check(report["after_close"]["status"] == 404, f"after_close: expected 404, got {report['after_close']}")

    # ---- a session stopped by the runner itself ------------------------------
    session2 = await reserve_session(orchestrators=orch, app=app)
    cleanup.append(session2)
    rs: dict[str, Any] = {"session_id": session2.session_id, "app_url": session2.app_url}
    report["runner_stop"] = rs
    app_url2 = session2.app_url.rstrip("/")
    check(app_url2 != app_url, "runner_stop: the new session reused the old app_url")
    try:
        # The runner calls stop_runner_session(request) (SDK) -> POST
        # {Livepeer-Session-Control}/stop with Livepeer-Session-Token. Its answer
        # comes back through the session being released: either outcome is recorded.
        res = await call_runner(app_url2 + "/v1/stop", payload={})
        rs["stop_call"] = {"status": 200, "data": res.data}
    except LivepeerGatewayError as e:
        rs["stop_call"] = http_error(e)
    try:
        res = await call_runner(app_url2 + "/v1/echo", payload={"after": "runner stop"})
        rs["after_stop"] = {"status": 200, "data": res.data}
    except LivepeerGatewayError as e:
        rs["after_stop"] = http_error(e)
    check(rs["after_stop"]["status"] == 404, f"runner_stop: expected 404 after the runner stopped its session, got {rs['after_stop']}")
    # Stopping an already released session: POST {control_url}/stop -> 204 (unknown sid).
    try:
        await session2.aclose()
        rs["aclose_after"] = {"ok": True}
    except LivepeerGatewayError as e:
        rs["aclose_after"] = {"ok": False, **http_error(e)}
    cleanup.remove(session2)
    check(rs["aclose_after"]["ok"], f"runner_stop: stopping a released session failed: {rs['aclose_after']}")

    # ---- capacity is back ----------------------------------------------------
    after = await discover(orch, app)
    r = find_runner(after, session.runner_url)
    report["discovery_after"] = {"runner": r}
    check(r is not None, "discovery_after: the runner is no longer listed")
    if "capacity_used" in r:
        check(r["capacity_used"] == 0, f"discovery_after: capacity_used {r['capacity_used']}")


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orch", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--timeout", type=float, default=90.0)
    args = p.parse_args()

    report: dict[str, Any] = {"ok": False, "orchestrator": args.orch, "app": args.app}
    return await run_reported(
        "live_runner_gateway",
        lambda report, cleanup: run(args.orch, args.app, report, cleanup),
        report,
        args.timeout,
    )

if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
