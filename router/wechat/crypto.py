"""Safe-mode (安全模式) message crypto: AES-256-CBC with WeChat's framing (spec §5.6).

``buf = random16 || uint32_be(len(msg)) || msg || appid``, padded with PKCS#7 over a 32-byte block
(a full block of 0x20 when already aligned), encrypted with AES-256-CBC, key = base64(EncodingAESKey
+ "="), iv = key[:16], then base64. Decryption validates the padding strictly and always checks the
trailing appid (WxJava skips it; we don't). Key rotation: the previous EncodingAESKey is tried when
the current one fails, and replies can be encrypted with whichever key worked.

WeCom (企业微信, e.g. 微信客服 callbacks) uses the same framing with the corp id as the trailing
"receive id": pass the corpid as ``appid`` and ``id_name="corpid"`` (messages then say corpid).
WeCom's URL check sends an *encrypted* echostr signed with ``msg_signature``: ``decrypt_echostr``.

Pure: the 16 random bytes are an argument (pass ``os.urandom(16)`` or ``secrets.token_bytes(16)``).
Errors never contain a key or the token.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

from attrs import frozen
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kfrouter.router.wechat import signature
from kfrouter.router.wechat.errors import (
    AppIdMismatch,
    BadAESKey,
    DecryptError,
    InvalidPush,
    SignatureMismatch,
    WeChatCodecError,
)
from kfrouter.router.wechat.push import parse_encrypted_envelope
from kfrouter.router.wechat.xml import MAX_BODY_BYTES, cdata, child_map, leaf_text, parse_xml_root

BLOCK = 32  # WeChat's PKCS#7 block size (not AES's 16)
KEY_CHARS = 43
_KEY_ALPHABET = re.compile(r"[A-Za-z0-9]*")
_DIGITS = re.compile(r"[0-9]{1,20}")


def decode_aes_key(encoding_aes_key: str, name: str = "encoding_aes_key") -> bytes:
    """The 32-byte AES key for a 43-character EncodingAESKey; ``BadAESKey`` names only the length."""
    if not isinstance(encoding_aes_key, str):
        raise BadAESKey(f"{name} must be a string, got {type(encoding_aes_key).__name__}")
    n = len(encoding_aes_key)
    if n != KEY_CHARS:
        raise BadAESKey(f"{name} must be {KEY_CHARS} characters, got {n} characters")
    if not _KEY_ALPHABET.fullmatch(encoding_aes_key):
        raise BadAESKey(f"{name} ({n} characters) must contain only ASCII letters and digits")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise BadAESKey(f"{name} ({n} characters) is not valid base64") from None
    if len(key) != 32:  # cannot happen for 43 alphanumerics, kept as the spec's explicit check
        raise BadAESKey(f"{name} ({n} characters) decodes to {len(key)} bytes, expected 32")
    return key


def pkcs7_pad(data: bytes, block: int = BLOCK) -> bytes:
    n = block - len(data) % block
    return data + bytes([n]) * n


def pkcs7_unpad(data: bytes, block: int = BLOCK) -> bytes:
    """Strip PKCS#7 padding; the pad byte must be 1..block and all pad bytes equal."""
    if not data:
        raise DecryptError("decrypted data is empty")
    n = data[-1]
    if not 1 <= n <= block or n > len(data):
        raise DecryptError(f"bad padding: pad byte {n} is outside 1..{block}")
    if data[-n:] != bytes([n]) * n:
        raise DecryptError(f"bad padding: the last {n} bytes are not all {n}")
    return data[:-n]


@frozen
class Decrypted:
    """A decrypted message and whether the previous EncodingAESKey was needed to read it."""

    text: str
    used_previous_key: bool = False


@frozen
class EncryptedReply:
    """The four elements of an encrypted reply envelope, as read back by ``parse_reply_envelope``."""

    encrypt: str
    msg_signature: str
    timestamp: str
    nonce: str


def _check_random16(random16: bytes) -> bytes:
    if not isinstance(random16, bytes | bytearray) or len(random16) != 16:
        size = len(random16) if isinstance(random16, bytes | bytearray) else type(random16).__name__
        raise WeChatCodecError(f"random16 must be 16 bytes, got {size}")
    return bytes(random16)


def _check_timestamp(timestamp: str | int) -> str:
    ts = str(timestamp) if isinstance(timestamp, int) and not isinstance(timestamp, bool) else timestamp
    if not isinstance(ts, str) or not _DIGITS.fullmatch(ts):
        raise WeChatCodecError(f"timestamp must be decimal digits, got {timestamp!r}")
    return ts


