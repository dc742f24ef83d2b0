"""Tests for pipelines.dataset.secrets.

Every fake credential is assembled at run time from split prefixes and seeded random characters,
so this file holds nothing that a secret scanner would flag.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from dataclasses import dataclass
from itertools import pairwise

import pytest

from pipelines.dataset import prefilter as prefilter_module
from pipelines.dataset.prefilter import Prefilter
from pipelines.dataset.secrets import SCANNED, Redaction, find_secrets, redact
from pipelines.dataset.standins import Standins, UnsupportedPattern, pieces

_RNG = random.Random(20240611)  # consumed only while building SAMPLES at import
_UPPER_DIGITS = string.ascii_uppercase + string.digits
_ALNUM = string.ascii_letters + string.digits
_B64 = _ALNUM + "+/"
_HEX = "0123456789abcdef"


def _rand(alphabet: str, n: int, rng: random.Random = _RNG) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _pem(
    label: str, body_prefix: str = "", headers: str = "", sep: str = "\n", rng: random.Random = _RNG
) -> tuple[str, str]:
    """A PEM block with random base64 body lines; returns (block, body)."""
    lines = [body_prefix + _rand(_B64, 64 - len(body_prefix), rng)] + [_rand(_B64, 64, rng) for _ in range(5)]
    body = sep.join(lines)
    dashes = "-" * 5
    block = f"{dashes}BEGIN {label}{dashes}{sep}{headers}{body}{sep}{dashes}END {label}{dashes}"
    return block, body


@dataclass(frozen=True)
class Sample:
    """A file's text with one planted credential."""

    name: str
    text: str
    secret: str
    kind: str
    context: str  # code next to the secret that must survive redaction

    @property
    def multiline(self) -> bool:
        return "\n" in self.secret


