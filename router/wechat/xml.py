"""Safe XML in and out: the one place where push bodies become element trees, and text becomes CDATA.

Rules: bodies are capped in size before any parsing; they must be UTF-8 and hold only characters XML 1.0
allows (a NUL would let expat read the body as BOM-less UTF-16); DTDs, entity declarations and
external references are refused (defusedxml with every ``forbid_*`` switch on); the root must be
``<xml>``. Every failure is an ``XmlRejected`` carrying the HTTP status to answer (413 or 400).

Which parser: every DTD — and so every entity declaration and external reference — begins with ``<!``.
A body in which each ``<!`` opens a CDATA section (every WeChat push) can hold none, and is read by the
standard library's C parser, which refuses an undeclared entity as well; any other body goes through
defusedxml, whose Python parser refuses those features by name (and costs three times as much: it was
the largest part of the push receiver's own CPU).
"""

from __future__ import annotations

import re
from typing import cast
from xml.etree.ElementTree import Element, ParseError
from xml.etree.ElementTree import fromstring as _c_fromstring

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from kfrouter.router.wechat.errors import InvalidPush, WeChatCodecError, XmlRejected

# Precedent: h11 caps an incomplete HTTP event at 16 KiB, aiohttp's and nginx's default request body
# limits are 1 MiB. A WeChat push is a few hundred bytes to a few KiB (safe mode adds a third for
# base64), so 64 KiB leaves more than 10x headroom while bounding the parser's work per request.
MAX_BODY_BYTES = 64 * 1024

_DIGITS = re.compile(r"[0-9]{1,20}")
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters XML 1.0 forbids everywhere, CDATA included (§2.2 Char production).
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _snippet(data: bytes, n: int = 20) -> str:
    return repr(data[:n]) + ("..." if len(data) > n else "")


def parse_xml_root(body: bytes | str, *, max_bytes: int = MAX_BODY_BYTES, what: str = "body") -> Element:
    """Parse ``body`` into its ``<xml>`` root element, refusing anything unsafe or oversized.

    ``what`` names the input in error messages (e.g. ``"push body"``, ``"decrypted message"``).
    """
    if isinstance(body, str):
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise XmlRejected(f"{what} contains an unencodable character at index {exc.start}") from None
    elif isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body)
    else:
        raise XmlRejected(f"{what} must be bytes or str, got {type(body).__name__}")
    if len(raw) > max_bytes:
        raise XmlRejected(f"{what} is {len(raw)} bytes, over the {max_bytes}-byte limit", http_status=413)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise XmlRejected(f"{what} is not UTF-8 (invalid byte at offset {exc.start})") from None
    bad = _XML_ILLEGAL.search(text)
    if bad:  # else expat may read NUL-laden "UTF-8" as BOM-less UTF-16 (XML 1.0 appendix F)
        hint = " (UTF-16 or UTF-32 sent as UTF-8?)" if bad.group() == "\x00" else ""
        raise XmlRejected(
            f"{what} is not well-formed XML: U+{ord(bad.group()):04X} at character {bad.start()}{hint}"
        )
    stripped = text.lstrip()
    if not stripped:
        raise XmlRejected(f"{what} is empty")
    if not stripped.startswith("<"):
        raise XmlRejected(f"{what} is not XML (starts with {_snippet(stripped.encode('utf-8'))})")
    try:
        # A str is parsed as the UTF-8 we just validated; any encoding declaration inside is ignored.
        if only_cdata_markup(stripped):
            root = _c_fromstring(stripped)  # no "<!" but CDATA: no DTD, nothing for defusedxml to refuse
        else:
            root = cast(
                Element,
                DET.fromstring(stripped, forbid_dtd=True, forbid_entities=True, forbid_external=True),
            )
    except DefusedXmlException as exc:
        raise XmlRejected(
            f"{what} uses forbidden XML features ({type(exc).__name__}): DTDs, entity "
            "declarations and external references are refused"
        ) from None
    except ParseError as exc:
        raise XmlRejected(f"{what} is not well-formed XML: {exc}") from None
    except (ValueError, LookupError) as exc:
        raise XmlRejected(f"{what} could not be parsed as XML: {exc}") from None
    if root.tag != "xml":
        raise XmlRejected(f"{what} has root element <{root.tag}>, expected <xml>")
    return root


