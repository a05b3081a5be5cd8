"""Drives a PAID persistent Live Runner session on chain, gateway side, with
the official SDK only (livepeer-gateway 1.0.0, unchanged, in .venv-sdk) and a
remote signer (go-livepeer's /sign-orchestrator-info and
/generate-live-payment; the Rust test serves one on a funded gateway key).

usage: live_runner_paid.py --orch URL --app APP --signer URL
       [--fund-seconds S] [--echo-every S] [--release-timeout S] [--timeout S]

The runner behind APP is tests/sdk/live_runner_app.py, registered with a USD
price (discovery then shows its wei price). Steps, in order:

  discovery     discover_runners(discovery_url={orch}/discovery, app=APP): the
                runner, with price_info {price, currency "wei", unit "seconds"}
  unpaid        call_runner(<its url>, payload={}) WITHOUT a signer: the
                orchestrator's 402 surfaces as "Live runner paid call requires
                signer_url" (nothing reserved)
  reserve       reserve_session(orchestrators=orch, app=APP, signer_url=SIGNER):
                POST {signer}/sign-orchestrator-info; POST /apps/{id}/session
                with Livepeer-Payer-Address -> 402 {payment_params,
                manifest_id, payment_url}; POST {signer}/generate-live-payment
                {type "live", ManifestID, app, maxPrice}; the same POST with
                Livepeer-Payment + Livepeer-Segment -> 200 {session_id,
                app_url, control_url}. The SDK then funds the session every
                3 s (generate-live-payment, then POST {payment_url}).
  echo          call_runner({app_url}/v1/echo) every --echo-every seconds
                while funded (no signer: the app URL is the capability)
  stop_funding  --fund-seconds after the reservation (pick k*3 + 1.5, between
                two funding cycles, so no payment is left half sent):
                session.stop_payments(), the SDK's way to "let a session lapse
                deliberately"; the session is NOT stopped
  released      call_runner({app_url}/v1/echo) every 0.25 s until the
                orchestrator answers 404 (released when the credit ran short)
  close         session.aclose(): POST {control_url}/stop (the orchestrator
                answers 204 for a session it no longer has)

Prints one JSON report on stdout (also on failure, with "ok": false and
"error"); times are unix seconds (time.time()) so the caller can line them up
with its signer's log. Warnings the SDK logs (a failed funding cycle, say) are
collected in "sdk_warnings". Exits 1 with the message on stderr on failure.
"""
import argparse
import asyncio
import logging
import sys
import time
from typing import Any

from livepeer_gateway.discovery import discover_runners
from livepeer_gateway.errors import LivepeerGatewayError, LivepeerHTTPError
from livepeer_gateway.live_runner import LiveRunnerSession, call_runner
from livepeer_gateway.selection import reserve_session

from gateway_report import check, http_error, run_reported


