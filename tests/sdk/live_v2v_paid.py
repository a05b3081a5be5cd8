"""Drives a PAID live video-to-video stream on chain, gateway side, with the
official SDK only (livepeer-gateway 1.0.0, unchanged, in .venv-sdk) and a
remote signer (go-livepeer's /sign-orchestrator-info and
/generate-live-payment; the Rust test serves one on a funded gateway key),
then lets its funding lapse while the stream goes on.

usage: live_v2v_paid.py --orch URL --signer URL --model MODEL --input CLIP
       --fund-seconds S [--cut-timeout S] [--publisher-grace S] [--fps F]
       [--timeout S]

Steps, in order:

  start         start_lv2v(orch, StartJobRequest(model_id=MODEL),
                signer_url=SIGNER) from the event loop: gRPC GetOrchestrator
                (capability 35 + MODEL) with the signer's signature; POST
                {signer}/generate-live-payment {type "lv2v"} (60 s of 720p30
                up front); POST {orch}/live-video-to-video with the payment
                headers -> {publish_url, subscribe_url, control_url,
                events_url, manifest_id}. The SDK's payment sender then
                follows the output and, on its segments at most every 5 s,
                pays POST {orch}/payment with SegData.ManifestID = the
                stream's manifest ID
  publish       job.start_media(MediaPublishConfig): CLIP's frames decoded
                with PyAV and written at their own times (real time), from
                start to cut; the clip must outlast both phases
  read          job.media_output(): every output segment's seq, size and
                arrival time (not kept on disk)
  stop_funding  --fund-seconds after the start: job._payment_task.cancel()
                (the SDK's own sender, stopped from outside); publishing and
                reading go on
  cut           the orchestrator finds the credit short and closes the
                stream's channels: the output ends (the subscriber's 404)
                and the publisher fails ("channel does not exist"); waited
                for --cut-timeout seconds after funding stopped, the
                publisher --publisher-grace seconds after the output ended
  close         job.close()

Prints one JSON report on stdout (also on failure, with "ok": false and
"error"); times are unix seconds (time.time()) so the caller can line them up
with its signer's log. Warnings and errors the SDK logs are collected in
"sdk_warnings". Exits 1 with the message on stderr on failure.
"""
import argparse
import asyncio
import logging
import sys
import time
from typing import Any

import av

from livepeer_gateway.lv2v import LiveVideoToVideo, StartJobRequest, start_lv2v
from livepeer_gateway.media_publish import MediaPublishConfig, VideoOutputConfig

from gateway_report import check, run_reported


class Collect(logging.Handler):
    """Keeps the SDK's warnings and errors for the report."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(
            {"t": record.created, "logger": record.name, "level": record.levelname, "message": record.getMessage()}
        )


class Closing:
    """A job in run_reported's cleanup list (which calls aclose())."""

    def __init__(self, job: LiveVideoToVideo) -> None:
        self.job = job

    async def aclose(self) -> None:
        await self.job.close()


async def read_output(job: LiveVideoToVideo, segments: list) -> None:
    output = job.media_output(start_seq=0)
    try:
        async for seg in output.segments():
            reader = seg.make_reader()
            size = 0
            while True:
                chunk = await reader.read(64 * 1024)
                if not chunk:
                    break
                size += len(chunk)
            if size:
                segments.append({"seq": seg.seq(), "bytes": size, "at": time.time()})
    finally:
        await output.close()


