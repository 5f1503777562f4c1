"""Trace files (JSON Lines, version 1): a streaming, validating reader and a writer.

Rules (spec/trace-format.md, additions in docs/simulator.md):

- The first line is the header (``kind: "header"``, ``version: 1``); any other keys of the header are
  free metadata (the generator stores its parameters under ``params``).
- Every other line has ``t`` (finite number >= 0, never smaller than the line before) and a ``kind``.
- Every bad line raises :class:`TraceError` naming the file, the 1-based line number and the problem;
  nothing is silently skipped. Unknown kinds are errors unless they start with ``x-`` (skipped and
  counted in :attr:`TraceReader.skipped`). Unknown keys on a known kind are errors (a typo such as
  ``service`` for ``service_s`` must not pass) unless they start with ``x-`` (ignored).
- Optional fields take their defaults: ``group`` null, ``priority`` 0, ``patience_s`` null, ``text`` "",
  ``preferred_agent`` null, ``tags`` [], ``skills`` {} (``agent_online``: proficiency per group, each in
  (0, 1]). The header may carry ``same_agent_factor`` (a number > 0, default 1) and ``recontact``
  (``{"rate": R in [0, 1], "gap_mean_s": G > 0}``, default absent: every session resolves): see
  ``sim/service.py``.
- The writer runs every record through the reader's checks, so it never writes a line the reader
  would refuse. Files ending in ``.gz`` are read and written gzip-compressed.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})


class TraceError(ValueError):
    """A trace line is invalid; ``file``, ``line`` (1-based, 0 = the file as a whole) and ``problem``."""

    def __init__(self, file: str, line: int, problem: str) -> None:
        super().__init__(f"{file}:{line}: {problem}")
        self.file = file
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Header:
    version: int = VERSION
    name: str = ""
    seed: int | None = None
    created_by: str = ""
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class AgentOnline:
    t: float
    agent: str
    groups: tuple[str, ...] = ()
    max_sessions: int = 1
    tags: tuple[str, ...] = ()
    # (group, proficiency in (0, 1]) sorted by group; a group not listed counts 1.0 (sim/service.py)
    skills: tuple[tuple[str, float], ...] = ()
    nickname: str = ""  # the name customers are told (recorded traces keep it)


@dataclass(frozen=True, slots=True)
class AgentOffline:
    t: float
    agent: str


class Arrival(NamedTuple):
    """A customer asks for a human at ``t``. A NamedTuple (a value read by field name, validated by the
    reader and the generator that make it): the generator and the reader build one per customer."""

    t: float
    customer: str
    service_s: float
    group: str | None = None
    priority: int = 0
    patience_s: float | None = None
    text: str = ""
    preferred_agent: str | None = None
    tags: tuple[str, ...] = ()


Record = AgentOnline | AgentOffline | Arrival


class Arrivals(NamedTuple):
    """Consecutive arrivals of a trace, column by column: what ``Arrival`` records would hold, one entry
    per arrival in trace order in every column (``Arrival``'s fields, in its order). A producer that makes
    many arrivals (the generator's ``generate_blocks``) hands them over in blocks, one object per block
    instead of one per customer; ``records()`` gives them one by one."""

    t: list[float]
    customer: list[str]
    service_s: list[float]
    group: list[str | None]
    priority: list[int]
    patience_s: list[float | None]
    text: list[str]
    preferred_agent: list[str | None]
    tags: list[tuple[str, ...]]

    def records(self) -> Iterator[Arrival]:
        """The arrivals as ``Arrival`` records, in order."""
        return map(Arrival, *self)


# ---------------------------------------------------------------------------------------------- checks

_KINDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # kind: (required keys, optional keys); "t" and "kind" are checked apart
    "agent_online": (
        frozenset({"agent", "groups", "max_sessions"}),
        frozenset({"tags", "skills", "nickname"}),
    ),
    "agent_offline": (frozenset({"agent"}), frozenset()),
    "arrival": (
        frozenset({"customer", "service_s"}),
        frozenset({"group", "priority", "patience_s", "text", "preferred_agent", "tags"}),
    ),
}
_HEADER_KNOWN = frozenset({"kind", "version", "name", "seed", "created_by"})
# every key a line of each kind may have, "t" and "kind" included (private x- keys aside)
_ALLOWED = {kind: required | optional | {"t", "kind"} for kind, (required, optional) in _KINDS.items()}
_ABSENT = object()


class _Bad(Exception):
    """Internal: a problem found in one line; turned into TraceError with file and line."""


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str(obj: dict[str, Any], key: str) -> str:
    v = obj[key]
    if not isinstance(v, str) or not v:
        raise _Bad(f"{key!r} must be a non-empty string, got {v!r}")
    return v


def _positive(obj: dict[str, Any], key: str) -> float:
    v = obj[key]
    if type(v) is float and 0.0 < v < math.inf:  # the usual case, without the calls below
        return v
    if not _is_number(v) or not math.isfinite(v) or v <= 0:
        raise _Bad(f"{key!r} must be a finite number > 0, got {v!r}")
    return float(v)


def _str_list(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    v = obj.get(key, _ABSENT)
    if v is _ABSENT:
        return ()
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise _Bad(f"{key!r} must be a list of non-empty strings, got {v!r}")
    return tuple(v)


def _skills(obj: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    v = obj.get("skills", _ABSENT)
    if v is _ABSENT:
        return ()
    if not isinstance(v, dict):
        raise _Bad(f"'skills' must be an object {{group: proficiency}}, got {v!r}")
    out: list[tuple[str, float]] = []
    for group, p in v.items():
        if not group:
            raise _Bad("'skills' has an empty group name")
        if not _is_number(p) or not 0.0 < p <= 1.0:
            raise _Bad(f"'skills' of group {group!r} must be a number in (0, 1], got {p!r}")
        out.append((group, float(p)))
    return tuple(sorted(out))


def _check_keys(obj: dict[str, Any], kind: str) -> None:
    required, optional = _KINDS[kind]
    keys = obj.keys()
    if keys <= _ALLOWED[kind] and required <= keys:  # the usual case: nothing to report
        return
    missing = required - keys
    if missing:
        raise _Bad(f"{kind} line is missing {', '.join(sorted(repr(k) for k in missing))}")
    for key in obj:
        if key in required or key in optional or key in ("t", "kind") or key.startswith("x-"):
            continue
        raise _Bad(f"unknown field {key!r} on a {kind} line (private fields start with 'x-')")


def recontact_of(raw: object) -> tuple[float, float] | None:
    """The header's ``recontact`` as (rate, gap_mean_s), or None when absent; ValueError names the key."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"rate", "gap_mean_s"}:
        raise ValueError(f"'recontact' must be an object with exactly 'rate' and 'gap_mean_s', got {raw!r}")
    rate, gap = raw["rate"], raw["gap_mean_s"]
    if not _is_number(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"'recontact.rate' must be a number in [0, 1], got {rate!r}")
    if not _is_number(gap) or not 0.0 < gap < math.inf:
        raise ValueError(f"'recontact.gap_mean_s' must be a finite number > 0, got {gap!r}")
    return float(rate), float(gap)


def parse_header(obj: object) -> Header:
    """Validate a decoded header line. Raises ``_Bad`` (wrapped by callers)."""
    if not isinstance(obj, dict):
        raise _Bad(f"the header must be a JSON object, got {type(obj).__name__}")
    if obj.get("kind") != "header":
        raise _Bad(f"the first line must be the header (kind 'header'), got kind {obj.get('kind')!r}")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise _Bad(f"unsupported trace version {version!r} (this reader knows {sorted(SUPPORTED_VERSIONS)})")
    name = obj.get("name", "")
    if not isinstance(name, str):
        raise _Bad(f"'name' must be a string, got {name!r}")
    seed = obj.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _Bad(f"'seed' must be an integer or null, got {seed!r}")
    created_by = obj.get("created_by", "")
    if not isinstance(created_by, str):
        raise _Bad(f"'created_by' must be a string, got {created_by!r}")
    factor = obj.get("same_agent_factor", 1.0)
    if not _is_number(factor) or not 0.0 < factor < math.inf:
        raise _Bad(f"'same_agent_factor' must be a finite number > 0, got {factor!r}")
    try:
        recontact_of(obj.get("recontact"))
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    meta = {k: v for k, v in obj.items() if k not in _HEADER_KNOWN}
    return Header(version=version, name=name, seed=seed, created_by=created_by, meta=meta)


def parse_record(obj: object, last_t: float) -> Record | str:
    """Validate one decoded non-header line. Returns the record, or the kind (a ``str``) of an ``x-``
    line to skip. ``last_t`` is the time of the previous line. Raises ``_Bad``."""
    if not isinstance(obj, dict):
        raise _Bad(f"a line must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if not isinstance(kind, str):
        raise _Bad(f"'kind' must be a string, got {kind!r}")
    if kind == "header":
        raise _Bad("a second header line (the header must be the first line only)")
    if "t" not in obj:
        raise _Bad(f"{kind} line has no 't'")
    t = obj["t"]
    if type(t) is not float or not last_t <= t < math.inf:  # else a valid time, without the calls below
        if not _is_number(t) or not math.isfinite(t) or t < 0:
            raise _Bad(f"'t' must be a finite number >= 0, got {t!r}")
        if t < last_t:
            raise _Bad(f"'t' goes backwards: {t!r} after {last_t!r}")
        t = float(t)
    if kind.startswith("x-"):
        return kind
    if kind not in _KINDS:
        raise _Bad(f"unknown kind {kind!r} (expected one of {sorted(_KINDS)} or an 'x-' extension)")
    _check_keys(obj, kind)
    if kind == "arrival":
        group = obj.get("group")
        if group is not None and (not isinstance(group, str) or not group):
            raise _Bad(f"'group' must be a non-empty string or null, got {group!r}")
        priority = obj.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise _Bad(f"'priority' must be an integer, got {priority!r}")
        patience = obj.get("patience_s")
        patience_s = None if patience is None else _positive(obj, "patience_s")
        text = obj.get("text", "")
        if not isinstance(text, str):
            raise _Bad(f"'text' must be a string, got {text!r}")
        preferred = obj.get("preferred_agent")
        if preferred is not None:
            preferred = _str(obj, "preferred_agent")
        customer = _str(obj, "customer")
        service_s = _positive(obj, "service_s")
        tags = _str_list(obj, "tags")
        return Arrival(t, customer, service_s, group, priority, patience_s, text, preferred, tags)
    if kind == "agent_online":
        cap = obj["max_sessions"]
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise _Bad(f"'max_sessions' must be an integer >= 1, got {cap!r}")
        return AgentOnline(
            t=t,
            agent=_str(obj, "agent"),
            groups=_str_list(obj, "groups"),
            max_sessions=cap,
            tags=_str_list(obj, "tags"),
            skills=_skills(obj),
            nickname=_str(obj, "nickname") if "nickname" in obj else "",
        )
    return AgentOffline(t=t, agent=_str(obj, "agent"))


def record_to_dict(rec: Record) -> dict[str, Any]:
    """The JSON object of one record (optional fields left out when they hold their default)."""
    if isinstance(rec, Arrival):
        d: dict[str, Any] = {
            "t": rec.t,
            "kind": "arrival",
            "customer": rec.customer,
            "group": rec.group,
            "priority": rec.priority,
            "service_s": rec.service_s,
            "patience_s": rec.patience_s,
        }
        if rec.text:
            d["text"] = rec.text
        if rec.preferred_agent is not None:
            d["preferred_agent"] = rec.preferred_agent
        if rec.tags:
            d["tags"] = list(rec.tags)
        return d
    if isinstance(rec, AgentOnline):
        d = {
            "t": rec.t,
            "kind": "agent_online",
            "agent": rec.agent,
            "groups": list(rec.groups),
            "max_sessions": rec.max_sessions,
        }
        if rec.tags:
            d["tags"] = list(rec.tags)
        if rec.skills:
            d["skills"] = dict(rec.skills)
        if rec.nickname:
            d["nickname"] = rec.nickname
        return d
    if isinstance(rec, AgentOffline):
        return {"t": rec.t, "kind": "agent_offline", "agent": rec.agent}
    raise TypeError(f"not a trace record: {rec!r}")


def header_to_dict(header: Header) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": "header", "version": header.version, "name": header.name}
    d["seed"] = header.seed
    d["created_by"] = header.created_by
    for k, v in header.meta.items():
        if k in _HEADER_KNOWN:
            raise ValueError(f"header meta key {k!r} clashes with a header field")
        d[k] = v
    return d


# ---------------------------------------------------------------------------------------------- reader


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


class TraceReader:
    """Streams the records of one trace; the header is read (and checked) on construction.

    Use as a context manager or call :meth:`close`. Iterating yields :data:`Record` values in file
    order; when the iteration ends, :attr:`skipped` counts ``x-`` lines by kind and :attr:`lines` is
    the number of lines read.
    """

    def __init__(self, source: str | Path | Iterable[bytes | str], *, name: str | None = None) -> None:
        self._fp: IO[bytes] | None = None
        if isinstance(source, (str, Path)):
            path = Path(source)
            self.name = name or str(path)
            try:
                self._fp = _open_binary(path)
                self._size = path.stat().st_size
            except OSError as exc:
                raise TraceError(self.name, 0, f"cannot open: {exc.strerror or exc}") from exc
            self._lines: Iterator[bytes | str] = iter(self._fp)
        else:
            self.name = name or "<memory>"
            self._lines = iter(source)
            self._size = 0
        self.lines = 0
        self.skipped: dict[str, int] = {}
        self._last_t = 0.0
        first = self._next_object()
        if first is None:
            self.close()
            raise TraceError(self.name, 1, "empty trace: the header line is missing")
        try:
            self.header = parse_header(first)
        except _Bad as exc:
            self.close()
            raise TraceError(self.name, 1, str(exc)) from None

    def _next_object(self) -> object | None:
        try:
            raw = next(self._lines)
        except StopIteration:
            return None
        except (OSError, EOFError) as exc:  # e.g. a truncated gzip stream
            raise TraceError(self.name, self.lines + 1, f"cannot read: {exc}") from exc
        self.lines += 1
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TraceError(
                    self.name, self.lines, f"not UTF-8: {exc.reason} at byte {exc.start}"
                ) from None
        else:
            text = raw
        if not text or text.isspace():
            raise TraceError(self.name, self.lines, "empty line")
        try:
            obj: object = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(self.name, self.lines, f"not JSON: {exc.msg} at column {exc.colno}") from None
        return obj

    def __iter__(self) -> Iterator[Record]:
        while True:
            obj = self._next_object()
            if obj is None:
                return
            try:
                rec = parse_record(obj, self._last_t)
            except _Bad as exc:
                raise TraceError(self.name, self.lines, str(exc)) from None
            if isinstance(rec, str):
                self.skipped[rec] = self.skipped.get(rec, 0) + 1
                self._last_t = float(obj["t"])  # type: ignore[index]
                continue
            self._last_t = rec.t
            yield rec

    def fraction(self) -> float:
        """Share of the file read so far (0..1; compressed bytes for .gz; 0 for in-memory sources)."""
        fp = self._fp
        if fp is None or not self._size:
            return 0.0
        raw = getattr(fp, "fileobj", fp)
        try:
            return min(1.0, raw.tell() / self._size)
        except (OSError, ValueError):
            return 0.0

    def close(self) -> None:
        if self._fp is not None:
            self._fp.close()
            self._fp = None

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_trace(source: str | Path | Iterable[bytes | str]) -> tuple[Header, list[Record], dict[str, int]]:
    """Read a whole trace: (header, records, skipped x- kinds)."""
    with TraceReader(source) as reader:
        records = list(reader)
        return reader.header, records, dict(reader.skipped)


# ---------------------------------------------------------------------------------------------- writer


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _dumps(obj: dict[str, Any]) -> str:
    # UTF-8 as is, except the Unicode line breaks that line-oriented tools (str.splitlines, JavaScript)
    # would cut a line at; JSON only ever has them inside strings, where the escape means the same.
    line = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
    return line if line.isascii() else line.translate(_LINE_BREAKS)


class TraceWriter:
    """Writes a header and then records, checking each one as the reader would (``ValueError`` on a
    record the reader would refuse, including time going backwards)."""

    def __init__(self, fp: IO[str], header: Header) -> None:
        self._fp = fp
        hd = header_to_dict(header)
        parse_header(hd)
        fp.write(_dumps(hd) + "\n")
        self._last_t = 0.0
        self.count = 0

    def write(self, rec: Record) -> None:
        d = record_to_dict(rec)
        try:
            parse_record(d, self._last_t)
        except _Bad as exc:
            raise ValueError(f"record {self.count + 1}: {exc}") from None
        self._last_t = rec.t
        self._fp.write(_dumps(d) + "\n")
        self.count += 1

    def write_all(self, records: Iterable[Record]) -> int:
        for rec in records:
            self.write(rec)
        return self.count


def write_trace(path: str | Path, header: Header, records: Iterable[Record]) -> int:
    """Write a trace file (gzip when the name ends in ``.gz``); returns the number of records."""
    p = Path(path)
    if p.suffix == ".gz":
        with gzip.open(p, "wt", encoding="utf-8") as gz:
            return TraceWriter(gz, header).write_all(records)
    with p.open("w", encoding="utf-8") as fp:
        return TraceWriter(fp, header).write_all(records)
