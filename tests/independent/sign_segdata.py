"""An independent signer for go-livepeer's segment credentials.

Reads JSON lines {"key", "manifest_id", "seq", "hash", "profiles"} on stdin
and answers each with {"flatten", "sig"}: the bytes go-livepeer's
SegTranscodingMetadata.Flatten() makes (core/streamdata.go), built here from
go-livepeer's rules with nothing from lpworker, and the broadcaster's
signature over them made with eth-account (accountmanager.Sign: personal
sign over keccak256 of the bytes).
"""
import json
import sys

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak


def flatten(manifest_id: bytes, seq: int, seg_hash: bytes, profiles: list) -> bytes:
    # ManifestID || LeftPadBytes(big.Int(seq).Bytes(), 32) || Hash.Bytes()
    # || hex(keccak256(name)[0:4] for each profile) as ASCII.
    hash32 = seg_hash[-32:].rjust(32, b"\0")
    ids = b"".join(keccak(text=name)[:4] for name in profiles)
    return manifest_id + abs(seq).to_bytes(32, "big") + hash32 + ids.hex().encode()


for line in sys.stdin:
    if not line.strip():
        continue
    req = json.loads(line)
    flat = flatten(
        bytes.fromhex(req["manifest_id"]),
        int(req["seq"]),
        bytes.fromhex(req["hash"]),
        req["profiles"],
    )
    signed = Account.sign_message(encode_defunct(primitive=keccak(flat)), private_key=req["key"])
    print(json.dumps({"flatten": flat.hex(), "sig": signed.signature.hex().removeprefix("0x")}), flush=True)