def _samples() -> list[Sample]:
    out: list[Sample] = []

    def add(name: str, template: str, secret: str, kind: str, context: str) -> None:
        out.append(Sample(name, template.replace("@@", secret), secret, kind, context))

    rsa, _ = _pem("RSA " + "PRIVATE KEY")
    add(
        "rsa-pem",
        'import ssl\n\nKEY = """\n@@\n"""\n\n\ndef load():\n    return ssl.create_default_context()\n',
        rsa,
        "private-key",
        "def load():",
    )
    encrypted, _ = _pem(
        "RSA " + "PRIVATE KEY", headers="Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC," + _rand(_HEX, 32) + "\n\n"
    )
    add("rsa-pem-encrypted", "key: |\n@@\nnext: 1\n", encrypted, "private-key", "next: 1")
    escaped, _ = _pem("EC " + "PRIVATE KEY", sep="\\n")
    add("pem-in-string", 'KEY = "@@\\n"\nuse(KEY)\n', escaped, "private-key", "use(KEY)")
    ossh, _ = _pem("OPENSSH " + "PRIVATE KEY", body_prefix="b3BlbnNzaC1rZXktdjE")
    add("openssh", "# deploy key\n@@\n# end\n", ossh, "private-key", "# deploy key")
    add(
        "aws-access-key",
        "[default]\naws_access_key_id = @@\nregion = eu-west-1\n",
        "AK" + "IA" + _rand(_UPPER_DIGITS, 16),
        "aws-access-key",
        "aws_access_key_id = ",
    )
    add(
        "aws-secret-key",
        "[default]\naws_secret_access_key = @@\nregion = eu-west-1\n",
        _rand(_B64, 40),
        "aws-secret-key",
        "aws_secret_access_key = ",
    )
    add("hf-token", "login(@@)\nrun()\n", "h" + "f_" + _rand(_ALNUM, 34), "huggingface-token", "run()")
    add(
        "mysql-password",
        "mysql -h db -u app -p@@ shop < dump.sql\necho ok\n",
        _rand(_ALNUM, 14),
        "password-argument",
        "echo ok",
    )
    add(
        "curl-user",
        "curl -u deploy:@@ https://ci.internal/api\nexit 0\n",
        _rand(_ALNUM, 16),
        "password-argument",
        "exit 0",
    )
    add(
        "github-classic",
        'GH = "@@"  # CI bot\n',
        "gh" + "p_" + _rand(_ALNUM, 36),
        "github-token",
        "GH = ",
    )
    add(
        "github-fine-grained",
        "export GITHUB_PAT=@@\necho done\n",
        "github" + "_pat_" + _rand(_ALNUM, 22) + "_" + _rand(_ALNUM, 59),
        "github-token",
        "export GITHUB_PAT=",
    )
    add(
        "gitlab",
        'client = Gitlab(url, private_token="@@")\n',
        "gl" + "pat-" + _rand(_ALNUM + "_-", 20),
        "gitlab-token",
        "private_token=",
    )
    add(
        "slack-token",
        "const slack = new WebClient('@@');\n",
        "xo" + "xb-" + _rand(string.digits, 12) + "-" + _rand(string.digits, 13) + "-" + _rand(_ALNUM, 24),
        "slack-token",
        "new WebClient(",
    )
    add(
        "slack-webhook",
        'WEBHOOK = "@@"\nrequests.post(WEBHOOK, json=payload)\n',
        "https://hooks.slack.com/services/T"
        + _rand(_UPPER_DIGITS, 8)
        + "/B"
        + _rand(_UPPER_DIGITS, 10)
        + "/"
        + _rand(_ALNUM, 24),
        "slack-webhook",
        "requests.post(WEBHOOK",
    )
    add(
        "stripe",
        "stripe.api_key = '@@'\n",
        "sk" + "_live_" + _rand(_ALNUM, 24),
        "stripe-key",
        "stripe.api_key = ",
    )
    add(
        "openai-project",
        'client = OpenAI(api_key="@@")\n',
        "sk" + "-proj-" + _rand(_ALNUM + "_-", 48),
        "openai-key",
        "client = OpenAI(",
    )
    add(
        "openai-legacy",
        "OPENAI_API_KEY=@@\n",
        "sk" + "-" + _rand(_ALNUM, 20) + "T3Blbk" + "FJ" + _rand(_ALNUM, 20),
        "openai-key",
        "OPENAI_API_KEY=",
    )
    add(
        "google-api-key",
        "const mapsKey = `@@`;\nloadMaps(mapsKey);\n",
        "AI" + "za" + _rand(_ALNUM + "_-", 35),
        "google-api-key",
        "loadMaps(mapsKey);",
    )
    jwt = ".".join(
        [
            _b64url({"alg": "HS256", "typ": "JWT"}),
            _b64url({"sub": _rand(string.digits, 10), "name": "svc", "iat": 1700000000}),
            _rand(_ALNUM + "_-", 43),
        ]
    )
    add("jwt", "curl -H 'X-Session: @@' https://api.internal/v1/me\n", jwt, "jwt", "curl -H 'X-Session: ")
    add(
        "auth-header",
        'curl -H "Authorization: Basic @@" https://ci.internal/api\n',
        base64.b64encode(("deploy:" + _rand(_ALNUM, 16)).encode()).decode(),
        "auth-header",
        'curl -H "Authorization: Basic ',
    )
    add(
        "sendgrid",
        "SENDGRID = '@@'\n",
        "SG" + "." + _rand(_ALNUM + "_-", 22) + "." + _rand(_ALNUM + "_-", 43),
        "sendgrid-key",
        "SENDGRID = ",
    )
    add(
        "npm",
        "//registry.npmjs.org/:_authToken=@@\nalways-auth=true\n",
        "np" + "m_" + _rand(_ALNUM, 36),
        "npm-token",
        "always-auth=true",
    )
    add(
        "pypi",
        "[pypi]\nusername = __token__\npassword = @@\n",
        "py" + "pi-AgEIcHlwaS5vcmc" + _rand(_ALNUM + "_-", 80),
        "pypi-token",
        "username = __token__",
    )
    add(
        "twilio",
        'TWILIO_API_KEY_SID = "@@"\n',
        "S" + "K" + _rand(_HEX, 32),
        "twilio-key",
        "TWILIO_API_KEY_SID = ",
    )
    add(
        "azure-storage",
        'CONN = "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=@@;EndpointSuffix=core.windows.net"\n',
        _rand(_B64, 86) + "==",
        "azure-storage-key",
        "AccountName=acme;AccountKey=",
    )
    pw = "Tr0-" + _rand(_ALNUM + "!^-_", 14)
    add("password-yaml", "database:\n  host: db\n  password: @@\n  port: 5432\n", pw, "password", "  password: ")
    add("password-yaml-upper", "env:\n  PASSWORD: '@@'\n", pw, "password", "  PASSWORD: ")
    add("password-env", "DB_HOST=db\nDB_PASS=@@\nDB_PORT=5432\n", pw, "password", "DB_PASS=")
    add("password-json", '{\n  "user": "svc",\n  "api_key": "@@"\n}\n', pw, "secret", '"api_key": ')
    add("password-python", "SECRET_KEY = '@@'\nDEBUG = False\n", pw, "secret", "SECRET_KEY = ")
    add("password-annotated", 'password: str = "@@"\n', pw, "password", "password: str = ")
    add("passwd-ini", "[db]\npasswd = @@\n", pw, "password", "passwd = ")
    add("pwd-kwarg", 'conn = connect(user="svc", pwd="@@")\n', pw, "password", 'user="svc", pwd=')
    add("client-secret", "  clientSecret: '@@',\n", pw, "secret", "clientSecret: ")
    add("auth-token-go", 'authToken := "@@"\n', pw, "secret", "authToken := ")
    add("access-key-php", "'access_key' => '@@',\n", pw, "secret", "'access_key' => ")
    add("token-query", 'url = "https://api.acme.io/v2/items?token=@@&page=2"\n', pw, "secret", "&page=2")
    add(
        "url-credentials",
        'DATABASE_URL = "postgres://app:@@@db.internal:5432/app"\n',
        pw,
        "url-credentials",
        "postgres://app:",
    )
    add(
        "high-entropy-hex",
        'CACHE_SEED = "@@"\n',
        _rand(_HEX, 40),
        "high-entropy-string",
        "CACHE_SEED = ",
    )
    add(
        "high-entropy-base64",
        "blob:\n  material: @@\n",
        "Qx7" + _rand(_B64, 37),
        "high-entropy-string",
        "  material: ",
    )
    putty = "PuTTY-User-Key-File-2: ssh-rsa\nEncryption: none\nPrivate-Lines: 1\n"
    putty += _rand(_B64, 64) + "\nPrivate-MAC: " + _rand(_HEX, 40)
    add("putty", "key:\n@@\nafter\n", putty, "private-key", "after")
    return out