class SafeModeCrypto:
    """Encrypts and decrypts safe-mode messages for one account (token, EncodingAESKey, appid)."""

    def __init__(
        self,
        token: str,
        encoding_aes_key: str,
        appid: str,
        previous_aes_key: str | None = None,
        *,
        id_name: str = "appid",
    ) -> None:
        if not isinstance(token, str) or not token:
            raise WeChatCodecError("token must be a non-empty string")
        if not isinstance(appid, str) or not appid:
            raise WeChatCodecError(f"{id_name} must be a non-empty string, got {appid!r}")
        self.id_name = id_name  # what the trailing receive id is called in messages: appid / corpid
        self._token = token
        self._key = decode_aes_key(encoding_aes_key)
        self._prev_key = (
            decode_aes_key(previous_aes_key, "previous_aes_key") if previous_aes_key is not None else None
        )
        self.appid = appid
        self._appid_bytes = appid.encode("utf-8")

    def __repr__(self) -> str:  # never show the token or keys
        return f"SafeModeCrypto({self.id_name}={self.appid!r}, previous_key={self._prev_key is not None})"

    @property
    def has_previous_key(self) -> bool:
        return self._prev_key is not None

    # -- raw encrypt / decrypt ------------------------------------------------------------------

    def _pick_key(self, previous_key: bool) -> bytes:
        if not previous_key:
            return self._key
        if self._prev_key is None:
            raise WeChatCodecError("previous_key=True but no previous_aes_key is configured")
        return self._prev_key

    def encrypt(self, plaintext: str, random16: bytes, *, previous_key: bool = False) -> str:
        """Base64 ``Encrypt`` text for ``plaintext`` (normally a whole XML message)."""
        if not isinstance(plaintext, str):
            raise WeChatCodecError(f"plaintext must be str, got {type(plaintext).__name__}")
        try:
            msg = plaintext.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise WeChatCodecError(f"plaintext has an unencodable character at index {exc.start}") from None
        if len(msg) > 0xFFFFFFFF:
            raise WeChatCodecError(f"plaintext is {len(msg)} bytes, over the 32-bit length field")
        buf = _check_random16(random16) + struct.pack(">I", len(msg)) + msg + self._appid_bytes
        key = self._pick_key(previous_key)
        enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
        return base64.b64encode(enc.update(pkcs7_pad(buf)) + enc.finalize()).decode("ascii")

    def _decrypt_with(self, key: bytes, data: bytes) -> str:
        dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
        buf = pkcs7_unpad(dec.update(data) + dec.finalize())
        if len(buf) < 20:
            raise DecryptError(f"decrypted buffer is {len(buf)} bytes, shorter than random16 + length")
        (size,) = struct.unpack(">I", buf[16:20])
        if 20 + size > len(buf):
            raise DecryptError(f"message length field says {size} bytes but only {len(buf) - 20} remain")
        msg, tail = buf[20 : 20 + size], buf[20 + size :]
        if tail != self._appid_bytes:
            got = tail.decode("utf-8", "replace")
            shown = got if len(got) <= 40 else got[:40] + "..."
            raise AppIdMismatch(
                f"decrypted message is for {self.id_name} {shown!r}, but this account is {self.appid!r}",
                got=got,
                expected=self.appid,
            )
        try:
            return msg.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecryptError(
                f"decrypted message is not UTF-8 (invalid byte at offset {exc.start})"
            ) from None

    def decrypt_detailed(self, encrypt_b64: str) -> Decrypted:
        """Decrypt an ``Encrypt`` text with the current key, then the previous one; check the appid.

        If neither key works, an ``AppIdMismatch`` from either key wins over a ``DecryptError`` (it
        means the key was right and the message was framed for another account).
        """
        if not isinstance(encrypt_b64, str):
            raise DecryptError(f"Encrypt must be str, got {type(encrypt_b64).__name__}")
        try:
            data = base64.b64decode(encrypt_b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise DecryptError(f"Encrypt is not valid base64 ({len(encrypt_b64)} characters)") from None
        if not data or len(data) % 16:
            raise DecryptError(f"Encrypt decodes to {len(data)} bytes, not a positive multiple of 16")
        try:
            return Decrypted(self._decrypt_with(self._key, data), used_previous_key=False)
        except (DecryptError, AppIdMismatch) as first:
            if self._prev_key is None:
                raise
            try:
                return Decrypted(self._decrypt_with(self._prev_key, data), used_previous_key=True)
            except AppIdMismatch:
                raise
            except DecryptError as second:
                if isinstance(first, AppIdMismatch):
                    raise first from None
                raise DecryptError(
                    f"Encrypt could not be decrypted with the current key ({first}) "
                    f"nor with the previous key ({second})"
                ) from None

    def decrypt(self, encrypt_b64: str) -> str:
        """Decrypted text of an ``Encrypt`` value (see ``decrypt_detailed``)."""
        return self.decrypt_detailed(encrypt_b64).text

    def decrypt_echostr(self, echostr: str, msg_signature: str, timestamp: str | int, nonce: str) -> str:
        """WeCom's callback URL check (GET): verify ``msg_signature`` over the encrypted ``echostr``,
        decrypt it and check the receive id; the plaintext is what the URL must answer."""
        if not isinstance(echostr, str) or not echostr:
            raise InvalidPush("echostr is missing or empty")
        if not signature.verify(msg_signature, self._token, timestamp, nonce, echostr):
            raise SignatureMismatch(
                "msg_signature does not match sha1(sorted(token, timestamp, nonce, echostr)) for this URL check"
            )
        return self.decrypt(echostr)

    # -- signed envelopes -----------------------------------------------------------------------

    def msg_signature(self, timestamp: str | int, nonce: str, encrypt_b64: str) -> str:
        return signature.sign(self._token, timestamp, nonce, encrypt_b64)

    def decrypt_push_detailed(
        self,
        body: bytes | str,
        msg_signature: str,
        timestamp: str | int,
        nonce: str,
        *,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> Decrypted:
        """Verify ``msg_signature`` over the body's ``<Encrypt>`` and decrypt it."""
        envelope = parse_encrypted_envelope(body, max_bytes=max_bytes)
        if not signature.verify(msg_signature, self._token, timestamp, nonce, envelope.encrypt):
            raise SignatureMismatch(
                "msg_signature does not match sha1(sorted(token, timestamp, nonce, Encrypt)) for this push"
            )
        return self.decrypt_detailed(envelope.encrypt)

    def decrypt_push(
        self,
        body: bytes | str,
        msg_signature: str,
        timestamp: str | int,
        nonce: str,
        *,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> str:
        """Plaintext XML of a safe-mode push (then give it to ``parse_push``)."""
        return self.decrypt_push_detailed(body, msg_signature, timestamp, nonce, max_bytes=max_bytes).text

    def encrypt_reply(
        self, xml: str, timestamp: str | int, nonce: str, random16: bytes, *, previous_key: bool = False
    ) -> str:
        """The encrypted reply envelope for the reply ``xml`` (spec §5.6 template)."""
        ts = _check_timestamp(timestamp)
        encrypt = self.encrypt(xml, random16, previous_key=previous_key)
        sig = self.msg_signature(ts, nonce, encrypt)
        return (
            "<xml>\n"
            f"<Encrypt>{cdata(encrypt)}</Encrypt>\n"
            f"<MsgSignature>{cdata(sig)}</MsgSignature>\n"
            f"<TimeStamp>{ts}</TimeStamp>\n"
            f"<Nonce>{cdata(nonce, 'nonce')}</Nonce>\n"
            "</xml>"
        )

    # -- the other direction, for the fake WeChat server ----------------------------------------

    def encrypt_push(
        self, xml: str, timestamp: str | int, nonce: str, random16: bytes, *, to_user: str | None = None
    ) -> tuple[str, str]:
        """A safe-mode push body for ``xml`` and its ``msg_signature`` (for the query string).

        ``to_user`` defaults to the ``ToUserName`` of ``xml`` when omitted.
        """
        ts = _check_timestamp(timestamp)
        if to_user is None:
            inner = child_map(parse_xml_root(xml, what="push to encrypt"), "push to encrypt")
            to_user = leaf_text(inner["ToUserName"], "push to encrypt") if "ToUserName" in inner else ""
        encrypt = self.encrypt(xml, random16)
        body = (
            f"<xml><ToUserName>{cdata(to_user, 'to_user')}</ToUserName>"
            f"<Encrypt>{cdata(encrypt)}</Encrypt></xml>"
        )
        return body, self.msg_signature(ts, nonce, encrypt)

    def decrypt_reply(self, body: bytes | str, *, max_bytes: int = MAX_BODY_BYTES) -> Decrypted:
        """Verify and decrypt an encrypted reply envelope (what the engine answers in safe mode)."""
        env = parse_reply_envelope(body, max_bytes=max_bytes)
        if not signature.verify(env.msg_signature, self._token, env.timestamp, env.nonce, env.encrypt):
            raise SignatureMismatch("MsgSignature of the encrypted reply does not match")
        return self.decrypt_detailed(env.encrypt)


def parse_reply_envelope(body: bytes | str, *, max_bytes: int = MAX_BODY_BYTES) -> EncryptedReply:
    """Read the four elements of an encrypted reply envelope; each is required."""
    what = "encrypted reply"
    children = child_map(parse_xml_root(body, max_bytes=max_bytes, what=what), what)
    values: dict[str, str] = {}
    for tag in ("Encrypt", "MsgSignature", "TimeStamp", "Nonce"):
        if tag not in children:
            raise InvalidPush(f"{what}: required element <{tag}> is missing")
        values[tag] = leaf_text(children[tag], what).strip()
    if not _DIGITS.fullmatch(values["TimeStamp"]):
        raise InvalidPush(f"{what}: element <TimeStamp> must be decimal digits")
    return EncryptedReply(
        encrypt=values["Encrypt"],
        msg_signature=values["MsgSignature"],
        timestamp=values["TimeStamp"],
        nonce=values["Nonce"],
    )
