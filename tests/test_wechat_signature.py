"""Callback signatures: spec vector set C, properties of sign/verify, token format check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfrouter.router.wechat.signature import check_token_format, sign, verify

VECTORS = json.loads((Path(__file__).parent / "data" / "crypto-vectors.json").read_text("utf-8"))
C = VECTORS["C"]
B = VECTORS["B"]

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", max_size=40)


def test_url_verify_vector() -> None:
    v = C["url_verify"]
    assert sign(C["token"], v["timestamp"], v["nonce"]) == v["signature"]
    assert verify(v["signature"], C["token"], v["timestamp"], v["nonce"])


def test_plain_push_vector() -> None:
    v = C["plain_push"]
    assert sign(C["token"], v["timestamp"], v["nonce"]) == v["signature"]
    assert verify(v["signature"], C["token"], int(v["timestamp"]), v["nonce"])


def test_msg_signature_vectors_use_encrypt_as_fourth_string() -> None:
    for case in (B["encrypt_reply"], B["decrypt_inbound"], B["echo_check"]):
        encrypt = case.get("encrypt") or case["echostr"]
        assert sign(B["token"], case["timestamp"], case["nonce"], encrypt) == case["msg_signature"]
        # without the Encrypt part it is a different signature
        assert not verify(case["msg_signature"], B["token"], case["timestamp"], case["nonce"])


def test_sort_is_plain_string_sort_as_in_spec_worked_example() -> None:
    joined = "".join(sorted(["AAAAA", "1714036504", "1514711492"]))
    assert joined == "15147114921714036504AAAAA"
    assert sign("AAAAA", "1714036504", "1514711492") == hashlib.sha1(joined.encode()).hexdigest()


def test_verify_rejects_wrong_and_odd_signatures() -> None:
    v = C["url_verify"]
    good = v["signature"]
    flipped = ("0" if good[0] != "0" else "1") + good[1:]
    assert not verify(flipped, C["token"], v["timestamp"], v["nonce"])
    assert not verify(good, "BBBBB", v["timestamp"], v["nonce"])
    assert not verify(good[:-1], C["token"], v["timestamp"], v["nonce"])
    assert not verify("", C["token"], v["timestamp"], v["nonce"])
    assert not verify("签名" * 20, C["token"], v["timestamp"], v["nonce"])  # non-ASCII: False, no TypeError
    assert not verify(None, C["token"], v["timestamp"], v["nonce"])  # type: ignore[arg-type]
    assert verify(good.upper(), C["token"], v["timestamp"], v["nonce"])  # hex case is not significant


def test_sign_rejects_non_string_parts() -> None:
    with pytest.raises(TypeError, match="part 3"):
        sign("tok", "1", "2", b"bytes")  # type: ignore[arg-type]


@given(token=ids, timestamp=st.integers(0, 2**40), nonce=ids, extra=st.lists(ids, max_size=2))
def test_sign_verify_roundtrip_and_order_independence(
    token: str, timestamp: int, nonce: str, extra: list[str]
) -> None:
    sig = sign(token, timestamp, nonce, *extra)
    assert len(sig) == 40 and sig == sig.lower()
    assert verify(sig, token, str(timestamp), nonce, *extra)
    # roles do not matter, only the sorted set of strings does
    parts = [token, str(timestamp), nonce, *extra]
    assert sign(*reversed(parts)) == sig
    assert not verify(sig, token + "x", timestamp, nonce, *extra)


@pytest.mark.parametrize("token", ["AAAAA", "pamtest", "123456", "abc", "a" * 32, "Tok3nWith9"])
def test_token_format_ok(token: str) -> None:
    assert check_token_format(token) is None


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("ab", "2 characters"),
        ("", "0 characters"),
        ("s" * 33, "33 characters"),
        ("secret-token", "1 character(s)"),
        ("中文secret", "2 character(s)"),
        ("sec ret_x", "2 character(s)"),
    ],
)
def test_token_format_problems_never_echo_the_token(token: str, fragment: str) -> None:
    problem = check_token_format(token)
    assert problem is not None and fragment in problem
    if token:
        assert token not in problem


def test_token_format_non_string() -> None:
    assert check_token_format(12345) == "token must be a string, got int"  # type: ignore[arg-type]