SAMPLES = _samples()


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_planted_secret_is_redacted(sample: Sample) -> None:
    spans = find_secrets(sample.text)
    out = redact(sample.text, spans)

    assert sample.secret not in out
    assert sample.kind in {r.kind for r in spans}, spans
    assert sample.context in out
    assert f"<redacted-{sample.kind}>" in out
    if not sample.multiline:
        assert out.count("\n") == sample.text.count("\n")
        # Only the secret's own line changes.
        changed = [a for a, b in zip(sample.text.splitlines(), out.splitlines(), strict=True) if a != b]
        assert len(changed) == 1
    assert find_secrets(out) == []


def test_redaction_is_idempotent_on_all_samples() -> None:
    text = "\n\n".join(s.text for s in SAMPLES)
    spans = find_secrets(text)
    out = redact(text, spans)
    assert find_secrets(out) == []
    assert redact(out, find_secrets(out)) == out
    for sample in SAMPLES:
        assert sample.secret not in out


def test_spans_are_sorted_non_overlapping_and_deterministic() -> None:
    text = "\n".join(s.text for s in SAMPLES)
    spans = find_secrets(text)
    assert spans == sorted(spans)
    assert all(a.end <= b.start for a, b in pairwise(spans))
    assert all(r.start < r.end for r in spans)
    assert find_secrets(text) == spans


def test_quoted_strings_are_found_as_the_single_quoted_rule_finds_them() -> None:
    """The high-entropy rule for quoted strings is searched one quote at a time (faster): on text dense with quotes of
    every kind, runs of every length and nested or unclosed quotes, the spans are those of the one pattern."""
    from pipelines.dataset import secrets

    rng = random.Random(5)
    pieces_of = ['"', "'", "`", "a", "Z", "9", "+", "/", "=", "_", "-", " ", "\n", "é", "."]
    lengths = [5, 19, 20, 21, 40]  # runs around the rule's least length
    for _ in range(400):
        text = "".join(
            rng.choice(pieces_of) if rng.random() < 0.4 else _rand(_ALNUM + "+/=_-", rng.choice(lengths), rng)
            for _ in range(rng.randrange(1, 60))
        )
        one = [m.span(2) for m in secrets._HE_QUOTED.finditer(text)]
        each = sorted(m.span(1) for pattern in secrets._HE_QUOTED_EACH for m in pattern.finditer(text))
        assert each == one, text


