"""A real Live Runner app, registered dynamically with the official SDK
(livepeer-gateway 1.0.0, unchanged, in .venv-sdk).

usage: live_runner_app.py --orch URL --secret S [--capacity N] [--label L]
       [--app APP] [--mode persistent|single-shot] [--price P --unit U]
       [--currency C] [--version V] [--metadata M] [--runner-id ID]
       [--status S] [--proxy] [--heartbeat-interval SECONDS] [--detect-gpu]

It serves, on http://127.0.0.1:<random port>:

  GET  /health       200 {"status":"OK"}
  ANY  /v1/echo      the request as the runner saw it (method, path, query,
                     body, the proxy-injected headers, every header)
  GET  /v1/sse       text/event-stream: `data: 0` .. `data: 4`, 100 ms apart,
                     each flushed on its own (?n=5&interval_ms=100)
  GET  /ws           WebSocket: text "m" -> "echo:m"; binary echoed as is;
                     the text "__headers__" -> JSON of the injected headers
                     seen on the upgrade request
  POST /v1/channels  create_trickle_channels(request, ...) (SDK), default
                     [{"name":"out","mime_type":"application/json"}] or the
                     body's {"channels":[...]}; answers {"channels":[...]}
  POST /v1/stop      stop_runner_session(request) (SDK); answers
                     {"stopped":true,"session_id":...}
  ANY  /{anything}   same as /v1/echo, with "matched":"catchall"

/v1/channels and /v1/stop take ?token=... to send that session token instead
of the injected one (to provoke the orchestrator's 401). An SDK failure there
answers 502 {"error":..., "status_code": <orchestrator status or null>}.

Then it registers with register_runner() (POST {orch}/runners/heartbeat with
the bootstrap secret; the SDK then heartbeats on its own) and prints ONE JSON
line on stdout:

  {"runner_id", "runner_url", "port", "orchestrator", "o2r",
   "heartbeat_interval_s", "heartbeat_ttl_s"}

After it, one JSON line per O2R session event the SDK reports
(on_session_reserve / on_session_release callbacks):

  {"event": "reserved"|"released", "session_id", "timestamp", "active_session_ids"}

A line "sessions" on stdin prints {"active_session_ids": [...]}
(LiveRunnerRegistration.active_session_ids). When stdin is closed (EOF) or on
SIGTERM/SIGINT it calls registration.close() (POST
{orch}/runners/{id}/unregister with the heartbeat secret), prints
{"closed": true} and exits 0. A failed registration prints the error on stderr
and exits 1.

All logging goes to stderr; stdout carries only the JSON lines above.
"""
import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
from typing import Any

from aiohttp import WSMsgType, web

from livepeer_gateway.errors import LivepeerGatewayError, LivepeerHTTPError
from livepeer_gateway.live_runner import (
    LiveRunnerRegistration,
    LiveRunnerSessionEvent,
    create_trickle_channels,
    register_runner,
    stop_runner_session,
)

# The headers the orchestrator's reverse proxy injects (overwriting), plus two
# it must not pass on / must rewrite.
INJECTED = (
    "Livepeer-Runner-Route",
    "Livepeer-Session-Id",
    "Livepeer-Session-Token",
    "Livepeer-Session-Control",
    "Host",
    "X-Forwarded-For",
)

_LOG = logging.getLogger("live_runner_app")


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def injected_headers(request: web.Request) -> dict[str, Any]:
    # request.headers is a case-insensitive CIMultiDictProxy.
    return {name: request.headers.get(name) for name in INJECTED}


