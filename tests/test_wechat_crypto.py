"""Safe-mode crypto: spec vector sets A and B, padding edge cases, key rotation, appid check, errors."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.router.wechat.crypto import (
    Decrypted,
    SafeModeCrypto,
    decode_aes_key,
    parse_reply_envelope,
    pkcs7_pad,
    pkcs7_unpad,
)
from kfrouter.router.wechat.errors import (
    AppIdMismatch,
    BadAESKey,
    DecryptError,
    InvalidPush,
    SignatureMismatch,
    WeChatCodecError,
    XmlRejected,
)
from kfrouter.router.wechat.push import UserMessage, parse_encrypted_envelope, parse_push
from kfrouter.router.wechat.xml import MAX_BODY_BYTES

VECTORS = json.loads((Path(__file__).parent / "data" / "crypto-vectors.json").read_text("utf-8"))
A = VECTORS["A"]
B = VECTORS["B"]

KEY1 = A["encoding_aes_key"]
KEY2 = B["encoding_aes_key"]
APPID = A["appid"]
R16 = b"0123456789abcdef"


def raw_encrypt(encoding_aes_key: str, buf: bytes) -> str:
    """Encrypt an arbitrary (already padded) buffer the WeChat way, to forge malformed messages."""
    key = decode_aes_key(encoding_aes_key)
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(buf) + enc.finalize()).decode()


def raw_decrypt(encoding_aes_key: str, encrypt: str) -> bytes:
    key = decode_aes_key(encoding_aes_key)
    dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    return dec.update(base64.b64decode(encrypt)) + dec.finalize()


def frame(msg: bytes, appid: bytes, random16: bytes = R16) -> bytes:
    return random16 + struct.pack(">I", len(msg)) + msg + appid


# -- vector set A: official sample values, fixed random16 ----------------------------------------


@pytest.mark.parametrize("case", A["cases"], ids=lambda c: c["name"])
def test_vector_a_encrypt_and_decrypt(case: dict[str, str]) -> None:
    crypto = SafeModeCrypto(A["token"], A["encoding_aes_key"], A["appid"])
    assert crypto.encrypt(case["plaintext"], A["random16"].encode("ascii")) == case["encrypt"]
    assert crypto.decrypt(case["encrypt"]) == case["plaintext"]
    assert crypto.decrypt_detailed(case["encrypt"]) == Decrypted(case["plaintext"], used_previous_key=False)


# -- vector set B: wechatpy's WeCom vectors (corp id as the appid) -------------------------------


def b_crypto() -> SafeModeCrypto:
    return SafeModeCrypto(B["token"], B["encoding_aes_key"], B["receive_id"])


def test_vector_b_encrypt_reply_envelope() -> None:
    v = B["encrypt_reply"]
    xml = b_crypto().encrypt_reply(v["plaintext"], v["timestamp"], v["nonce"], v["random16"].encode())
    env = parse_reply_envelope(xml)
    assert env.encrypt == v["encrypt"]
    assert env.msg_signature == v["msg_signature"]
    assert (env.timestamp, env.nonce) == (v["timestamp"], v["nonce"])
    assert xml.startswith("<xml>\n<Encrypt><![CDATA[") and xml.endswith("</Nonce>\n</xml>")
    assert b_crypto().decrypt_reply(xml) == Decrypted(v["plaintext"])


def test_vector_b_decrypt_inbound() -> None:
    v = B["decrypt_inbound"]
    body = f"<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName><Encrypt><![CDATA[{v['encrypt']}]]></Encrypt><AgentID><![CDATA[1]]></AgentID></xml>"
    text = b_crypto().decrypt_push(body.encode(), v["msg_signature"], v["timestamp"], v["nonce"])
    assert text == v["decrypted"]
    push = parse_push(text)
    assert isinstance(push, UserMessage)
    assert (push.from_user, push.content, push.msg_id) == ("messense", "test", 4363689963896700987)
    assert push.fields == {"AgentID": "1"}


def test_vector_b_echo_check_decrypts_with_same_algorithm() -> None:
    v = B["echo_check"]
    assert b_crypto().msg_signature(v["timestamp"], v["nonce"], v["echostr"]) == v["msg_signature"]
    assert b_crypto().decrypt(v["echostr"]) == v["decrypted"]


def test_vector_b_rejects_wrong_signature_and_tampering() -> None:
    v = B["decrypt_inbound"]
    body = f"<xml><Encrypt><![CDATA[{v['encrypt']}]]></Encrypt></xml>"
    with pytest.raises(SignatureMismatch) as exc:
        b_crypto().decrypt_push(body, "0" * 40, v["timestamp"], v["nonce"])
    assert exc.value.http_status == 403
    with pytest.raises(SignatureMismatch):
        b_crypto().decrypt_push(body, v["msg_signature"], str(int(v["timestamp"]) + 1), v["nonce"])
    # Tamper with the ciphertext and sign the tampered text, so only the decryption can notice.
    # CBC: flipping byte 0 flips the first byte of the length field in the next block.
    crypto = b_crypto()
    for index, expected in ((0, DecryptError), (-20, AppIdMismatch)):
        data = bytearray(base64.b64decode(v["encrypt"]))
        data[index] ^= 0x80
        tampered = base64.b64encode(bytes(data)).decode()
        sig = crypto.msg_signature(v["timestamp"], v["nonce"], tampered)
        body2 = f"<xml><Encrypt><![CDATA[{tampered}]]></Encrypt></xml>"
        with pytest.raises(expected):
            crypto.decrypt_push(body2, sig, v["timestamp"], v["nonce"])


def test_appid_is_checked_for_vector_b() -> None:
    v = B["decrypt_inbound"]
    other = SafeModeCrypto(B["token"], B["encoding_aes_key"], "wx0000000000000000")
    with pytest.raises(AppIdMismatch) as exc:
        other.decrypt(v["encrypt"])
    assert exc.value.got == B["receive_id"] and exc.value.expected == "wx0000000000000000"
    assert "wx49f0ab532d5d035a" in str(exc.value)


# -- padding ---------------------------------------------------------------------------------------


def test_full_32_byte_pad_block_when_aligned() -> None:
    crypto = SafeModeCrypto("tok", KEY1, APPID)
    msg = "x" * (32 * 3 - 16 - 4 - len(APPID))  # unpadded buffer is exactly 96 bytes
    assert (16 + 4 + len(msg) + len(APPID)) % 32 == 0
    enc = crypto.encrypt(msg, R16)
    plain = raw_decrypt(KEY1, enc)
    assert len(plain) == 96 + 32
    assert plain[-32:] == b"\x20" * 32
    assert plain[:96] == frame(msg.encode(), APPID.encode())
    assert crypto.decrypt(enc) == msg


@pytest.mark.parametrize("msg_len", range(0, 70))
def test_pad_length_is_1_to_32_and_roundtrips(msg_len: int) -> None:
    crypto = SafeModeCrypto("tok", KEY1, APPID)
    enc = crypto.encrypt("m" * msg_len, R16)
    plain = raw_decrypt(KEY1, enc)
    unpadded = 16 + 4 + msg_len + len(APPID)
    n = plain[-1]
    assert 1 <= n <= 32 and len(plain) == unpadded + n and len(plain) % 32 == 0
    assert crypto.decrypt(enc) == "m" * msg_len


def test_pkcs7_helpers() -> None:
    assert pkcs7_pad(b"") == b"\x20" * 32
    assert pkcs7_pad(b"a" * 31) == b"a" * 31 + b"\x01"
    assert pkcs7_unpad(b"a" * 30 + b"\x02\x02") == b"a" * 30
    assert pkcs7_unpad(b"\x20" * 32) == b""


@pytest.mark.parametrize(
    ("tail", "fragment"),
    [
        (b"\x00", "pad byte 0"),
        (bytes([33]), "pad byte 33"),
        (bytes([255]), "pad byte 255"),
        (b"\x01\x03", "not all 3"),  # says 3 but the byte before is 1
    ],
)
def test_bad_padding_rejected(tail: bytes, fragment: str) -> None:
    crypto = SafeModeCrypto("tok", KEY1, APPID)
    body = frame(b"<xml/>", APPID.encode())
    buf = body + b"\x01" * (64 - len(body) - len(tail)) + tail
    assert len(buf) == 64
    with pytest.raises(DecryptError, match=fragment):
        crypto.decrypt(raw_encrypt(KEY1, buf))


def test_length_field_larger_than_buffer_rejected() -> None:
    crypto = SafeModeCrypto("tok", KEY1, APPID)
    buf = R16 + struct.pack(">I", 1000) + b"<xml/>" + APPID.encode()
    with pytest.raises(DecryptError, match="length field says 1000"):
        crypto.decrypt(raw_encrypt(KEY1, pkcs7_pad(buf)))


def test_short_buffer_and_non_utf8_message_rejected() -> None:
    crypto = SafeModeCrypto("tok", KEY1, APPID)
    with pytest.raises(DecryptError, match="shorter than"):
        crypto.decrypt(raw_encrypt(KEY1, pkcs7_pad(b"0123456789")))
    with pytest.raises(DecryptError, match="not UTF-8"):
        crypto.decrypt(raw_encrypt(KEY1, pkcs7_pad(frame(b"\xff\xfe", APPID.encode()))))


@pytest.mark.parametrize(
    ("encrypt", "fragment"),
    [
        ("not base64!!", "not valid base64"),
        ("", "0 bytes"),
        (base64.b64encode(b"x" * 20).decode(), "20 bytes"),
    ],
)
def test_malformed_encrypt_text(encrypt: str, fragment: str) -> None:
    with pytest.raises(DecryptError, match=fragment):
        SafeModeCrypto("tok", KEY1, APPID).decrypt(encrypt)


# -- round trips (Hypothesis) --------------------------------------------------------------------


@settings(max_examples=150)
@given(
    text=st.text(),
    random16=st.binary(min_size=16, max_size=16),
    appid=st.text(min_size=1, max_size=40),
)
def test_encrypt_decrypt_roundtrip(text: str, random16: bytes, appid: str) -> None:
    crypto = SafeModeCrypto("tok", KEY1, appid)
    enc = crypto.encrypt(text, random16)
    assert crypto.decrypt(enc) == text
    assert raw_decrypt(KEY1, enc)[:16] == random16


@settings(max_examples=50)
@given(
    text=st.text(),
    random16=st.binary(min_size=16, max_size=16),
    timestamp=st.integers(0, 2**40),
    nonce=st.text(alphabet="0123456789abcdef", min_size=1, max_size=12),
)
def test_reply_envelope_roundtrip(text: str, random16: bytes, timestamp: int, nonce: str) -> None:
    crypto = SafeModeCrypto("tok", KEY1, APPID)
    envelope = crypto.encrypt_reply(text, timestamp, nonce, random16)
    assert crypto.decrypt_reply(envelope).text == text


@settings(max_examples=100)
@given(st.binary(min_size=16, max_size=200).map(lambda b: b[: len(b) // 16 * 16]))
def test_random_ciphertext_raises_only_codec_errors(data: bytes) -> None:
    crypto = SafeModeCrypto("tok", KEY1, APPID, previous_aes_key=KEY2)
    with contextlib.suppress(WeChatCodecError):
        crypto.decrypt(base64.b64encode(data).decode())


@given(st.text(max_size=300))
def test_arbitrary_encrypt_text_raises_only_codec_errors(text: str) -> None:
    with contextlib.suppress(WeChatCodecError):
        SafeModeCrypto("tok", KEY1, APPID).decrypt(text)


def test_push_roundtrip_for_the_fake_server() -> None:
    crypto = SafeModeCrypto("tok", KEY1, APPID)
    xml = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>5</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>9</MsgId></xml>"
    body, sig = crypto.encrypt_push(xml, 1700000000, "nonce1", R16)
    assert parse_encrypted_envelope(body).to_user == "gh_1"
    assert crypto.decrypt_push(body, sig, "1700000000", "nonce1") == xml


# -- key rotation and appid ------------------------------------------------------------------------


def test_previous_key_fallback() -> None:
    old = SafeModeCrypto("tok", KEY1, APPID)
    new = SafeModeCrypto("tok", KEY2, APPID, previous_aes_key=KEY1)
    assert new.has_previous_key and not old.has_previous_key
    enc_old = old.encrypt("under the old key", R16)
    assert new.decrypt_detailed(enc_old) == Decrypted("under the old key", used_previous_key=True)
    assert new.decrypt_detailed(new.encrypt("new", R16)) == Decrypted("new", used_previous_key=False)
    # a reply encrypted with the key that worked is readable by a sender still on the old key
    assert old.decrypt(new.encrypt("reply", R16, previous_key=True)) == "reply"
    # the same push through the signed path
    body, sig = old.encrypt_push("<xml><ToUserName>gh</ToUserName></xml>", 1, "n", R16)
    assert new.decrypt_push_detailed(body, sig, 1, "n").used_previous_key
    # without the previous key configured the old message cannot be read
    with pytest.raises(DecryptError):
        SafeModeCrypto("tok", KEY2, APPID).decrypt(enc_old)


def test_previous_key_failure_names_both_attempts() -> None:
    new = SafeModeCrypto("tok", KEY2, APPID, previous_aes_key=KEY1)
    third = SafeModeCrypto("tok", "Z" * 43, APPID)
    with pytest.raises(DecryptError, match=r"current key .* previous key"):
        new.decrypt(third.encrypt("x", R16))


def test_wrong_appid_rejected_even_with_previous_key() -> None:
    sender = SafeModeCrypto("tok", KEY1, "wxSOMEONEELSE")
    for receiver in (
        SafeModeCrypto("tok", KEY1, APPID),
        SafeModeCrypto("tok", KEY2, APPID, previous_aes_key=KEY1),  # old key decrypts, appid wrong
        SafeModeCrypto("tok", KEY1, APPID, previous_aes_key=KEY2),  # current key decrypts, appid wrong
    ):
        with pytest.raises(AppIdMismatch, match="wxSOMEONEELSE"):
            receiver.decrypt(sender.encrypt("<xml/>", R16))


def test_previous_key_flag_without_previous_key() -> None:
    with pytest.raises(WeChatCodecError, match="no previous_aes_key"):
        SafeModeCrypto("tok", KEY1, APPID).encrypt("x", R16, previous_key=True)


# -- key validation and secrecy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        (KEY1[:-1], "got 42 characters"),
        (KEY1 + "A", "got 44 characters"),
        ("", "got 0 characters"),
        (KEY1[:-1] + "+", "only ASCII letters and digits"),
        (KEY1[:-1] + "é", "only ASCII letters and digits"),
    ],
)
def test_bad_aes_key_names_length_not_key(key: str, fragment: str) -> None:
    with pytest.raises(BadAESKey, match=fragment) as exc:
        SafeModeCrypto("tok", key, APPID)
    if key:
        assert key not in str(exc.value) and key[:10] not in str(exc.value)
    assert "encoding_aes_key" in str(exc.value)


def test_bad_previous_key_is_named() -> None:
    with pytest.raises(BadAESKey, match="previous_aes_key must be 43 characters, got 10"):
        SafeModeCrypto("tok", KEY1, APPID, previous_aes_key="x" * 10)
    with pytest.raises(BadAESKey, match="must be a string"):
        SafeModeCrypto("tok", 42, APPID)  # type: ignore[arg-type]


def test_repr_hides_secrets() -> None:
    crypto = SafeModeCrypto("supersecrettoken", KEY1, APPID, previous_aes_key=KEY2)
    text = repr(crypto)
    assert "supersecrettoken" not in text and KEY1 not in text and KEY2 not in text
    assert APPID in text


@pytest.mark.parametrize("random16", [b"", b"short", b"x" * 17])
def test_random16_must_be_16_bytes(random16: bytes) -> None:
    with pytest.raises(WeChatCodecError, match="random16 must be 16 bytes"):
        SafeModeCrypto("tok", KEY1, APPID).encrypt("x", random16)


def test_constructor_and_argument_validation() -> None:
    with pytest.raises(WeChatCodecError, match="token"):
        SafeModeCrypto("", KEY1, APPID)
    with pytest.raises(WeChatCodecError, match="appid"):
        SafeModeCrypto("tok", KEY1, "")
    crypto = SafeModeCrypto("tok", KEY1, APPID)
    with pytest.raises(WeChatCodecError, match="timestamp"):
        crypto.encrypt_reply("<xml/>", "12ab", "n", R16)
    with pytest.raises(WeChatCodecError, match="unencodable"):
        crypto.encrypt("\ud800", R16)


# -- envelopes -------------------------------------------------------------------------------------


def test_decrypt_push_envelope_errors() -> None:
    crypto = SafeModeCrypto("tok", KEY1, APPID)
    with pytest.raises(InvalidPush, match="<Encrypt> is missing"):
        crypto.decrypt_push("<xml><ToUserName>gh</ToUserName></xml>", "0" * 40, 1, "n")
    big = "<xml><Encrypt>" + "A" * MAX_BODY_BYTES + "</Encrypt></xml>"
    with pytest.raises(XmlRejected) as exc:
        crypto.decrypt_push(big, "0" * 40, 1, "n")
    assert exc.value.http_status == 413
    with pytest.raises(XmlRejected) as exc:
        crypto.decrypt_push(b'{"Encrypt": "x"}', "0" * 40, 1, "n")
    assert exc.value.http_status == 400


def test_reply_envelope_missing_parts() -> None:
    with pytest.raises(InvalidPush, match="<MsgSignature> is missing"):
        parse_reply_envelope("<xml><Encrypt>a</Encrypt><TimeStamp>1</TimeStamp><Nonce>n</Nonce></xml>")
    with pytest.raises(InvalidPush, match="TimeStamp"):
        parse_reply_envelope(
            "<xml><Encrypt>a</Encrypt><MsgSignature>s</MsgSignature><TimeStamp>x</TimeStamp><Nonce>n</Nonce></xml>"
        )
    crypto = SafeModeCrypto("tok", KEY1, APPID)
    env = crypto.encrypt_reply("<xml/>", 1, "n", R16).replace("<Nonce><![CDATA[n]]>", "<Nonce><![CDATA[m]]>")
    with pytest.raises(SignatureMismatch):
        crypto.decrypt_reply(env)