def test_overlapping_detections_merge_into_the_earliest() -> None:
    token = "gh" + "p_" + _rand(_ALNUM, 36, random.Random(1))
    value = "Zq8-" + token
    text = f'db_password = "{value}"\n'
    spans = find_secrets(text)
    assert spans == [Redaction(text.index(value), text.index(value) + len(value), "password")]
    assert redact(text, spans) == 'db_password = "<redacted-password>"\n'


def test_redact_merges_overlapping_input_spans() -> None:
    text = "0123456789abcdefghij"
    spans = [Redaction(5, 15, "b"), Redaction(2, 8, "a"), Redaction(15, 17, "c")]
    assert redact(text, spans) == "01<redacted-a><redacted-c>hij"


def test_same_span_keeps_the_specific_kind() -> None:
    key = "sk" + "-proj-" + _rand(_ALNUM, 40, random.Random(2))
    spans = find_secrets(f'OPENAI_API_KEY = "{key}"\n')
    assert [r.kind for r in spans] == ["openai-key"]


def test_unterminated_private_key_redacts_its_material_but_not_the_code_after() -> None:
    block, body = _pem("EC " + "PRIVATE KEY", rng=random.Random(3))
    text = "x = 1\n" + block.rsplit("\n", 1)[0] + "\ntrailing = True\n"
    out = redact(text, find_secrets(text))
    assert out == "x = 1\n<redacted-private-key>\ntrailing = True\n"
    assert not any(line in out for line in body.splitlines())


def test_unterminated_key_inside_an_escaped_string_stops_at_the_line_end() -> None:
    marker = "PuTTY-User-" + "Key-File-2: ssh-rsa"
    text = f'SAMPLE = "{marker}\\nEncryption: none\\n" + payload\n\ndef important():\n    return 42\n'
    out = redact(text, find_secrets(text))
    assert out.endswith("\n\ndef important():\n    return 42\n") and marker not in out


def test_encrypted_private_key_block() -> None:
    block, _ = _pem("ENCRYPTED " + "PRIVATE KEY", rng=random.Random(4))
    text = f'PEM = b"""{block}"""\nprint(PEM)\n'
    out = redact(text, find_secrets(text))
    assert out == 'PEM = b"""<redacted-private-key>"""\nprint(PEM)\n'


ORDINARY_CODE = """\
import os
import logging
from dataclasses import dataclass, field
from typing import Optional

import requests
from packaging.version import Version

__version__ = "2.14.0rc1"
log = logging.getLogger(__name__)
DOCS_URL = "https://docs.example.org/guide/installation.html#configuring-the-client"
REQUEST_ID = "3f2b8c1e-9a4d-4e7f-b6c2-1d0e5f7a8b9c"
PEM_MARKER = "-----BEGIN " + "PRIVATE KEY-----"


@dataclass
class Settings:
    password: Optional[str] = None
    api_key: str = ""
    token_url: str = "https://auth.example.com/oauth2/token"
    secret_name: str = "prod/database/credentials"
    retries: int = field(default=3)


def connect(settings: Settings) -> requests.Session:
    password = settings.password or os.environ["DB_PASSWORD"]
    token = os.getenv("GITHUB_TOKEN")
    api_key = get_api_key(settings)
    session = requests.Session()
    session.auth = ("svc", password)
    session.headers["Authorization"] = f"Bearer {token}"
    log.info("connected with %s", Version(__version__))
    if line.startswith(PEM_MARKER):
        raise ValueError("refusing to read keys from %s" % DOCS_URL)
    return session, api_key


def tokenize(text, max_tokens=512, pad_token="<pad>", secret=None):
    return [t for t in text.split() if t][:max_tokens]
---
// frontend/src/api.js
import { useState, useEffect } from "react";
import axios from "axios";

const API_BASE = "https://api.example.com/v1";
export function useLogin() {
  const [password, setPassword] = useState("");
  const token = localStorage.getItem("access_token");
  const config = { headers: { "X-Api-Key": process.env.REACT_APP_API_KEY } };
  return axios.post(`${API_BASE}/login`, { password: password, token }, config);
}
---
# deploy/values.yaml
image:
  repository: registry.internal/team/app
  tag: v1.8.3
database:
  host: postgres.default.svc.cluster.local
  user: app
  password: ${DB_PASSWORD}
  passwordSecretRef: db-credentials
  token: changeme
  apiKey: <your-api-key>
  dsn: postgres://app:${DB_PASSWORD}@postgres:5432/app
replicaCount: 2
"""