class RunnerApp:
    def __init__(self) -> None:
        self.registration: LiveRunnerRegistration | None = None

    # ---- routes -----------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "OK"})

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.text()
        out: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": request.query_string,
            "body": body,
            "headers": injected_headers(request),
            "all_headers": [[k, v] for k, v in request.headers.items()],
        }
        if request.match_info.route.name == "catchall":
            out["matched"] = "catchall"
        return web.json_response(out)

    async def sse(self, request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "5"))
        interval = int(request.query.get("interval_ms", "100")) / 1000.0
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await resp.prepare(request)  # sends the head now (chunked body)
        for i in range(n):
            if i:
                await asyncio.sleep(interval)
            # StreamResponse.write hands each event to the transport at once.
            await resp.write(f"data: {i}\n\n".encode())
        await resp.write_eof()
        return resp

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        headers = injected_headers(request)
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "__headers__":
                    await sock.send_str(json.dumps(headers))
                else:
                    await sock.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
        return sock

    async def channels(self, request: web.Request) -> web.Response:
        channels: list[dict[str, str]] = [{"name": "out", "mime_type": "application/json"}]
        raw = await request.read()
        if raw.strip():
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("channels"), list):
                channels = data["channels"]
        token = request.query.get("token", "")
        try:
            reg = self.registration
            if reg is not None:
                # sdk: LiveRunnerRegistration.create_trickle_channels(session, channels,
                #   *, session_token="") -> list[LiveRunnerTrickleChannel]
                # POST {Livepeer-Session-Control}/channels {"channels":[...]} with
                # Livepeer-Session-Token (falls back to {orch}/runner/{id}/session/{sid}/channels).
                created = await reg.create_trickle_channels(request, channels, session_token=token)
            else:  # not registered yet: module-level helper, header-only
                # sdk: create_trickle_channels(session, channels, *, orchestrator_url="",
                #   runner_id="", session_token="", timeout=5.0)
                created = await create_trickle_channels(request, channels, session_token=token)
        except LivepeerGatewayError as e:
            return sdk_error(e)
        return web.json_response({"channels": created})

    async def stop(self, request: web.Request) -> web.Response:
        token = request.query.get("token", "")
        target: Any = request
        if token:
            target = _HeaderOverride(request, {"Livepeer-Session-Token": token})
        try:
            # sdk: stop_runner_session(session: LiveRunnerSession | LiveRunnerSessionRequest,
            #   *, timeout=5.0) -> None
            # POST {Livepeer-Session-Control}/stop, empty body, Livepeer-Session-Token.
            await stop_runner_session(target)
        except LivepeerGatewayError as e:
            return sdk_error(e)
        return web.json_response(
            {"stopped": True, "session_id": request.headers.get("Livepeer-Session-Id")}
        )

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_route("*", "/v1/echo", self.echo)
        app.router.add_get("/v1/sse", self.sse)
        app.router.add_get("/ws", self.ws)
        app.router.add_post("/v1/channels", self.channels)
        app.router.add_post("/v1/stop", self.stop)
        app.router.add_route("*", "/{tail:.*}", self.echo, name="catchall")
        return app


class _HeaderOverride:
    """A LiveRunnerSessionRequest (anything with headers.get) whose headers
    are the request's, with some replaced."""

    def __init__(self, request: web.Request, override: dict[str, str]) -> None:
        merged = {k.lower(): v for k, v in request.headers.items()}
        merged.update({k.lower(): v for k, v in override.items()})
        self.headers = _LowerGet(merged)


class _LowerGet:
    def __init__(self, d: dict[str, str]) -> None:
        self._d = d

    def get(self, key: str, default: str = "") -> str:
        return self._d.get(key.lower(), default)


