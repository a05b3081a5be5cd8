"""A gateway's side of live video-to-video, with the official SDK
(livepeer-gateway 1.0.0, unchanged, in .venv-sdk): starts a stream, plays
a clip into it in real time, reads the output, sends control messages and
reads the events channel.

usage: live_v2v_client.py --orch URL (--app APP | --lv2v) --model MODEL
                          --input CLIP --out DIR [--params JSON]
                          [--control JSON --control-at SECONDS]...

  start    --app: reserve_session(orchestrators=orch, app=APP), then
           call_runner({app_url}/live-video-to-video, StartJobRequest) and
           LiveVideoToVideo.from_json (start_scope's way onto a runner);
           --lv2v: start_lv2v(orch, StartJobRequest) (POST
           {orch}/live-video-to-video, with payments as the SDK sends them)
  publish  job.start_media(MediaPublishConfig): the clip's frames decoded
           with PyAV and written at their own times (real time)
  control  job.control.write(JSON) once the clip reaches each --control-at
  read     job.media_output(): each output segment written to
           DIR/out-SEQ.ts; job.events(): every event kept
  end      --linger seconds, media.close(), then wait for the output to end (or --tail
           seconds without a new segment), then job.close()

Prints one JSON report: {"ok", "started", "published_frames", "segments":
[{"seq", "bytes", "path", "at"}], "events": [{"at", "event"}],
"controls": [{"at", "message"}], "error"?}; `at` is seconds since the
first frame was written. Exits 1 on failure.
"""
import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import av

from livepeer_gateway.live_runner import call_runner
from livepeer_gateway.lv2v import LiveVideoToVideo, StartJobRequest, start_lv2v
from livepeer_gateway.media_publish import MediaPublishConfig, VideoOutputConfig
from livepeer_gateway.selection import reserve_session


async def read_output(job: LiveVideoToVideo, out_dir: str, got: list, clock: list) -> None:
    output = job.media_output(start_seq=0)
    try:
        async for seg in output.segments():
            reader = seg.make_reader()
            data = b""
            while True:
                chunk = await reader.read(64 * 1024)
                if not chunk:
                    break
                data += chunk
            if not data:
                continue
            seq = seg.seq()
            path = os.path.join(out_dir, f"out-{seq:04d}.ts")
            with open(path, "wb") as f:
                f.write(data)
            got.append({"seq": seq, "bytes": len(data), "path": path,
                        "at": round(time.monotonic() - clock[0], 3)})
    finally:
        await output.close()


async def read_events(job: LiveVideoToVideo, events: list, clock: list) -> None:
    async for event in job.events(start_seq=0):
        events.append({"at": round(time.monotonic() - clock[0], 3), "event": event})


async def run(args: argparse.Namespace, report: dict[str, Any]) -> None:
    params = json.loads(args.params) if args.params else None
    request = StartJobRequest(model_id=args.model, params=params, stream_id="test-stream",
                              request_id="test-request")
    session = None
    if args.lv2v:
        job = start_lv2v(args.orch, request, timeout=10.0)
    else:
        session = await reserve_session(orchestrators=args.orch, app=args.app)
        result = await call_runner(f"{session.app_url}/live-video-to-video",
                                   payload=request.to_json(), timeout=30.0)
        job = LiveVideoToVideo.from_json(result.data)
    report["started"] = job.raw
    if not job.manifest_id:
        raise RuntimeError(f"no manifest_id in {job.raw}")
    clock = [time.monotonic()]
    output_task = asyncio.create_task(read_output(job, args.out, report["segments"], clock))
    events_task = asyncio.create_task(read_events(job, report["events"], clock))
    controls = sorted(zip(args.control_at, args.control), key=lambda c: c[0])
    try:
        media = job.start_media(MediaPublishConfig(
            tracks=[VideoOutputConfig(fps=args.fps, keyframe_interval_s=1.0)]))
        container = av.open(args.input)
        stream = container.streams.video[0]
        start = None
        for frame in container.decode(stream):
            at = float(frame.pts * stream.time_base)
            if start is None:
                start = time.monotonic() - at
                clock[0] = start
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            while controls and controls[0][0] <= at:
                _, message = controls.pop(0)
                await job.control.write(json.loads(message))
                report["controls"].append({"at": round(time.monotonic() - clock[0], 3),
                                           "message": message})
            await media.write_frame(frame)
            report["published_frames"] += 1
        container.close()
        # The last segment goes out when the publisher closes, and closing
        # deletes the channel: a runner still busy with the segment before
        # would find it gone. A gateway ending a stream loses that tail;
        # the test waits for the runner to reach the live edge first.
        await asyncio.sleep(args.linger)
        await media.close()
        report["published_at"] = round(time.monotonic() - clock[0], 3)
        # The output ends with the input; a stream that does not end is
        # cut after --tail seconds without a new segment.
        seen = -1
        while not output_task.done():
            if len(report["segments"]) == seen:
                break
            seen = len(report["segments"])
            await asyncio.wait({output_task}, timeout=args.tail)
        report["output_ended"] = output_task.done()
        if output_task.done() and output_task.exception():
            raise output_task.exception()
    finally:
        output_task.cancel()
        events_task.cancel()
        await job.close()
        if session is not None:
            await session.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orch", required=True)
    ap.add_argument("--app")
    ap.add_argument("--lv2v", action="store_true")
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--params")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--control", action="append", default=[])
    ap.add_argument("--control-at", action="append", type=float, default=[])
    ap.add_argument("--tail", type=float, default=8.0)
    ap.add_argument("--linger", type=float, default=2.0)
    args = ap.parse_args()
    if bool(args.app) == args.lv2v:
        ap.error("one of --app and --lv2v")
    if len(args.control) != len(args.control_at):
        ap.error("each --control needs its --control-at")
    report: dict[str, Any] = {"ok": False, "published_frames": 0, "segments": [], "events": [],
                              "controls": []}
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