def test_ordinary_code_has_no_redactions() -> None:
    assert find_secrets(ORDINARY_CODE) == []


@pytest.mark.parametrize(
    "line",
    [
        "password = get_password()",
        "password = self._password",
        "token = None",
        'secret = ""',
        "PASSWORD = os.environ['PASSWORD']",
        "api_key: ${API_KEY}",
        'password = "<password>"',
        "password = user_password",
        "DB_PASS=changeme",
        "pwd = abc",
        "bypass = 'ABCdef123456'",
        "connect(password=password)",
        "token: Token",
    ],
)
def test_obvious_non_secrets_are_ignored(line: str) -> None:
    assert find_secrets(line + "\n") == []


def test_the_one_pass_prefilter_finds_exactly_what_every_regex_finds() -> None:
    """Hyperscan says which patterns may match; the Python regexes run only for those: same spans, always."""
    prefilter = Prefilter()
    texts = [s.text for s in SAMPLES] + [ORDINARY_CODE, "nothing here\n", ""]
    for text in texts:
        hits = prefilter.hits(text.encode())
        assert hits is not None  # all ASCII
        assert find_secrets(text, hits) == find_secrets(text), text[:80]
    assert prefilter.hits(b"def add(a, b):\n    return a + b\n") == frozenset()  # no regex runs at all


# Characters that trip naive byte scanning: letters that are not ASCII (one folds to an ASCII letter when lowered,
# others match ASCII letters case-insensitively), spaces, a line separator, marks, digits of other scripts, emoji,
# and the ASCII separators \x1c-\x1f (Python's \s accepts them, Hyperscan's does not).
_OTHER_CHARS = "éüßÅ\u212a\u017f\u0130\u0131\u00a0\u2028\u3000\u0085日本語€😀\u0301²٣ｋ\u00b5\x1c\x1f"


def _sprinkled(text: str, rng: random.Random) -> str:
    """``text`` with characters of ``_OTHER_CHARS`` put in at random places (some next to the secret)."""
    chars = list(text)
    for _ in range(rng.randint(1, 6)):
        chars.insert(rng.randint(0, len(chars)), rng.choice(_OTHER_CHARS) * rng.randint(1, 3))
    return "".join(chars)


def test_the_prefilter_finds_exactly_what_every_regex_finds_in_text_that_is_not_ascii() -> None:
    """Such a file is scanned as its ASCII stand-in: still the same spans as running every regex, including
    secrets whose text holds such characters or whose key only becomes one when lowered (Kelvin sign)."""
    prefilter = Prefilter(standins_from=0)
    rng = random.Random(7)
    texts = [_sprinkled(s.text, rng) for s in SAMPLES for _ in range(4)]
    texts += [s.text.replace(s.secret, _sprinkled(s.secret, rng)) for s in SAMPLES]
    kelvin = "api_\u212aey = 'Zq8vN2xLp4Rt7Wm1'\n"  # a credential only once lowered (K becomes k)
    texts += [kelvin, "PASSWORD=\u00e9t\u00e9Secret99\n", "token: 'ab\u00a0cdefghij'\n"]
    token = "AK" + "C" + _rand(_ALNUM, 12, rng)
    texts += [f"(\x1c{token}\n", f"={token}\x1c\n", "//r/:_auth" + "Token=\x1cnpm_x\n"]  # \s before or after
    texts += [_sprinkled(ORDINARY_CODE, rng) for _ in range(20)]
    scanned = 0
    for text in texts:
        hits = prefilter.hits(text.encode(), text)
        scanned += hits is not None
        assert find_secrets(text, hits) == find_secrets(text), text[:80]
    assert scanned == len(texts)  # every one of these characters has a stand-in: no file falls back to every regex
    assert [r.kind for r in find_secrets(kelvin)] == ["secret"]
    # By default the first few such files of a process run every regex: a one-file update skips the set-up.
    default = Prefilter()
    answers = [default.hits(text.encode()) for text in texts[:9]]
    assert answers[:7] == [None] * 7 and None not in answers[7:]


