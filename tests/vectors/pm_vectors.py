"""Ticket vectors computed independently of lpworker with eth-account,
eth-utils (keccak) and Python's hmac, following go-livepeer's pm package:

    python3 -m venv /tmp/v && /tmp/v/bin/pip install eth-account==0.14.0
    /tmp/v/bin/python tests/vectors/pm_vectors.py > tests/vectors/pm.json
"""
import hashlib
import hmac
import json
from fractions import Fraction

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak

MAX = 2**256 - 1


def minimal(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def pad32(n: int) -> bytes:
    return n.to_bytes(32, "big")


cases = []
for i, (fv, wp, nonce, rnd, price) in enumerate([
    (10**18, MAX // 1000, 1, 0, Fraction(1200, 1)),
    (5 * 10**17, MAX, 7, 4321, Fraction(2, 6)),          # price reduces to 1/3
    (123456789, 1, 2**32 - 1, 10, Fraction(0, 1)),
    (10**15, MAX // 2, 42, 99, Fraction(5000, 3)),
]):
    sender = Account.from_key(bytes([i + 1]) * 32)
    recipient = Account.from_key(bytes([0x40 + i]) * 32).address
    secret = bytes([0x80 + i]) * 32
    seed = int.from_bytes(keccak(b"seed" + bytes([i])), "big")
    expiration_block = 1_000_000 + i
    block_hash = keccak(b"block" + bytes([i])) if rnd else b"\x00" * 32
    aux = (pad32(rnd) + block_hash) if (rnd or block_hash != b"\x00" * 32) else b""
    msg = (minimal(seed) + bytes.fromhex(sender.address[2:]) + minimal(fv) + minimal(wp) + minimal(expiration_block)
           + minimal(price.numerator) + minimal(price.denominator) + aux)
    rand = int.from_bytes(hmac.new(secret, msg, hashlib.sha256).digest(), "big")
    rand_hash = keccak(pad32(rand))
    packed = (bytes.fromhex(recipient[2:]) + bytes.fromhex(sender.address[2:]) + pad32(fv) + pad32(wp) + pad32(nonce)
              + rand_hash + aux)
    ticket_hash = keccak(packed)
    sig = Account.sign_message(encode_defunct(primitive=ticket_hash), sender.key).signature
    win = int.from_bytes(keccak(sig + pad32(rand)), "big") < wp
    cases.append({
        "sender_key": sender.key.hex(), "sender": sender.address, "recipient": recipient,
        "face_value": str(fv), "win_prob": str(wp), "sender_nonce": nonce,
        "creation_round": rnd, "creation_round_block_hash": block_hash.hex(),
        "secret": secret.hex(), "seed": hex(seed), "expiration_block": expiration_block,
        "price_num": price.numerator, "price_den": price.denominator,
        "recipient_rand": hex(rand), "recipient_rand_hash": rand_hash.hex(),
        "ticket_hash": ticket_hash.hex(), "sig": sig.hex(), "winning": win,
    })
print(json.dumps(cases, indent=1))
