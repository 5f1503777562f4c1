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

``WeComConfig`` and ``wecom_from_section`` live in ``router.config`` (its loader reads ``[wecom]`` in place of
``[wechat]``; they are re-exported here); ``load_wecom`` validates the ``[wecom]`` table of a parsed
document on its own (tests, the doctor). ``callback_path`` (default ``/wecom``) is where the daemon
receives WeCom's callbacks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kfrouter.router import config as cfg

DEFAULT_API_BASE = cfg.WECOM_API_BASE
WeComConfig = cfg.WeComConfig
wecom_from_section = cfg.wecom_from_section


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
