"""WeCom's callback crypto with the corp id as receive id: the spec's vector set B (wechatpy's WeCom
variant: encrypted echostr check, encrypted reply, inbound message), the kf callback XML round trip,
and third-party decryption of our callbacks by wechatpy's WeCom crypto (when installed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.errors import AppIdMismatch, InvalidPush, SignatureMismatch, XmlRejected
from kfrouter.router.wechat.wecom_kf import KfAuthChange, KfCallback, build_kf_callback, parse_kf_callback

B = json.loads((Path(__file__).parent / "data" / "crypto-vectors.json").read_text("utf-8"))["B"]


def crypto_b() -> SafeModeCrypto:
    return SafeModeCrypto(B["token"], B["encoding_aes_key"], B["receive_id"], id_name="corpid")


def test_vector_b_echostr_check() -> None:
    e = B["echo_check"]
    assert (
        crypto_b().decrypt_echostr(e["echostr"], e["msg_signature"], e["timestamp"], e["nonce"])
        == e["decrypted"]
    )
    with pytest.raises(SignatureMismatch):
        crypto_b().decrypt_echostr(e["echostr"], "0" * 40, e["timestamp"], e["nonce"])
    with pytest.raises(InvalidPush):
        crypto_b().decrypt_echostr("", e["msg_signature"], e["timestamp"], e["nonce"])


def test_vector_b_encrypt_reply_and_inbound() -> None:
    r = B["encrypt_reply"]
    c = crypto_b()
    assert c.encrypt(r["plaintext"], r["random16"].encode()) == r["encrypt"]
    assert c.msg_signature(r["timestamp"], r["nonce"], r["encrypt"]) == r["msg_signature"]
    d = B["decrypt_inbound"]
    body = f"<xml><ToUserName><![CDATA[{B['receive_id']}]]></ToUserName><Encrypt><![CDATA[{d['encrypt']}]]></Encrypt><AgentID><![CDATA[1]]></AgentID></xml>"
    assert c.decrypt_push(body, d["msg_signature"], d["timestamp"], d["nonce"]) == d["decrypted"]


def test_another_corp_id_is_refused_by_name() -> None:
    d = B["decrypt_inbound"]
    other = SafeModeCrypto(B["token"], B["encoding_aes_key"], "wwSOMEONEELSE", id_name="corpid")
    with pytest.raises(AppIdMismatch, match=r"for corpid 'wx49f0ab532d5d035a'"):
        other.decrypt(d["encrypt"])
    assert "corpid=" in repr(other) and B["token"] not in repr(other)


@settings(max_examples=60, deadline=None)
@given(
    token=st.text(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=128
    ),
    open_kfid=st.from_regex(r"[0-9A-Za-z_-]{1,64}", fullmatch=True),
    create_time=st.integers(0, 2**40),
)
def test_kf_callback_round_trip(token: str, open_kfid: str, create_time: int) -> None:
    c = crypto_b()
    xml = build_kf_callback(B["receive_id"], create_time, token, open_kfid)
    body, sig = c.encrypt_push(xml, "1411525903", "461056294", b"0123456789abcdef", to_user=B["receive_id"])
    back = parse_kf_callback(c.decrypt_push(body, sig, "1411525903", "461056294"))
    assert back == KfCallback(
        to_user=B["receive_id"], create_time=create_time, token=token, open_kfid=open_kfid
    )
    assert back.dedup_key == f"kf:{open_kfid}:{token}"


def test_kf_callback_doc_sample_and_bad_input() -> None:
    sample = (
        "<xml><ToUserName><![CDATA[ww12345678910]]></ToUserName><CreateTime>1348831860</CreateTime>"
        "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>"
        "<Token><![CDATA[ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR]]></Token>"
        "<OpenKfId><![CDATA[wkxxxxxxx]]></OpenKfId></xml>"
    )
    cb = parse_kf_callback(sample)
    assert isinstance(cb, KfCallback) and cb.open_kfid == "wkxxxxxxx" and cb.create_time == 1348831860
    auth = parse_kf_callback(
        "<xml><ToUserName>ww1</ToUserName><CreateTime>1</CreateTime><MsgType>event</MsgType>"
        "<Event>kf_account_auth_change</Event><AuthAddOpenKfId>wkA,wkB</AuthAddOpenKfId></xml>"
    )
    assert auth == KfAuthChange(to_user="ww1", create_time=1, added=("wkA", "wkB"), removed=())
    with pytest.raises(InvalidPush, match="OpenKfId"):
        parse_kf_callback(sample.replace("<OpenKfId><![CDATA[wkxxxxxxx]]></OpenKfId>", ""))
    with pytest.raises(InvalidPush, match="expected MsgType event"):
        parse_kf_callback(sample.replace("kf_msg_or_event", "change_contact"))
    with pytest.raises(XmlRejected):
        parse_kf_callback('<!DOCTYPE x [<!ENTITY e "boom">]><xml>&e;</xml>')


def test_wechatpy_decrypts_our_callbacks() -> None:
    """A third-party WeCom implementation reads what the fake sends."""
    wecom_crypto = pytest.importorskip("wechatpy.enterprise.crypto")
    c = crypto_b()
    xml = build_kf_callback(B["receive_id"], 1700000000, "ENCtoken", "wkA")
    body, sig = c.encrypt_push(xml, "1700000000", "12345", b"abcdefghijklmnop", to_user=B["receive_id"])
    theirs = wecom_crypto.WeChatCrypto(B["token"], B["encoding_aes_key"], B["receive_id"])
    assert parse_kf_callback(theirs.decrypt_message(body, sig, "1700000000", "12345")) == parse_kf_callback(
        xml
    )
    enc = c.encrypt("echo-123", b"abcdefghijklmnop")
    assert theirs.check_signature(c.msg_signature("1", "2", enc), "1", "2", enc) == "echo-123"