async def run(args: argparse.Namespace, report: dict[str, Any], cleanup: list) -> None:
    # ---- start: GetOrchestrator, the opening payment, the stream -------------
    request = StartJobRequest(model_id=args.model, stream_id="paid-stream", request_id="paid-request")
    t_start = time.time()
    job = start_lv2v(args.orch, request, signer_url=args.signer, timeout=10.0)
    t_started = time.time()
    closing = Closing(job)
    cleanup.append(closing)
    task = job._payment_task
    report["start"] = {
        "raw": job.raw,
        "manifest_id": job.manifest_id,
        "at": t_start,
        "started_at": t_started,
        "price_info": {
            "price_per_unit": job.orchestrator_info.price_info.pricePerUnit,
            "pixels_per_unit": job.orchestrator_info.price_info.pixelsPerUnit,
        },
        "paying": task is not None and not task.done(),
    }
    check(bool(job.manifest_id), f"start: no manifest_id in {job.raw}")
    check(report["start"]["paying"], "start: the SDK did not start its payment sender")

    segments: list[dict[str, Any]] = []
    report["segments"] = segments
    output_task = asyncio.create_task(read_output(job, segments))
    media = job.start_media(MediaPublishConfig(tracks=[VideoOutputConfig(fps=args.fps, keyframe_interval_s=1.0)]))
    container = av.open(args.input)
    stream = container.streams.video[0]
    published = 0
    stop_at = t_started + args.fund_seconds
    stopped_at = None
    cut_deadline = None
    publisher_error = None
    output_ended_at = None
    try:
        start = None
        for frame in container.decode(stream):
            at = float(frame.pts * stream.time_base)
            if start is None:
                start = time.monotonic() - at
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.time()
            if stopped_at is None and now >= stop_at:
                # ---- stop funding: the SDK's sender, cancelled ------------
                alive = not task.done()
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                stopped_at = time.time()
                cut_deadline = stopped_at + args.cut_timeout
                report["stop_funding"] = {
                    "at": stopped_at,
                    "sender_was_alive": alive,
                    "published_frames": published,
                    "segments": len(segments),
                }
                check(alive, "stop_funding: the SDK's payment sender had already ended")
            if output_task.done() and output_ended_at is None:
                output_ended_at = now
            # Past the deadline, or the output long gone and the publisher
            # still not told: enough.
            if cut_deadline is not None and now > cut_deadline:
                break
            if output_ended_at is not None and now > output_ended_at + args.publisher_grace:
                break
            # ---- publish; the cut shows as a failing publisher ------------
            try:
                await media.write_frame(frame)
            except Exception as e:  # noqa: BLE001 -- the channel gone
                publisher_error = {"at": time.time(), "error": f"{type(e).__name__}: {e}"}
                break
            published += 1
        container.close()
        check(stopped_at is not None, f"publish: the clip ended before --fund-seconds {args.fund_seconds}")
        # The output ends (404) at the cut; the publisher may find out first.
        if output_ended_at is None:
            left = max(0.0, cut_deadline - time.time()) if cut_deadline else 0.0
            await asyncio.wait({output_task}, timeout=max(left, 5.0))
            if output_task.done():
                output_ended_at = time.time()
    finally:
        stats = media.get_stats()
        report["published_frames"] = published
        report["publisher"] = {
            "error": publisher_error,
            "post_404": stats.publisher.post_404,
            "terminal_failures": stats.publisher.terminal_failures,
        }
        report["output"] = {
            "ended_at": output_ended_at,
            "error": (
                f"{type(output_task.exception()).__name__}: {output_task.exception()}"
                if output_task.done() and not output_task.cancelled() and output_task.exception()
                else None
            ),
        }
        output_task.cancel()
    report["cut"] = {
        "output_ended_after_stop_s": None if output_ended_at is None else output_ended_at - stopped_at,
        "publisher_failed_after_stop_s": None if publisher_error is None else publisher_error["at"] - stopped_at,
    }
    check(output_ended_at is not None, f"cut: the output still ran {args.cut_timeout}s after funding stopped")
    check(publisher_error is not None,
          f"cut: the publisher still wrote {args.publisher_grace}s after the output ended")

    # ---- close ------------------------------------------------------------------
    cleanup.remove(closing)
    try:
        await job.close()
        report["close"] = {"ok": True}
    except Exception as e:  # noqa: BLE001 -- closing a cut stream is best effort
        report["close"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orch", required=True)
    p.add_argument("--signer", required=True, help="remote signer base URL, e.g. http://127.0.0.1:9000")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--fund-seconds", type=float, required=True)
    p.add_argument("--cut-timeout", type=float, default=90.0)
    p.add_argument("--publisher-grace", type=float, default=20.0,
                   help="seconds the publisher is given to fail once the output ended")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()

    collect = Collect()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("livepeer_gateway").addHandler(collect)

    report: dict[str, Any] = {"ok": False, "orchestrator": args.orch, "signer": args.signer, "model": args.model}
    return await run_reported(
        "live_v2v_paid",
        lambda report, cleanup: run(args, report, cleanup),
        report,
        args.timeout,
        finish=lambda report: report.update(sdk_warnings=collect.records),
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
