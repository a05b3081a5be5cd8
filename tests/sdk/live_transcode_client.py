"""Streams MPEG-TS segments to lpworker's live transcoding app and reads
its renditions back, gateway side, with the official SDK (livepeer-gateway
1.0.0, unchanged, in .venv-sdk), off chain.

usage: live_transcode_client.py --orch URL --app APP --out DIR SEGMENT.ts...

  reserve    reserve_session(orchestrators=orch, app=APP)
  start      call_runner({app_url}/transcode, payload={}) -> publish_url,
             events_url, renditions[{name, width, height, fps, subscribe_url}]
  read       one TrickleSubscriber per rendition (from seq 0), and one on events
  publish    TricklePublisher(publish_url, "video/MP2T"): each file one segment,
             written in 64 KiB pieces as a muxer hands them over
  wait       until every rendition has a segment for every input (or timeout)
  close      session.aclose()

Each rendition segment is written to DIR/NAME-SEQ.ts. Prints one JSON report:
{"ok", "started", "renditions": {NAME: [{"seq", "bytes", "path"}]},
 "events": [...], "publish_to_first_byte_ms": {NAME: [...]}}; exits 1 on failure.
"""
import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from livepeer_gateway.live_runner import call_runner
from livepeer_gateway.selection import reserve_session
from livepeer_gateway.trickle_publisher import TricklePublisher
from livepeer_gateway.trickle_subscriber import TrickleSubscriber


async def read_rendition(url: str, name: str, out_dir: str, want: int, got: list, published: dict, latency: list) -> None:
    sub = TrickleSubscriber(url, start_seq=0)
    try:
        while len(got) < want:
            seg = await sub.next()
            if seg is None:
                return
            reader = seg.make_reader()
            data = b""
            first = None
            while True:
                chunk = await reader.read(64 * 1024)
                if not chunk:
                    break
                if first is None:
                    first = time.monotonic()
                data += chunk
            await seg.close()
            seq = seg.seq()
            if first is not None and seq in published:
                latency.append(round((first - published[seq]) * 1000, 1))
            path = os.path.join(out_dir, f"{name}-{seq}.ts")
            with open(path, "wb") as f:
                f.write(data)
            got.append({"seq": seq, "bytes": len(data), "path": path})
    finally:
        await sub.close()


async def read_events(url: str, events: list) -> None:
    sub = TrickleSubscriber(url, start_seq=0)
    try:
        while True:
            seg = await sub.next()
            if seg is None:
                return
            reader = seg.make_reader()
            data = b""
            while True:
                chunk = await reader.read(64 * 1024)
                if not chunk:
                    break
                data += chunk
            await seg.close()
            if data:
                events.append(json.loads(data))
    finally:
        await sub.close()


async def run(args: argparse.Namespace, report: dict[str, Any]) -> None:
    session = await reserve_session(orchestrators=args.orch, app=args.app)
    try:
        result = await call_runner(f"{session.app_url}/transcode", payload={}, timeout=30.0)
        started = result.data
        report["started"] = started
        segments = [open(p, "rb").read() for p in args.segments]
        published: dict[int, float] = {}
        readers = []
        for r in started["renditions"]:
            got: list = []
            latency: list = []
            report["renditions"][r["name"]] = got
            report["publish_to_first_byte_ms"][r["name"]] = latency
            readers.append(asyncio.create_task(
                read_rendition(r["subscribe_url"], r["name"], args.out, len(segments), got, published, latency)))
        events_task = asyncio.create_task(read_events(started["events_url"], report["events"]))
        await asyncio.sleep(0.3)  # subscribers wait on seq 0 first
        pub = TricklePublisher(started["publish_url"], "video/MP2T")
        for data in segments:
            seg = await pub.next()
            for i in range(0, len(data), 64 * 1024):
                await seg.write(data[i : i + 64 * 1024])
            await seg.close()
            published[seg.seq()] = time.monotonic()
            # Real time: one segment per its duration would be slower than
            # needed here; a short pause keeps them apart.
            await asyncio.sleep(0.2)
        await asyncio.wait_for(asyncio.gather(*readers), timeout=args.timeout)
        await pub.close()
        await asyncio.sleep(0.5)
        events_task.cancel()
    finally:
        await session.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orch", required=True)
    ap.add_argument("--app", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("segments", nargs="+")
    args = ap.parse_args()
    report: dict[str, Any] = {"ok": False, "renditions": {}, "events": [], "publish_to_first_byte_ms": {}}
    try:
        asyncio.run(run(args, report))
        report["ok"] = True
    except BaseException as e:  # noqa: BLE001 -- reported, then exit 1
        report["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(report))
    if not report["ok"]:
        print(report["error"], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