class Collect(logging.Handler):
    """Keeps the SDK's warnings and errors for the report."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(
            {"t": record.created, "logger": record.name, "level": record.levelname, "message": record.getMessage()}
        )


async def echo(app_url: str, n: int) -> dict[str, Any]:
    t = time.time()
    try:
        res = await call_runner(app_url + "/v1/echo", payload={"n": n})
    except LivepeerGatewayError as e:
        return {"t": t, **http_error(e)}
    headers = res.data.get("headers") or {}
    return {"t": t, "status": 200, "session_id": headers.get("Livepeer-Session-Id"), "body": res.data.get("body")}


async def run(args: argparse.Namespace, report: dict[str, Any], cleanup: list) -> None:
    orch, app, signer = args.orch, args.app, args.signer

    # ---- discovery: the runner's wei price -------------------------------------
    entries = await discover_runners(discovery_url=orch.rstrip("/") + "/discovery", app=app)
    runners = [r for e in entries for r in (e.get("runners") or [])]
    check(len(runners) == 1, f"discovery: expected one runner for {app!r}, got {runners}")
    report["discovery"] = {"runner": runners[0]}
    price = runners[0].get("price_info") or {}
    check(price.get("currency") == "wei" and price.get("unit") == "seconds", f"discovery: price_info {price}")

    # ---- unpaid: the 402 challenge, seen through the SDK without a signer -----
    # sdk: call_runner raises LivepeerGatewayError("Live runner paid call requires
    # signer_url") from the LivepeerHTTPError(402) (live_runner.py:938-942).
    try:
        await call_runner(runners[0]["url"], payload={})
        report["unpaid"] = {"status": 200}
    except LivepeerGatewayError as e:
        cause = e.__cause__
        report["unpaid"] = {
            "error": str(e),
            "cause_status": cause.status_code if isinstance(cause, LivepeerHTTPError) else None,
            "cause_body": cause.body if isinstance(cause, LivepeerHTTPError) else None,
        }
    check(report["unpaid"].get("cause_status") == 402, f"unpaid: expected a 402 challenge, got {report['unpaid']}")

    # ---- reserve: 402 -> signer -> paid retry, all inside the SDK --------------
    t_reserve = time.time()
    session: LiveRunnerSession = await reserve_session(orchestrators=orch, app=app, signer_url=signer)
    t_reserved = time.time()
    cleanup.append(session)
    report["session"] = {
        "session_id": session.session_id,
        "app_url": session.app_url,
        "control_url": session.control_url,
        "runner_url": session.runner_url,
        "reserve_started_at": t_reserve,
        "reserved_at": t_reserved,
        "funding": session._payment_task is not None,
    }
    check(session._payment_task is not None, "reserve: the SDK did not start funding the metered session")
    app_url = session.app_url.rstrip("/")

    # ---- echo while funded -------------------------------------------------------
    echoes: list[dict[str, Any]] = []
    report["echoes"] = echoes
    n = 0
    while time.time() < t_reserved + args.fund_seconds:
        echoes.append(await echo(app_url, n))
        n += 1
        await asyncio.sleep(max(0.0, min(args.echo_every, t_reserved + args.fund_seconds - time.time())))
    bad = [e for e in echoes if e.get("status") != 200 or e.get("session_id") != session.session_id]
    check(not bad, f"echo: failed while funded: {bad}")

    # ---- stop funding without stopping the session -----------------------------
    task = session._payment_task
    alive = task is not None and not task.done()
    await session.stop_payments()
    t_stopped = time.time()
    report["stop_funding"] = {"at": t_stopped, "funding_was_alive": alive, "released_flag": session.released}
    check(alive, "stop_funding: the SDK's funding task had already ended")

    # ---- the orchestrator releases the unpaid session ---------------------------
    polls: list[dict[str, Any]] = []
    released_at = None
    deadline = time.time() + args.release_timeout
    n = 0
    while time.time() < deadline:
        r = await echo(app_url, 1000 + n)
        n += 1
        if r.get("status") == 404:
            released_at = r["t"]
            polls.append(r)
            break
        if r.get("status") != 200:
            polls.append(r)  # anything but "still served" is worth a look
        await asyncio.sleep(0.25)
    report["released"] = {
        "at": released_at,
        "after_reserved_s": None if released_at is None else released_at - t_reserved,
        "after_stop_s": None if released_at is None else released_at - t_stopped,
        "polls": n,
        "odd_answers": polls,
    }
    check(released_at is not None, f"released: still served {args.release_timeout}s after funding stopped")

    # ---- close: the stop call still succeeds ----------------------------------
    try:
        await session.aclose()
        report["close"] = {"ok": True}
    except LivepeerGatewayError as e:
        report["close"] = {"ok": False, **http_error(e)}
    cleanup.remove(session)
    check(report["close"]["ok"], f"close: {report['close']}")

    after = await discover_runners(discovery_url=orch.rstrip("/") + "/discovery", app=app)
    report["discovery_after"] = {"runner": [r for e in after for r in (e.get("runners") or [])]}


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orch", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--signer", required=True, help="remote signer base URL, e.g. http://127.0.0.1:9000")
    p.add_argument("--fund-seconds", type=float, default=13.5)
    p.add_argument("--echo-every", type=float, default=2.0)
    p.add_argument("--release-timeout", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=150.0)
    args = p.parse_args()

    collect = Collect()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("livepeer_gateway").addHandler(collect)

    report: dict[str, Any] = {"ok": False, "orchestrator": args.orch, "app": args.app, "signer": args.signer}
    return await run_reported(
        "live_runner_paid",
        lambda report, cleanup: run(args, report, cleanup),
        report,
        args.timeout,
        finish=lambda report: report.update(sdk_warnings=collect.records),
    )

if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