def only_cdata_markup(text: str) -> bool:
    """Whether every ``<!`` in ``text`` opens a CDATA section (``<![CDATA[``): then it holds no DTD, no
    comment, no declaration of any kind."""
    i = text.find("<!")
    while i >= 0:
        if not text.startswith("<![CDATA[", i):
            return False
        i = text.find("<!", i + 9)
    return True


def child_map(root: Element, what: str) -> dict[str, Element]:
    """The direct children of ``root`` by tag; a repeated tag is ambiguous and rejected."""
    out: dict[str, Element] = {}
    for child in root:
        tag = child.tag
        if not isinstance(tag, str):  # comments / processing instructions are not kept by fromstring
            continue
        if tag in out:
            raise InvalidPush(f"{what}: element <{tag}> appears more than once")
        out[tag] = child
    return out


def leaf_text(elem: Element, what: str) -> str:
    """Text of an element that must hold text only (CDATA or not); ``""`` when empty."""
    if len(elem):
        raise InvalidPush(f"{what}: element <{elem.tag}> must contain text, not child elements")
    return elem.text or ""


def check_xml_text(value: str, what: str) -> str:
    """Return ``value`` unchanged if XML can carry it; raise naming ``what`` and the index otherwise."""
    if not isinstance(value, str):
        raise WeChatCodecError(f"{what} must be str, got {type(value).__name__}")
    m = _XML_ILLEGAL.search(value)
    if m:
        raise WeChatCodecError(
            f"{what} contains U+{ord(m.group()):04X} at index {m.start()}, which XML cannot carry"
        )
    return value


def check_xml_name(name: str) -> str:
    """Return ``name`` if it is a plain XML element name (ASCII letters, digits, underscore)."""
    if not isinstance(name, str) or not _XML_NAME.fullmatch(name):
        raise WeChatCodecError(f"element name {name!r} is not a plain XML name ([A-Za-z_][A-Za-z0-9_]*)")
    return name


def cdata(value: str, what: str = "value") -> str:
    """``value`` as a CDATA section; a ``]]>`` inside is split across two sections."""
    check_xml_text(value, what)
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def element(name: str, value: str | int, what: str | None = None) -> str:
    """``<name><![CDATA[value]]></name>`` for text, ``<name>123</name>`` for an integer."""
    check_xml_name(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise WeChatCodecError(f"<{name}> value must be str or int, got {type(value).__name__}")
    if isinstance(value, int):
        return f"<{name}>{value}</{name}>"
    return f"<{name}>{cdata(value, what or name)}</{name}>"


class ChildReader:
    """Reads the children of one ``<xml>`` root, naming the element in every error; ``rest()`` returns
    the elements not read yet (nested ones flattened to ``Parent/Child``)."""

    def __init__(self, root: Element, what: str) -> None:
        self.what = what
        self.children = child_map(root, what)
        self.used: set[str] = set()

    def text(self, tag: str) -> str | None:
        elem = self.children.get(tag)
        if elem is None:
            return None
        self.used.add(tag)
        return leaf_text(elem, self.what)

    def required(self, tag: str, *, allow_empty: bool = False) -> str:
        value = self.text(tag)
        if value is None:
            raise InvalidPush(f"{self.what}: required element <{tag}> is missing")
        if not allow_empty:
            value = value.strip()
            if not value:
                raise InvalidPush(f"{self.what}: element <{tag}> is empty")
        return value

    def integer(self, tag: str, maximum: int) -> int:
        raw = self.required(tag)
        if not _DIGITS.fullmatch(raw) or int(raw) > maximum:
            shown = raw if len(raw) <= 24 else raw[:24] + "..."
            raise InvalidPush(f"{self.what}: element <{tag}> must be a non-negative integer, got {shown!r}")
        return int(raw)

    def rest(self) -> dict[str, str]:
        """Every element not read yet, as text; nested elements flattened to ``Parent/Child``."""
        out: dict[str, str] = {}
        for tag, elem in self.children.items():
            if tag not in self.used:
                _flatten(elem, tag, out)
        return out


def _flatten(elem: Element, path: str, out: dict[str, str]) -> None:
    # Iterative: a 64 KiB body can nest thousands of levels deep, too deep for recursion.
    stack = [(elem, path)]
    while stack:
        node, where = stack.pop()
        if len(node) == 0:
            out.setdefault(where, node.text or "")
            continue
        stack.extend((c, f"{where}/{c.tag}") for c in reversed(node) if isinstance(c.tag, str))
