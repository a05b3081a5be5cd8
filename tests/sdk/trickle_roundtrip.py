"""Publishes segments to a trickle channel with the official SDK's
TricklePublisher and reads them back with its TrickleSubscriber, unchanged.

usage: trickle_roundtrip.py CHANNEL_URL FILE...
Prints one JSON line: {"published": [sha256...], "read": [{"seq", "sha256", "bytes"}...],
"eos": bool} -- read until every published segment came back, then the
channel is closed by the publisher and the subscriber must see its end.
"""
import asyncio
import hashlib
import json
import sys

from livepeer_gateway.trickle_publisher import TricklePublisher
from livepeer_gateway.trickle_subscriber import TrickleSubscriber


async def read_segments(url: str, want: int, out: list) -> bool:
    sub = TrickleSubscriber(url, start_seq=-1)
    try:
        while True:
            seg = await sub.next()
            if seg is None:
                return True  # end of stream (404, Lp-Trickle-Closed)
            data = b""
            reader = seg.make_reader()
            while True:
                chunk = await reader.read(32 * 1024)
                if not chunk:
                    break
                data += chunk
            await seg.close()
            if data:
                out.append({"seq": seg.seq(), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    finally:
        await sub.close()


async def main() -> None:
    url, files = sys.argv[1], sys.argv[2:]
    segments = [open(f, "rb").read() for f in files]
    read: list = []
    reader = asyncio.create_task(read_segments(url, len(segments), read))
    await asyncio.sleep(0.3)  # the subscriber waits on the next segment first
    pub = TricklePublisher(url, "video/MP2T")
    for data in segments:
        seg = await pub.next()
        # Written in pieces, as a muxer hands them over.
        for i in range(0, len(data), 64 * 1024):
            await seg.write(data[i : i + 64 * 1024])
        await seg.close()
    # Give the last segment time to arrive before the channel closes.
    for _ in range(100):
        if len(read) >= len(segments):
            break
        await asyncio.sleep(0.05)
    await pub.close()  # DELETE: the subscriber sees the end of the stream
    eos = await asyncio.wait_for(reader, timeout=10)
    print(json.dumps({
        "published": [hashlib.sha256(s).hexdigest() for s in segments],
        "read": read,
        "eos": eos,
    }), flush=True)


asyncio.run(main())
