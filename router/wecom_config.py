"""The ``[wecom]`` table of ``kfrouter.toml``: an account served through WeCom 微信客服 instead of ``[wechat]``.

```toml
[wecom]
corpid = "ww0123456789abcdef"        # 企业ID (My Company → Company Info)
secret = "..."                       # the secret of the app listed in 微信客服 → 可调用接口的应用
token = "kfrTestToken42"             # callback Token (3-32 letters/digits)
aes_key = "...43 characters..."      # callback EncodingAESKey (WeCom always encrypts)
open_kfids = ["wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q"]   # the kf accounts kfrouter routes
api_base = "https://qyapi.weixin.qq.com"            # optional
```

Same rules as ``router.config`` (it reuses its table reader): unknown keys are errors, types are exact,
every problem is reported with the file and the key (``kfrouter.toml: wecom.open_kfids[1]: ...``),
secrets are described by their length only and left out of ``repr``. A key listed in
``router.config.ENV_VARS`` (e.g. once ``wecom.secret`` is mapped to an environment variable) is read the
way ``[wechat]`` secrets are: a non-empty environment variable wins over the file.

``wecom_from_section`` is the piece ``router.config``'s loader calls for ``root.table("wecom")``;
``load_wecom`` validates the ``[wecom]`` table of a parsed document on its own (tests, the doctor).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import field, frozen

from kfrouter.router import config as cfg

DEFAULT_API_BASE = "https://qyapi.weixin.qq.com"
_CORPID_RE = re.compile(r"[A-Za-z0-9]{6,64}")
_OPEN_KFID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_SECRET_RE = re.compile(r"\S{1,256}")


@frozen(kw_only=True)
class WeComConfig:
    """One WeCom corp's 微信客服 credentials and the kf accounts kfrouter serves."""

    corpid: str
    secret: str = field(repr=False)
    token: str = field(repr=False)
    aes_key: str = field(repr=False)
    open_kfids: tuple[str, ...]
    api_base: str = DEFAULT_API_BASE


def _value(s: cfg._Section, name: str, pattern: re.Pattern[str], what: str) -> str:
    """A required string; read like a ``[wechat]`` secret when ``router.config`` maps it to an env var."""
    if s.key(name) in cfg.ENV_VARS:
        return s.loader._secret(s, name, required=True, pattern=pattern, what=what) or ""
    return s.get_str(name, required=True, pattern=pattern, what=what)


def wecom_from_section(s: cfg._Section) -> WeComConfig:
    """Read and check the ``[wecom]`` table ``s``; problems go to its loader (nothing is raised here)."""
    corpid = _value(
        s, "corpid", _CORPID_RE, "a corp id (企业ID): 6-64 letters or digits, e.g. ww0123456789abcdef"
    )
    secret = _value(s, "secret", _SECRET_RE, "the kf app's secret (1-256 characters, no spaces)")
    token = _value(s, "token", cfg._TOKEN_RE, "3-32 letters or digits (the callback Token)")
    aes_key = _value(s, "aes_key", cfg._AES_KEY_RE, "43 letters or digits (the callback EncodingAESKey)")
    if s.raw("open_kfids") is cfg._MISSING:
        s.problem(
            "open_kfids", "is required: the open_kfid of every kf account kfrouter routes (kf/account/list)"
        )
        open_kfids: tuple[str, ...] = ()
    else:
        open_kfids = s.get_str_list(
            "open_kfids",
            pattern=_OPEN_KFID_RE,
            what="an open_kfid (1-64 characters of letters, digits, '_' or '-')",
        )
        if not open_kfids and isinstance(s.raw("open_kfids"), list) and not s.raw("open_kfids"):
            s.problem("open_kfids", "must list at least one kf account")
    api_base = s.get_str("api_base", DEFAULT_API_BASE).rstrip("/")
    if (reason := cfg._url_problem(api_base, https_only=True)) is not None:
        s.problem("api_base", reason)
    s.done()
    return WeComConfig(
        corpid=corpid, secret=secret, token=token, aes_key=aes_key, open_kfids=open_kfids, api_base=api_base
    )


def load_wecom(
    data: Mapping[str, Any], *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> WeComConfig:
    """Validate the ``[wecom]`` table of a parsed TOML document (other tables are not looked at).
    Raises ``router.config.ConfigError`` listing every problem."""
    loader = cfg._Loader(source, os.environ if env is None else env, Path.cwd())
    root = cfg._Section(loader, "", dict(data))
    if root.raw("wecom") is cfg._MISSING:
        raise cfg.ConfigError.in_file(source, [("wecom", "is required: the [wecom] table is missing")])
    result = wecom_from_section(root.table("wecom"))
    if loader.problems:
        raise cfg.ConfigError.in_file(source, loader.problems)
    return result
