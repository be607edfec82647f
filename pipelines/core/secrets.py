"""The one home of secret detection and redaction.

Three places need it: the resolved config printed and stored in every manifest, error messages
printed by the CLIs, and the teacher identity (engine kwargs) that enters every generation key.
They must agree, so they all ask this module.

A key is a credential when its name says so (`hf_token`, `HF_TOKEN`, `AWS_SESSION_TOKEN`,
`api_key`, `*secret*`, `*password*`, `access_key`, `credential(s)`, `private_key`, `auth`). Names
that merely *contain* "token" are not: `tokenizer`, `tokenizer_mode`, `max_tokens`,
`skip_tokenizer_init` change what a model answers and must stay visible (and keyed).
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "***"

# `token` only as a whole word at the end (hf_token, HF_TOKEN, AWS_SESSION_TOKEN, token), never as a
# prefix of tokenizer / tokens.
_SECRET_KEY = re.compile(
    r"(^|[_-])token$|secret|passw|api[_-]?key|access[_-]?key|credential|private[_-]?key|(^|[_-])auth($|[_-])",
    re.IGNORECASE,
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+:[^/@\s]*@")
# Environment variables whose values must never appear in printed text.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "HF_TOKEN",
              "HUGGING_FACE_HUB_TOKEN", "AWS_ACCESS_KEY_ID")


def is_secret_key(name: str) -> bool:
    """True when a mapping key / kwarg / env var of this name holds a credential."""
    return bool(_SECRET_KEY.search(str(name)))


def redact(value: Any) -> Any:
    """`value` (JSON-like) with credential values replaced and URL user:password parts removed."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) and value[k] not in (None, "") else redact(value[k]))
                for k in value}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", value)
    return value


def without_secrets(mapping: dict[str, Any]) -> dict[str, Any]:
    """`mapping` without its credential keys: for identities, where a secret must neither leak nor
    change a key (a rotated hf_token gives the same answers)."""
    return {k: v for k, v in mapping.items() if not is_secret_key(k)}


def scrub(text: str) -> str:
    """`text` without credentials: URL user:password parts and the values of credential variables
    of this process's environment are replaced by `***`."""
    out = _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 8 and value in out:
            out = out.replace(value, REDACTED)
    return out