def sdk_error(e: LivepeerGatewayError) -> web.Response:
    status = e.status_code if isinstance(e, LivepeerHTTPError) else None
    return web.json_response(
        {"error": str(e), "status_code": status, "body": getattr(e, "body", None)},
        status=502,
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orch", required=True, help="orchestrator base URL, e.g. https://127.0.0.1:8935")
    p.add_argument("--secret", required=True, help="bootstrap secret (-orchSecret)")
    p.add_argument("--capacity", type=int, default=1)
    p.add_argument("--label", default="")
    p.add_argument("--app", default="live-runner-test/echo")
    p.add_argument("--mode", default="persistent", choices=["persistent", "single-shot"])
    p.add_argument("--price", default="0", help="USD price (off-chain: ignored by the orchestrator)")
    p.add_argument("--unit", default="hour", help="hour | 720p | fixed")
    p.add_argument("--currency", default="usd")
    p.add_argument("--version", default="")
    p.add_argument("--metadata", default="")
    p.add_argument("--runner-id", default="")
    p.add_argument("--status", default="ready")
    p.add_argument("--proxy", action="store_true", help="single-shot proxy:true")
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=None,
        help="seconds; default: the orchestrator's heartbeat_interval",
    )
    p.add_argument(
        "--detect-gpu",
        action="store_true",
        help="let the SDK auto-detect a GPU (pynvml/torch/nvidia-smi); off by default so the payload is deterministic",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args()


def price_value(s: str) -> int | float | str:
    try:
        return int(s)
    except ValueError:
        try:
            return float(s)
        except ValueError:
            return s


async def main() -> int:
    args = parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    runner_app = RunnerApp()
    web_runner = web.AppRunner(runner_app.build(), access_log=None)
    await web_runner.setup()
    site = web.TCPSite(web_runner, "127.0.0.1", 0)
    await site.start()
    port = web_runner.addresses[0][1]
    runner_url = f"http://127.0.0.1:{port}"
    _LOG.info("runner app listening on %s", runner_url)

    # Session events from the O2R channel (sdk: LiveRunnerSessionCallback =
    # Callable[[LiveRunnerSessionEvent], None | Awaitable[None]]). They are held
    # back until the registration line is out, which must come first.
    announced = False
    pending: list[dict[str, Any]] = []

    def on_session(ev: LiveRunnerSessionEvent) -> None:
        reg = runner_app.registration
        line = {
            "event": ev.event,
            "session_id": ev.session_id,
            "timestamp": ev.timestamp,
            "active_session_ids": list(reg.active_session_ids) if reg is not None else None,
        }
        if announced:
            emit(line)
        else:
            pending.append(line)

    try:
        # sdk: register_runner(orchestrator_url, *, secret, runner_url, app, price=0,
        #   currency="usd", unit="hour", runner_id="", mode="persistent", proxy=False,
        #   label="", version="", metadata="", status="ready", capacity=1, gpu=None,
        #   auto_detect_gpu=True, timeout=5.0, heartbeat_interval_s=None,
        #   unregister_on_close=True, on_session_reserve=None, on_session_release=None)
        #   -> LiveRunnerRegistration
        # It sends the first heartbeat (POST {orch}/runners/heartbeat, Authorization:
        # <secret>) and raises on failure; then a background task beats every
        # heartbeat_interval and an O2R ChannelReader(url, start_seq=0) tracks sessions.
        registration = await register_runner(
            args.orch,
            secret=args.secret,
            runner_url=runner_url,
            app=args.app,
            price=price_value(args.price),
            currency=args.currency,
            unit=args.unit,
            runner_id=args.runner_id,
            mode=args.mode,
            proxy=args.proxy,
            label=args.label,
            version=args.version,
            metadata=args.metadata,
            status=args.status,
            capacity=args.capacity,
            auto_detect_gpu=args.detect_gpu,
            heartbeat_interval_s=args.heartbeat_interval,
            on_session_reserve=on_session,
            on_session_release=on_session,
        )
    except (LivepeerGatewayError, ValueError) as e:
        print(f"live runner registration failed: {e}", file=sys.stderr, flush=True)
        await web_runner.cleanup()
        return 1
    runner_app.registration = registration

    emit(
        {
            "runner_id": registration.runner_id,
            "runner_url": runner_url,
            "port": port,
            # The base URL the SDK adopted from the heartbeat's "orchestrator" field.
            "orchestrator": registration.orchestrator_url,
            "o2r": registration.o2r_channel,
            "heartbeat_interval_s": registration.heartbeat_interval_s,
            "heartbeat_ttl_s": registration.heartbeat_ttl_s,
        }
    )
    announced = True
    for line in pending:
        emit(line)
    pending.clear()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_command(line: str) -> None:
        if line.strip() == "sessions":
            emit({"active_session_ids": list(registration.active_session_ids)})

    def read_stdin() -> None:
        # A daemon thread, so a blocked read never holds up the exit.
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(on_command, line)
        except Exception:
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()

    await stop.wait()
    _LOG.info("shutting down: unregistering %s", registration.runner_id)
    try:
        # sdk: LiveRunnerRegistration.close() stops O2R and heartbeats, then
        # POST {orch}/runners/{id}/unregister (Authorization: heartbeat secret);
        # an unregister failure is only logged at DEBUG by the SDK.
        await registration.close()
    except Exception as e:  # close() surfaces O2R reader errors
        print(f"registration close error: {e}", file=sys.stderr, flush=True)
    await web_runner.cleanup()
    emit({"closed": True})
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
