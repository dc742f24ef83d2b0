"""Find credentials in a file's text and redact them so that they never reach the dataset.

Vendor token formats come from detect-secrets' regex plugins; private-key blocks, credential
assignments, URL passwords, JWTs and high-entropy literals are detected here. Every regex runs
once over the whole text; slow plugin regexes sit behind a cheap gate searched first.

For many files at once, ``pipelines.dataset.prefilter`` first runs every pattern together in one Hyperscan
pass over the file's bytes (in prefilter mode, which matches at least what the pattern matches); a Python
regex then runs only where its pattern may match, so the result is the same as without it, at disk speed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from pipelines.fsutil import user_cache_dir, write_cache


@dataclass(frozen=True, order=True)
class Redaction:
    """A span of text to hide: [start, end) character offsets and what it is."""

    start: int
    end: int
    kind: str


class LazyPattern:
    """A regex compiled on its first use: compiling the ~130 patterns here costs ~35 ms, which every
    ``repopilot dataset update`` of one file would pay, while the prefilter lets only a few of them run."""

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern = pattern
        self.declared_flags = flags  # as written; ``flags`` adds inline ones, such as (?i)
        self._compiled: re.Pattern[str] | None = None
        _LAZY.append(self)

    @property
    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self.pattern, self.declared_flags)
        return self._compiled

    def __getattr__(self, name: str) -> Any:  # search, finditer, flags, groups...: the compiled pattern's
        value = self.__dict__[name] = getattr(self.compiled, name)  # kept: found at once from now on
        return value


_LAZY: list[LazyPattern] = []  # every one made


def compile_patterns() -> None:
    """Compile every pattern now (~10 ms), e.g. before worker processes fork, each of which would compile those it
    meets."""
    for pattern in _LAZY:
        pattern.compiled  # noqa: B018


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: LazyPattern
    group: int | None = 0  # the group holding the secret; 0 is the whole match, trimmed; None: 1 if any, else 0
    gates: tuple[LazyPattern, ...] = ()  # searched on the lowered text; one must hit for the rule to run
    on_lower: bool = False  # the pattern is written for the lowered text
    prio: int = 0  # lower wins when two rules report the same span
    literal: bool = False  # the secret must also pass the placeholder and identifier checks

    @property
    def secret_group(self) -> int:
        if self.group is None:
            return 1 if self.pattern.compiled.groups else 0
        return self.group


# Plugins replaced by detectors below (or not secrets at all), and those without a regex list.
_SKIP_PLUGINS = {"PrivateKeyDetector", "JwtTokenDetector", "BasicAuthDetector", "IPPublicDetector"}
_PLUGIN_KINDS: dict[str, tuple[str, ...]] = {
    "ArtifactoryDetector": ("artifactory-token",),
    "AWSKeyDetector": ("aws-access-key", "aws-secret-key"),
    "AzureStorageKeyDetector": ("azure-storage-key",),
    "CloudantDetector": ("cloudant-credentials",),
    "DiscordBotTokenDetector": ("discord-token",),
    "GitHubTokenDetector": ("github-token",),
    "GitLabTokenDetector": ("gitlab-token",),
    "IbmCloudIamDetector": ("ibm-cloud-iam-key",),
    "IbmCosHmacDetector": ("ibm-cos-hmac-key",),
    "MailchimpDetector": ("mailchimp-key",),
    "NpmDetector": ("npm-token",),
    "OpenAIDetector": ("openai-key",),
    "PypiTokenDetector": ("pypi-token",),
    "SendGridDetector": ("sendgrid-key",),
    "SlackDetector": ("slack-token", "slack-webhook"),
    "SoftlayerDetector": ("softlayer-key",),
    "SquareOAuthDetector": ("square-oauth-secret",),
    "StripeDetector": ("stripe-key",),
    "TelegramBotTokenDetector": ("telegram-token",),
    "TwilioKeyDetector": ("twilio-key",),
}
# Plugins whose first group is the secret (the rest of the match is the key name or URL).
_GROUP_PLUGINS = {"AWSKeyDetector", "CloudantDetector", "IbmCloudIamDetector", "IbmCosHmacDetector"}
_GROUP_PLUGINS |= {"SoftlayerDetector", "NpmDetector"}
_IBM_TAIL = r"[\"'\]]{0,2} *(?:=|:| )[=>: ]* *[\"']?[a-z0-9_-]{44}"
_CREDENTIAL_WORDS = r"[_-]?(?:api)?[_-]?(?:key|pwd|pw|pass|token)"
# Gates: necessary conditions, searched on the lowered text, for the slow plugin regexes to
# match at all. Each alternative starts with a literal so that the search is fast.
_GATES: dict[str, tuple[str, ...]] = {
    "ArtifactoryDetector": ("akc", "ap"),
    "AWSKeyDetector": ("a3t", "abia", "acca", "akia", "asia", "aws"),
    "CloudantDetector": ("cl" + _CREDENTIAL_WORDS, "clou" + _CREDENTIAL_WORDS, "cloudant"),
    "DiscordBotTokenDetector": (r"\.[a-z0-9_-]{6}\.[a-z0-9_-]{27}",),
    "IbmCloudIamDetector": tuple(w + _IBM_TAIL for w in ("key", "pw", "pass", "token")),
    "IbmCosHmacDetector": ("secret",),
    "MailchimpDetector": ("-us",),
    "NpmDetector": ("_authtoken",),
    "OpenAIDetector": ("t3blbkfj",),
    "SlackDetector": ("xox", "hooks.slack.com"),
    "SoftlayerDetector": ("sl" + _CREDENTIAL_WORDS, "softlayer"),
    "StripeDetector": ("k_live_",),
    "TelegramBotTokenDetector": (":[0-9a-z_-]{35}",),
}


def _kebab(name: str) -> str:
    name = re.sub(r"Detector$", "", name)
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1-\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", name).lower()


def _plugin_rules() -> list[_Rule]:
    rules = []
    for name, patterns in _plugin_patterns():
        kinds = _PLUGIN_KINDS.get(name, (_kebab(name),))
        gates = tuple(LazyPattern(g) for g in _GATES.get(name, ()))
        for i, (source, flags) in enumerate(patterns):
            group = None if name in _GROUP_PLUGINS else 0
            rules.append(_Rule(kinds[min(i, len(kinds) - 1)], LazyPattern(source, flags), group, gates))
    return rules


def _plugin_patterns() -> list[tuple[str, list[tuple[str, int]]]]:
    """(class name, [(regex, flags)]) of detect-secrets' regex plugins, in name order.

    Read from the installed library once and kept in the user's cache, keyed by the plugin files (importing
    detect-secrets costs ~80 ms, which every ``repopilot dataset update`` would pay).
    """
    spec = importlib.util.find_spec("detect_secrets")
    if spec is None or spec.origin is None:
        raise ImportError("detect-secrets is not installed: pip install detect-secrets")
    folder = Path(spec.origin).parent / "plugins"
    stamp = hashlib.sha256(repr(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.py"))).encode())
    cache = user_cache_dir() / f"secret-rules-{stamp.hexdigest()[:16]}.json"
    try:
        return [(name, [(p, f) for p, f in patterns]) for name, patterns in json.loads(cache.read_text())]
    except (OSError, ValueError):
        pass
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class  # only when not cached
    from detect_secrets.plugins.base import RegexBasedDetector

    found = []
    for cls in sorted(set(get_mapping_from_secret_type_to_class().values()), key=lambda c: c.__name__):
        if cls.__name__ not in _SKIP_PLUGINS and issubclass(cls, RegexBasedDetector):
            found.append((cls.__name__, [(p.pattern, p.flags) for p in cls().denylist]))
    write_cache(cache, json.dumps(found).encode())
    return found


# Formats detect-secrets lacks or matches too narrowly.
_OWN_RULES = [
    _Rule("github-token", LazyPattern(r"github_pat_[A-Za-z0-9_]{60,}")),
    _Rule("gitlab-token", LazyPattern(r"glpat-[A-Za-z0-9_-]{20,}")),
    _Rule("openai-key", LazyPattern(r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}")),
    _Rule("google-api-key", LazyPattern(r"AIza[0-9A-Za-z_-]{35}")),
    _Rule("npm-token", LazyPattern(r"npm_[A-Za-z0-9]{36}")),
    _Rule(
        "aws-secret-key",
        LazyPattern(r"aws_?secret_?(?:access_?)?key[\"']?[ \t]*[:=][ \t]*[\"']?([a-z0-9/+]{40})(?![a-z0-9/+])"),
        group=1,
        gates=(LazyPattern("aws_?secret"),),
        on_lower=True,
    ),
    _Rule(
        "auth-header",
        LazyPattern(r"authorization[\"']?[ \t]*[:=][ \t]*[\"']?(?:bearer|basic|token)[ \t]+([a-z0-9+/=._~-]{16,})"),
        group=1,
        on_lower=True,
        prio=2,
        literal=True,
    ),
    _Rule("jwt", LazyPattern(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),
    _Rule("huggingface-token", LazyPattern(r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{34,}(?![A-Za-z0-9])")),
    _Rule(  # mysql -p<password> (no space: with one, mysql asks for it), also mysqldump/mysqladmin
        "password-argument",
        LazyPattern(r"\bmysql(?:dump|admin|import|sh)?\b[^\n]*?[ \t]-p([^\s\"'`-][^\s\"'`]{2,})"),
        group=1,
        gates=(LazyPattern("mysql"),),
        literal=True,
    ),
    _Rule(  # curl -u user:password, --user user:password
        "password-argument",
        LazyPattern(r"\bcurl\b[^\n]*?[ \t](?:-u|--user)[ \t=]*[\"']?[^\s:\"']+:([^\s\"'`]{3,})"),
        group=1,
        gates=(LazyPattern("curl"),),
        literal=True,
    ),
]
_TOKEN_RULES = _OWN_RULES + _plugin_rules()

_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
_ALNUM = frozenset(string.ascii_letters + string.digits)
_LEAD_TRIM = frozenset(" \t\r\n\"'=:")
_TAIL_TRIM = frozenset(" \t\r\n\"'")
_KEY_PREFIX = LazyPattern(r"[A-Za-z]+=")
_MASKED = LazyPattern(r"([xX*])\1{5}")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

_PEM_BEGIN = LazyPattern(r"-{4,5} ?BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?) ?-{4,5}")
_PEM_BODY = LazyPattern(r"(?:\s|\\[rn]|[\"'+,]|[A-Za-z][A-Za-z-]*:[^\n\\]*(?=\n|\\))*[A-Za-z0-9+/]{16}")
_PEM_TAIL = LazyPattern(r" ?-{0,5}")
_PUTTY = LazyPattern(r"PuTTY-User-Key-File-\d+:")
_PUTTY_END = LazyPattern(r"Private-MAC: *[0-9a-fA-F]*")
_MATERIAL_LINE = LazyPattern(r"[ \t]*(?:[A-Za-z0-9+/=]{8,}|[A-Z][A-Za-z-]*: [^\n]*)?[ \t]*")

_URL_CREDS = LazyPattern(r"://([^\s:/?#@\"'<>`]{1,256}):([^\s/?#@\"'<>`]{1,256})@(?=[\w\[])(?!example\.)")

# A key ending in a credential word, its separator, and a quoted or bare value; one regex per
# word so that each search starts from a literal (lowered text).
_ASSIGN_TAIL = (
    r"[\"'\]]{0,2}"
    r"(?P<sep>[ \t]*(?::=|=>|=(?![=~>])|:[ \t]*[a-z_][\w.\[\], |]{0,40}?[ \t]+=(?!=)|:(?![:/]))[ \t]*)"
    r"(?:[rbfu]{0,2}(?P<q>\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|`[^`\n]*`)"
    r"|(?P<bare>[^\s\"'`,;()\[\]{}<>&]+)(?=[;&\"'`]|[ \t]*(?:\r?$|#|//)))"
)
_ASSIGN = tuple(
    LazyPattern(word + _ASSIGN_TAIL, re.M) for word in ("pass(?:word|wd|phrase)?", "pwd", "secret", "token", "key")
)
_KEY_QUALIFIER = LazyPattern(
    r"(?:api|access|secret|private|auth|signing|encryption|master|account|app|client|consumer|session"
    r"|shared)[_-]?$"
)
_ENV_LINE = LazyPattern(r"[ \t]*(?:export[ \t]+)?[A-Za-z0-9_.-]*")
_PLACEHOLDER = LazyPattern(
    r"password|passwd|secret|token|changeme|example|placeholder|dummy|redacted|your[_-]|xxxx|\*\*\*|\.\.\."
    r"|^[\d.,:_-]+$|[{}<>\s\\]|\$[{(A-Za-z_]|%[(s]|^(.)\1*$|^(?:none|null|nil|true|false|undefined)$",
    re.I,
)
_PATH_OR_URL = LazyPattern(r"^(?:/|\.\.?/|~/|[A-Za-z]:\\)|://|\.(?:pem|key|crt|cer|json|ya?ml|txt|p12|pfx|env|pub)$")
_WORDY = LazyPattern(r"^[A-Za-z][a-z]*(?:[._-][A-Za-z][a-z]*)*$|^[A-Z]+(?:_[A-Z0-9]+)+$|^#[0-9a-fA-F]{3,8}$")
_IDENT_CHAIN = LazyPattern(r"^[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*$")

_HE_QUOTED = LazyPattern(r"([\"'`])([A-Za-z0-9+/=_-]{20,})\1")
# _HE_QUOTED as searched: one pattern per quote, each starting with a literal that the regex engine finds ~3x faster
# than the class of three; together they match what _HE_QUOTED matches (a match holds no quote: none overlap).
_HE_QUOTED_EACH = tuple(LazyPattern(quote + r"([A-Za-z0-9+/=_-]{20,})" + quote) for quote in "\"'`")
_HE_BARE = LazyPattern(r"[=:][ \t]*([A-Za-z0-9+/_-]{20,}={0,2})[ \t]*\r?$", re.M)
_HEX = LazyPattern(r"^(?=.*[0-9])(?=.*[a-fA-F])[0-9a-fA-F]+$")
_B64 = LazyPattern(r"^(?=.*[0-9])(?=.*[a-z])(?=.*[A-Z])")
_UUID = LazyPattern(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_WORD_PARTS = LazyPattern(r"[A-Z]?[a-z]{3,}|[A-Z]{3,}(?![a-z])")
_IDENTIFIER = LazyPattern(r"^[A-Za-z_]\w*_\w*$")
_CHAR_CLASS = str.maketrans(
    dict.fromkeys(string.ascii_uppercase, "A")
    | dict.fromkeys(string.ascii_lowercase, "a")
    | dict.fromkeys(string.digits, "0")
)

# Order decides the kind kept when spans start and end together: specific beats generic.
_PRIO_PEM, _PRIO_URL, _PRIO_ASSIGN, _PRIO_ENTROPY = 0, 2, 3, 4

_Span = tuple[int, int, str, int]


def _lowered(text: str) -> str:
    low = text.lower()
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)


def _token_spans(text: str, low: str, hits: Hits) -> Iterator[_Span]:
    n = len(text)
    rules = _TOKEN_RULES if hits is None else [_TOKEN_RULES[i] for i in sorted(hits) if i < len(_TOKEN_RULES)]
    for rule in rules:
        if rule.gates and not any(g.search(low) for g in rule.gates):
            continue
        group = rule.secret_group
        for m in rule.pattern.finditer(low if rule.on_lower else text):
            if m.start(group) < 0:
                continue
            s, e = m.span(group)
            if group == 0:
                while s < e and text[s] in _LEAD_TRIM:
                    s += 1
                while e > s and text[e - 1] in _TAIL_TRIM:
                    e -= 1
                prefix = _KEY_PREFIX.match(text, s, e)
                if prefix:
                    s = prefix.end()
            while e < n and text[e] in _TOKEN_CHARS:
                e += 1
            inside_word = group == 0 and s and text[s - 1] in _ALNUM  # a group may follow a flag (-pSECRET)
            if s == e or inside_word or _MASKED.search(text, s, e):
                continue
            if not rule.literal or _plausible(text[s:e]):
                yield s, e, rule.kind, rule.prio


def _private_key_spans(text: str, hits: Hits) -> Iterator[_Span]:
    pos = 0 if _may_match(_PEM_BEGIN, hits) and "PRIVATE KEY" in text else len(text)
    while (m := _PEM_BEGIN.search(text, pos)) is not None:
        pos = m.end()
        if not _PEM_BODY.match(text, pos):
            continue  # a marker string in a parser, not a key
        end = text.find("END " + m.group(1), pos)
        pos = _material_end(text, pos) if end < 0 else _PEM_TAIL.match(text, end + 4 + len(m.group(1))).end()
        yield m.start(), pos, "private-key", _PRIO_PEM
    for m in _PUTTY.finditer(text) if _may_match(_PUTTY, hits) and "PuTTY-User" in text else ():
        end = _PUTTY_END.search(text, m.end())
        yield m.start(), _material_end(text, m.end()) if end is None else end.end(), "private-key", _PRIO_PEM


def _material_end(text: str, pos: int) -> int:
    """Where the key material of an unterminated block ends: the rest of a line written with escaped
    newlines, or the run of following lines that look like base64 or key headers."""
    eol = text.find("\n", pos)
    eol = len(text) if eol < 0 else eol
    if "\\n" in text[pos:eol]:
        return eol
    end = eol
    while end < len(text):
        nxt = text.find("\n", end + 1)
        nxt = len(text) if nxt < 0 else nxt
        line = text[end + 1 : nxt]
        if not line.strip() or not _MATERIAL_LINE.fullmatch(line):
            break
        end = nxt
    return end


def _url_spans(text: str, hits: Hits) -> Iterator[_Span]:
    for m in _URL_CREDS.finditer(text) if _may_match(_URL_CREDS, hits) else ():
        password = m.group(2)
        if not _PLACEHOLDER.search(password) and password.lower() not in {"pass", "pwd", "pw"}:
            yield m.start(2), m.end(2), "url-credentials", _PRIO_URL


def _plausible(value: str) -> bool:
    """A literal that could be a credential: not short, a placeholder, a path or an identifier."""
    return 6 <= len(value) <= 1000 and not (
        _PLACEHOLDER.search(value) or _PATH_OR_URL.search(value) or _WORDY.match(value)
    )


def _is_code_ref(value: str, colon: bool) -> bool:
    """A variable, attribute or type name rather than a literal (snake_case is literal after ':')."""
    if not _IDENT_CHAIN.match(value):
        return False
    return "." in value or not any(c.isdigit() for c in value) or ("_" in value and not colon)


def _assignment_spans(text: str, low: str, hits: Hits) -> Iterator[_Span]:
    for pattern in _ASSIGN:
        for m in pattern.finditer(low) if _may_match(pattern, hits) else ():
            k = m.start()
            kind = "password" if low[k] == "p" else "secret"
            if low.startswith("key", k):
                qualifier = _KEY_QUALIFIER.search(low, max(0, k - 12), k)
                if qualifier is None:
                    continue  # a bare "key" is too common to mean a credential
                k = qualifier.start()
            if k and text[k - 1].isalpha() and not (text[k].isupper() and text[k - 1].islower()):
                continue  # "bypass", "compass": the credential word is not a key component
            if m.group("q") is not None:
                s, e = m.start("q") + 1, m.end("q") - 1
                if _plausible(text[s:e]):
                    yield s, e, kind, _PRIO_ASSIGN
                continue
            s, e = m.span("bare")
            value = text[s:e]
            if not _plausible(value):
                continue
            line_start = text.rfind("\n", 0, k) + 1
            sep = m.group("sep")
            if sep == "=" and _ENV_LINE.fullmatch(text, line_start, k):
                yield s, e, kind, _PRIO_ASSIGN  # KEY=value in .env and shell files is always literal
            elif not _is_code_ref(value, colon=sep.strip() == ":"):
                yield s, e, kind, _PRIO_ASSIGN


def _entropy(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _high_entropy(value: str) -> bool:
    n = len(value)
    if _HEX.match(value):
        return n >= 32 and _entropy(value) > 3.0
    if not _B64.match(value) or _UUID.match(value) or value.startswith("/"):
        return False
    classes = value.translate(_CHAR_CLASS)
    runs = 1 + sum(a != b for a, b in pairwise(classes))
    words = sum(len(w) for w in _WORD_PARTS.findall(value))
    if runs < 0.45 * n or words > (0.5 if _IDENTIFIER.match(value) else 0.7) * n:
        return False  # CamelCase or snake_case names, paths made of words
    return _entropy(value) > min(4.5, 0.85 * math.log2(n))


def _entropy_spans(text: str, hits: Hits) -> Iterator[_Span]:
    quoted = _HE_QUOTED_EACH if _may_match(_HE_QUOTED, hits) else ()
    for pattern in (*quoted, _HE_BARE) if _may_match(_HE_BARE, hits) else quoted:
        for m in pattern.finditer(text):
            if _high_entropy(m.group(1)):
                yield m.start(1), m.end(1), "high-entropy-string", _PRIO_ENTROPY


def _merge(spans: list[_Span]) -> list[Redaction]:
    out: list[Redaction] = []
    for s, e, kind, _ in sorted(spans, key=lambda sp: (sp[0], -sp[1], sp[3], sp[2])):
        if s >= e:
            continue
        if out and s < out[-1].end:
            if e > out[-1].end:
                out[-1] = Redaction(out[-1].start, e, out[-1].kind)
        else:
            out.append(Redaction(s, e, kind))
    return out


def find_secrets(text: str, hits: Hits = None) -> list[Redaction]:
    """Return the sorted, non-overlapping spans of ``text`` that hold credentials.

    ``hits`` (from ``Prefilter.hits`` of :mod:`pipelines.dataset.prefilter`) names the patterns that may match;
    None runs them all.
    """
    if hits is not None and not hits:
        return []  # no pattern can match (most files)
    low = _lowered(text) if hits is None or not hits.isdisjoint(_ON_LOWER) else ""  # "": no pattern reads it
    spans: list[_Span] = [
        *_token_spans(text, low, hits),
        *_private_key_spans(text, hits),
        *_url_spans(text, hits),
        *_assignment_spans(text, low, hits),
        *_entropy_spans(text, hits),
    ]
    return _merge(spans)


# -- one pass for every pattern ---------------------------------------------------------------------------
Hits = frozenset[int] | None
# Every pattern searched over a whole file, with whether it is written for the lowered text (token rules first,
# so that a token rule's id is its index in _TOKEN_RULES).
SCANNED: list[tuple[LazyPattern, bool]] = [
    *((rule.pattern, rule.on_lower) for rule in _TOKEN_RULES),
    *((pattern, True) for pattern in _ASSIGN),
    *((pattern, False) for pattern in (_URL_CREDS, _HE_QUOTED, _HE_BARE, _PEM_BEGIN, _PUTTY)),
]
_PATTERN_IDS = {pattern: i for i, (pattern, _) in enumerate(SCANNED)}
# The patterns whose search reads the lowered text: for a file that hits none of them, it is not made.
_ON_LOWER = frozenset(
    [i for i, rule in enumerate(_TOKEN_RULES) if rule.on_lower or rule.gates] + [_PATTERN_IDS[p] for p in _ASSIGN]
)


def _may_match(pattern: LazyPattern, hits: Hits) -> bool:
    return hits is None or _PATTERN_IDS[pattern] in hits


def redact(text: str, spans: list[Redaction]) -> str:
    """Replace each span with ``<redacted-KIND>``; overlapping spans are merged first."""
    parts, pos = [], 0
    for r in _merge([(r.start, r.end, r.kind, 0) for r in spans]):
        parts += [text[pos : r.start], "<redacted-" + r.kind + ">"]
        pos = r.end
    parts.append(text[pos:])
    return "".join(parts)
