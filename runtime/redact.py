"""Secrets out of any text that names a source: `user:pass@` and values of secret-looking keys become ***.

Works on whole strings wherever the secret sits: a URL, a GStreamer pipeline (`rtspsrc
location="rtsp://admin:pw@cam/" user-pw=pw`), a source with a leading space, an error message
that quotes one. It hides too much rather than too little: the user name stays (it names the
camera), everything between it and the last "@" of the address goes; a key is secret when any
word of it looks like one (`X-Amz-Signature`, `api_key`, `user-pw`, `#access_token=`, `loginpas`, `p`), also
percent-encoded (`pass%77ord=`, `password%3D...`); a header written into a pipeline or a native library's
message (`extra-headers="Authorization: Basic ..."`) loses its value when its name looks secret.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# Keys holding one of these anywhere (lower case, separators removed) are secret.
_SECRET_PARTS = (
    "pass",  # password, passwd, passphrase, pass
    "pwd",
    "psw",
    "secret",
    "token",  # token, access_token, auth_token, refresh_token, x-auth-token
    "auth",  # auth, authorization, authkey
    "apikey",
    "accesskey",
    "privatekey",
    "signature",  # signature, X-Amz-Signature, X-Goog-Signature
    "credential",  # X-Amz-Credential, credentials
    "session",
    "cookie",
    "bearer",
    "jwt",
    "hmac",
)
# Keys with one of these as a whole word (split at - _ . and camelCase) are secret: `key`, `sig`, `pw`, `sid` ...
_SECRET_WORDS = {"key", "sig", "pw", "sid", "otp", "pin", "code", "nonce", "hash"}
# GStreamer's rtspsrc/souphttpsrc name the login `user-id` and `user-pw`; cheap IP cameras' CGIs take `?u=&p=`.
_SECRET_KEYS = {"userid", "userpw", "login", "p"}
# Keys ending so are secret: `loginpas`, `campas` (cheap camera CGIs), `loginpw`, `adminpwd`.
_SECRET_ENDS = ("pas", "pw", "pwd")
# Harmless keys the rules above would catch (GStreamer element properties).
_NOT_SECRET = {"passthrough", "bypass", "keyintmax", "keyframemaxdist", "keyframeperiod", "keyframeinterval"}

_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*://"
# The address part before the last "@" of a URL: inside quotes up to the closing quote, else up to whitespace.
_USERINFO = re.compile(rf"(?P<q>[\"'])?(?P<scheme>{_SCHEME})(?P<info>(?(q)[^\"']*|[^\s\"']*))@")
# `user:pass@host` with no scheme, as a word of its own (`location=admin:pw@cam`): up to the last "@" of the word.
_BARE_USERINFO = re.compile(r"(?<![^\s=\"'])(?P<user>[^\s:@/\"'=]+):(?!//)[^\s\"']*@")
# A key, then "=" (or "%3D" inside a percent-encoded URL, whose value then ends at an encoded "&" or "#").
_KEY = re.compile(r"(?:(?<![\w.\-%])|(?<=%26)|(?<=%3[Ff])|(?<=%23))([A-Za-z_%][\w.\-%]*?)[ \t]*(=|%3[Dd])[ \t]*")
_TYPE = r"(?:\([A-Za-z0-9_]+\))?"  # GStreamer's typed value: user-pw=(string)...
_VALUE = re.compile(_TYPE + r"""(?:\\"(?:[^\\]|\\[^"])*(?:\\")?|"[^"]*"?|'[^']*'?|(?:\\.|[^\s&#"'])*)""")
_ENCODED_VALUE = re.compile(r"(?:(?!%2[6Bb3]|%23)[^\s&#\"'])*")
# `Authorization: Basic ...` as text (a header in extra-headers, in an error message): masked to the end of the line or
# the quoted string, when the name looks secret.
_HEADER = re.compile(r"(?<![\w\-])([A-Za-z][\w\-]*)[ \t]*:[ \t]+(?=\S)")
_HEADER_VALUE = re.compile(r"(?:[^\"'\r\n\\]|\\(?![\"rn]))*")


def looks_secret(key: str) -> bool:
    """Whether a query, fragment or property key names a secret (a broad list, by design)."""
    key = unquote(key)
    compact = re.sub(r"[^a-z0-9]", "", key.lower())
    if not compact or compact in _NOT_SECRET:
        return False
    if compact in _SECRET_KEYS or compact.endswith(_SECRET_ENDS) or any(part in compact for part in _SECRET_PARTS):
        return True
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return any(word in _SECRET_WORDS for word in words)


def redact(text) -> str:
    """`text` (a source, a pipeline, a message quoting one) with every password, token and secret value as ***."""
    text = str(text)
    stripped = text.strip()
    if re.match(_SCHEME, stripped) and " ! " not in stripped and "@" in stripped:
        # A whole-string URL: its password may hold anything, spaces included, up to the last "@".
        start = text.index(stripped)
        text = text[:start] + _mask_userinfo(stripped, whole=True) + text[start + len(stripped) :]
    else:
        text = _USERINFO.sub(_userinfo, text)
    text = _BARE_USERINFO.sub(lambda m: f"{m.group('user')}:{MASK}@", text)
    return _mask_values(text)


def _mask_userinfo(url: str, whole: bool) -> str:
    scheme = re.match(_SCHEME, url).group(0)
    info, _, rest = url[len(scheme) :].rpartition("@")
    if not whole or not info:
        return url
    return scheme + _shown_user(info) + "@" + rest


def _userinfo(match: re.Match) -> str:
    return (match.group("q") or "") + match.group("scheme") + _shown_user(match.group("info")) + "@"


def _shown_user(info: str) -> str:
    """`user:***` for `user:password`, `***` for a bare token; already masked text stays as it is."""
    user, colon, _ = info.partition(":")
    if not colon or re.search(r"[/?#]", user):
        return MASK
    return f"{user}:{MASK}"


def _mask_values(text: str) -> str:
    out, pos = [], 0
    for match in _KEY.finditer(text):
        if match.start() < pos or not looks_secret(match.group(1)):
            continue
        value = (_VALUE if match.group(2) == "=" else _ENCODED_VALUE).match(text, match.end())
        out.append(text[pos : match.end()] + MASK)
        pos = value.end()
    out.append(text[pos:])
    return _mask_headers("".join(out))


def _mask_headers(text: str) -> str:
    out, pos = [], 0
    for match in _HEADER.finditer(text):
        if match.start() < pos or not looks_secret(match.group(1)) or text.startswith(MASK, match.end()):
            continue
        value = _HEADER_VALUE.match(text, match.end())
        out.append(text[pos : match.end()] + MASK)
        pos = value.end()
    out.append(text[pos:])
    return "".join(out)
