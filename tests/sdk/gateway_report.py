"""What the SDK gateway test scripts share: the check that fails a run, an
SDK HTTP error as report data, and running a scenario under a deadline that
prints one JSON report line (the Rust test reads it) and releases whatever a
failure left reserved."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Awaitable, Callable

from livepeer_gateway.errors import LivepeerHTTPError


class Failed(Exception):
    pass


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Failed(msg)


def http_error(e: BaseException) -> dict[str, Any]:
    if isinstance(e, LivepeerHTTPError):
        return {"status": e.status_code, "body": e.body, "error": str(e)}
    return {"status": None, "body": None, "error": f"{type(e).__name__}: {e}"}


async def run_reported(
    name: str,
    scenario: Callable[[dict[str, Any], list], Awaitable[None]],
    report: dict[str, Any],
    timeout: float,
    finish: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Runs `scenario(report, cleanup)` within `timeout` seconds, closes the
    sessions left in `cleanup`, prints `report` as one JSON line and returns
    the exit status."""
    cleanup: list = []
    error = None
    try:
        await asyncio.wait_for(scenario(report, cleanup), timeout=timeout)
        report["ok"] = True
    except asyncio.TimeoutError:
        error = f"timed out after {timeout}s (last step: {list(report)[-1]})"
    except Failed as e:
        error = str(e)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    for s in cleanup:  # release what a failure left reserved
        try:
            await s.aclose()
        except Exception:
            pass
    if finish is not None:
        finish(report)
    if error is not None:
        report["error"] = error
    print(json.dumps(report), flush=True)
    if error is not None:
        print(f"{name}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0
