"""Produces lp_rpc wire vectors with go-livepeer's own generated definitions.

Independent of lpworker: it uses `lp_rpc_pb2.py` from the official PyPI
package livepeer-gateway 1.0.0 (generated from go-livepeer's net/lp_rpc.proto):

    pip download --no-deps --python-version 3.12 --only-binary=:all: livepeer-gateway==1.0.0
    unzip livepeer_gateway-1.0.0-py3-none-any.whl 'livepeer_gateway/lp_rpc_pb2.py'
    pip install 'protobuf>=6.31'
    PYTHONPATH=livepeer_gateway python3 tests/vectors/lp_rpc_vectors.py > tests/vectors/lp_rpc.json

tests/lp_rpc_wire.rs decodes each vector with lpworker's proto/net/lp_rpc.proto,
checks every field, and re-encodes it byte for byte.
"""
import json

import lp_rpc_pb2 as p

caps = p.Capabilities(
    bitstring=[0x0400_5FFF, 1 << 3], mandatories=[1 << 2], version="0.9.1",
    capacities={0: 1, 1: 1, 16: 1},
)
caps.constraints.minVersion = "0.8.0"
m = caps.constraints.PerCapability[27].models["stabilityai/sd-turbo"]
m.warm, m.capacity, m.runnerVersion, m.capacityInUse = True, 2, "0.14.0", 1

profiles = [
    p.VideoProfile(name="P240p30fps16x9", width=426, height=240, bitrate=600000, fps=30,
                   format=p.VideoProfile.MPEGTS, fpsDen=1, profile=p.VideoProfile.H264_CONSTRAINED_HIGH,
                   gop=2000, encoder=p.VideoProfile.H264, colorDepth=8,
                   chromaFormat=p.VideoProfile.CHROMA_420, quality=23),
    p.VideoProfile(name="hevc", width=1280, height=720, bitrate=3000000, fps=30000, fpsDen=1001,
                   format=p.VideoProfile.MP4, gop=-1, encoder=p.VideoProfile.H265),
]
seg = p.SegData(
    manifestId=b"manifest-1", seq=42, hash=bytes(range(32)), profiles=b"invalid", sig=b"\x01" * 65,
    duration=2000, capabilities=caps,
    auth_token=p.AuthToken(token=b"\xaa" * 32, session_id="sess-1", expiration=1767225600),
    calc_perceptual_hash=True,
    storage=[p.OSInfo(storageType=p.OSInfo.S3, s3info=p.S3OSInfo(host="h", key="k", policy="p", signature="s", credential="c", xAmzDate="d"))],
    fullProfiles3=profiles, segment_parameters=p.SegParameters(**{"from": 100, "to": 1900}), ForceSessionReinit=True,
)
notify = p.NotifySegment(url="https://orch:8935/stream/sess-1/42.tempfile", segData=seg, taskId=1234567890123,
                         profiles=b"invalid", orchId="0x1234")
register = p.RegisterRequest(secret="s3cret", capacity=10, capabilities=caps)
hw = p.HardwareInformation(pipeline="text-to-image", model_id="stabilityai/sd-turbo")
g = hw.gpu_info["0"]
g.id, g.name, g.major, g.minor, g.memory_free, g.memory_total = "GPU-1", "NVIDIA H100", 9, 0, 70 << 30, 80 << 30
register_ai = p.RegisterAIWorkerRequest(secret="s3cret", capabilities=caps, hardware=[hw])
ai_job = p.NotifyAIJob(AIJobData=p.AIJobData(pipeline="text-to-image", requestData=b'{"input_url":"","request":{}}'), taskId=9)
ticket_params = p.TicketParams(recipient=b"\x11" * 20, face_value=(10**18).to_bytes(8, "big"), win_prob=b"\xff" * 32,
                               recipient_rand_hash=b"\x22" * 32, seed=b"\x33" * 32, expiration_block=(5000).to_bytes(2, "big"),
                               expiration_params=p.TicketExpirationParams(creation_round=100, creation_round_block_hash=b"\x44" * 32))
payment = p.Payment(ticket_params=ticket_params, sender=b"\x55" * 20, expiration_params=ticket_params.expiration_params,
                    ticket_sender_params=[p.TicketSenderParams(sender_nonce=1, sig=b"\x66" * 65), p.TicketSenderParams(sender_nonce=2, sig=b"\x77" * 65)],
                    expected_price=p.PriceInfo(pricePerUnit=1200, pixelsPerUnit=1, capability=27, constraint="stabilityai/sd-turbo"))
info = p.OrchestratorInfo(transcoder="https://orch:8935", ticket_params=ticket_params, price_info=p.PriceInfo(pricePerUnit=1, pixelsPerUnit=3),
                          address=b"\x11" * 20, capabilities=caps, auth_token=seg.auth_token, hardware=[hw],
                          capabilities_prices=[payment.expected_price], nodes=["https://a:1", "https://b:2"])
result = p.TranscodeResult(seq=42, data=p.TranscodeData(segments=[p.TranscodedSegmentData(url="u", pixels=123, perceptual_hash_url="h")], sig=b"\x99" * 65), info=info)
error_result = p.TranscodeResult(seq=43, error="OrchestratorBusy")

vectors = {name: msg.SerializeToString(deterministic=True).hex() for name, msg in [
    ("register_request", register), ("notify_segment", notify), ("register_ai_worker_request", register_ai),
    ("notify_ai_job", ai_job), ("payment", payment), ("orchestrator_info", info),
    ("transcode_result", result), ("transcode_result_error", error_result),
]}
print(json.dumps(vectors, indent=1, sort_keys=True))