def test_a_pattern_the_stand_ins_cannot_reason_about_runs_every_regex(monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer detect-secrets with a regex construct unknown to the stand-ins: such files run every regex, no crash."""

    def unsupported(scanned: object) -> None:
        raise UnsupportedPattern("no stand-in rule for regex construct GROUPREF_EXISTS")

    monkeypatch.setattr(prefilter_module, "Standins", unsupported)
    prefilter = Prefilter(standins_from=0)
    assert prefilter.hits("password = 'caf\u00e9'\n".encode()) is None
    assert prefilter.hits(b"def add(a, b):\n    return a + b\n") == frozenset()


def _piece_expression(node: tuple) -> str:
    """A one-character piece from Python's regex parser, written for Hyperscan (its members are ASCII)."""
    op, value = node
    categories = {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s"}
    categories |= {"CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W"}
    if str(op) == "LITERAL":
        return f"\\x{value:02x}"
    if str(op) == "NOT_LITERAL":
        return f"[^\\x{value:02x}]"
    if str(op) == "ANY":
        return "."
    members, negate = [], ""
    for kind, item in value:
        if str(kind) == "NEGATE":
            negate = "^"
        elif str(kind) == "LITERAL":
            members.append(f"\\x{item:02x}")
        elif str(kind) == "RANGE":
            members.append(f"\\x{item[0]:02x}-\\x{item[1]:02x}")
        else:
            members.append(categories[str(item)])
    return f"[{negate}{''.join(members)}]"


def test_each_piece_reads_every_ascii_byte_as_hyperscan_does() -> None:
    """The stand-ins are chosen from how each piece of each pattern reads an ASCII byte in the prefilter; that
    reading must be Hyperscan's own (it is not Python's: \\s and \\x1c)."""
    import hyperscan

    found = pieces(SCANNED)
    scans = Standins(SCANNED).scan_patterns
    assert len(found) == len(scans) > 100
    for (node, flags, caseless, _), scan in zip(found, scans, strict=True):
        extra = (hyperscan.HS_FLAG_CASELESS if caseless else 0) | (hyperscan.HS_FLAG_DOTALL if flags & re.S else 0)
        database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        database.compile(expressions=[f"^{_piece_expression(node)}$".encode()], ids=[0], flags=[extra])
        for byte in range(128):
            hit: set[int] = set()
            database.scan(bytes([byte]), match_event_handler=_note_match, context=hit)
            assert bool(hit) == (scan.fullmatch(chr(byte)) is not None), (node, byte)


def test_the_prefilter_lets_every_lookaround_and_back_reference_pass() -> None:
    """The stand-ins leave lookarounds and back references out: Hyperscan's prefilter mode lets them pass."""
    import hyperscan

    flags = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH
    cases = [(rb"(?<![a-z])hf_", b"ahf_"), (rb"ab(?!c)", b"abc"), (rb"ab(?=c)", b"abd"), (rb"(?<=x)ab", b"yab")]
    cases += [(rb"(['\"])x\1", b"'x\""), (rb"^(.)\1*$", b"ab")]  # a back reference that does not hold
    for pattern, data in cases:
        database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        database.compile(expressions=[pattern], ids=[0], flags=[flags])
        found: set[int] = set()
        database.scan(data, match_event_handler=_note_match, context=found)
        assert found, pattern


def _note_match(pattern_id: int, start: int, end: int, flags: int, found: set[int]) -> None:
    found.add(pattern_id)


def test_stand_ins_are_what_asking_every_piece_gives() -> None:
    """The stand-ins ask only the pieces a character can match; asking every piece chooses the same bytes."""
    from pipelines.dataset.standins import _BYTES, _compiled

    found = pieces(SCANNED)
    standins = Standins(SCANNED)
    python = [_compiled(node, flags) for node, flags, _, _ in found]
    scans = standins.scan_patterns
    chars = [chr(c) for c in (*range(0x1C, 0x20), *range(0x80, 0xD800, 7), *range(0xE000, 0x110000, 4099))]
    for char in [*chars, "\u212a", "\u017f", "\u0130", "\u0131", "\u00df", "\ufb00"]:
        lowered = char.lower()
        views = [char, lowered] if len(lowered) == 1 else [char]
        word = {re.match(r"\w", v) is not None for v in views}
        must = [
            i
            for i, (_, _, _, on_lower) in enumerate(found)
            if any(python[i].fullmatch(v) for v in (views if on_lower else [char]))
        ]
        expected = None
        if len(word) == 1:
            expected = next(
                (
                    b
                    for b in _BYTES
                    if all(scans[i].fullmatch(b) for i in must) and (re.match(r"\w", b) is not None) in word
                ),
                None,
            )
        assert standins.standin(char) == expected, hex(ord(char))
