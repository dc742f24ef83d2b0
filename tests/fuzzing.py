"""Hostile request bodies for both HTTP APIs, and the settings of a bounded run (CI) or a long one (release).

``REPOPILOT_FUZZ_EXAMPLES`` sets how many examples each fuzz test tries (default 120 in CI; a release runs
e.g. 5000, see the README).
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("REPOPILOT_FUZZ_EXAMPLES", "120"))
RESPONSE_BOUND_S = 30.0  # every answer, however hostile the request, comes within this
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

LONE_SURROGATES = st.sampled_from(["\ud800", "\udfff", "x\udc00y", "\ud83d", "\ud83d\ude00"[1:]])
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=200),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=10), LONE_SURROGATES, st.text(max_size=10)),
    st.sampled_from(["", "\0", "def f(x):\n    return", "<|endoftext|>", "\r\n" * 50, "💥" * 30]),
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 0.5, 2.0000001]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(TEXT, inner, max_size=5)),
    max_leaves=20,
)


def bodies(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy[bytes]:
    """Bodies as a client would send them, mostly objects with the expected field names and hostile values,
    plus raw bytes: broken JSON, invalid UTF-8, deep nesting, constants JSON does not have."""
    named = st.fixed_dictionaries({}, optional={k: st.one_of(v, JSON) for k, v in fields.items()})
    objects = st.one_of(named, st.dictionaries(TEXT, JSON, max_size=6), JSON)
    raw = st.one_of(
        st.binary(max_size=300),
        st.integers(1, 200_000).map(lambda n: b"[" * n),
        st.integers(1, 200_000).map(lambda n: b'{"prompt":' * n),
        st.sampled_from([b"", b"{", b'{"prompt": NaN}', b'{"max_tokens": Infinity}', b"\xff\xfe{}", b"null",
                         b'{"prompt": "\\ud800"}', b'{"prompt": "a\\u0000b"}', b'{"stop": ["\\udfff"]}']),
    )  # fmt: skip
    return st.one_of(objects.map(lambda v: json.dumps(v).encode()), raw)
