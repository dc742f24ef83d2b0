"""The repository's own identifiers: ast rules for Python, token rules for the rest, and line usage."""

from __future__ import annotations

from pipelines.evaluate.identifiers import (
    DefinitionIndex,
    defined_in_line,
    definitions,
    is_candidate,
    python_definitions,
)

PYTHON = """
import os
from typing import TYPE_CHECKING

ACME_TIMEOUT = 30
ledger_cache: dict = {}
first_ledger, second_ledger = None, None


class LedgerClient:
    retry_budget = 3

    def open_session(self, account_id):
        local_session_name = account_id
        return local_session_name

    class InnerCursor:
        pass


def acme_fetch_ledger(client, table_name):
    def nested_helper():
        return 1
    return nested_helper()


async def acme_post_invoice(client):
    return None


if TYPE_CHECKING:
    conditional_export = 1
else:
    try:
        fallback_parser = os.path
    except ImportError:
        fallback_parser = None

for loop_variable_name in range(3):
    pass
"""


def test_python_definitions_cover_module_and_class_level_names_but_not_locals() -> None:
    names = python_definitions(PYTHON)
    assert names is not None
    for expected in (
        "ACME_TIMEOUT",
        "ledger_cache",
        "first_ledger",
        "second_ledger",
        "LedgerClient",
        "retry_budget",
        "open_session",
        "InnerCursor",
        "acme_fetch_ledger",
        "acme_post_invoice",
        "conditional_export",
        "fallback_parser",
    ):
        assert expected in names, expected
    for local in ("local_session_name", "nested_helper", "account_id", "table_name", "client", "os"):
        assert local not in names, local


def test_python_that_does_not_parse_falls_back_to_token_rules() -> None:
    broken = "def acme_broken_thing(:\n    pass\nclass HalfWritten\n"
    assert python_definitions(broken) is None
    assert {"acme_broken_thing", "HalfWritten"} <= definitions(broken, "python")


def test_token_rules_find_definitions_in_other_languages() -> None:
    go = (
        "package ledger\n\nfunc FetchLedger(id string) {}\n"
        "func (c *LedgerClient) PostInvoice() error {}\ntype LedgerRow struct {}\n"
    )
    assert {"FetchLedger", "PostInvoice", "LedgerRow"} <= definitions(go, "go")
    js = (
        "export function acmeFetchLedger(id) {}\nconst ledgerCache = new Map();\nlet pendingInvoices = [];\n"
        "class InvoiceQueue {}\nACME_REGION = 'eu';\n"
    )
    assert {"acmeFetchLedger", "ledgerCache", "pendingInvoices", "InvoiceQueue", "ACME_REGION"} <= definitions(
        js, "javascript"
    )
    rust = "pub fn settle_ledger() {}\nstruct LedgerEntry;\ntrait Settles {}\nenum Currency {}\n"
    assert {"settle_ledger", "LedgerEntry", "Settles", "Currency"} <= definitions(rust, "rust")
    java = "public class Billing {\n    public static int computeInvoiceTotal(int a) { return a; }\n}\n"
    assert {"Billing", "computeInvoiceTotal"} <= definitions(java, "java")
    # An indented assignment is a local in most languages: not a definition.
    assert "innerTotal" not in definitions("function f() {\n  innerTotal = 3;\n}\n", "javascript")


def test_keywords_builtins_short_and_common_names_are_never_internal() -> None:
    code = (
        "def print():\n    pass\nclass list:\n    pass\ndef run():\n    pass\nab = 1\ndef __init__(self):\n    pass\n"
    )
    assert definitions(code, "python") == set()
    js = "function function_() {}\nconst self = 1;\nlet data = 2;\nvar x = 3;\nfunction String() {}\n"
    assert definitions(js, "javascript") == {"function_"}
    for name in ("len", "print", "None", "self", "this", "return", "main", "config", "value", "abc", "__init__"):
        assert not is_candidate(name), name
    assert is_candidate("acme_fetch_ledger") and is_candidate("LedgerClient")


def test_names_defined_in_the_same_line_are_not_uses() -> None:
    assert defined_in_line("def acme_fetch_ledger(client):") >= {"acme_fetch_ledger"}
    assert defined_in_line("    ledger, extra_rows = acme_fetch_ledger(client)") >= {"ledger", "extra_rows"}
    assert "acme_fetch_ledger" not in defined_in_line("    ledger = acme_fetch_ledger(client)")
    assert defined_in_line("const acmeRegion = 'eu';") >= {"acmeRegion"}


def test_a_line_uses_internal_identifiers_defined_in_other_files() -> None:
    index = DefinitionIndex()
    index.add("acme/core.py", "class LedgerClient:\n    pass\n\ndef acme_fetch_ledger(c):\n    return c\n", "python")
    index.add("acme/util.py", "def acme_local_helper():\n    return 1\n", "python")
    index.add("web/api.js", "export function acmeRender(x) { return x; }\n", "javascript")
    line = "    rows = acme_fetch_ledger(LedgerClient(account_id))"
    assert index.internal_names(line, "services/sync.py") == ["acme_fetch_ledger", "LedgerClient"]
    # The file that defines a name does not "use an internal identifier" by calling it.
    assert index.internal_names("    acme_local_helper()", "acme/util.py") == []
    assert index.internal_names("    acme_local_helper()", "services/other.py") == ["acme_local_helper"]
    # Defining a name again in the line is not a use of it.
    assert index.internal_names("def acme_fetch_ledger(client):", "services/sync.py") == []
    # Builtins and unknown names never count, across languages.
    assert index.internal_names("    print(len(os.listdir(path)))", "services/sync.py") == []
    assert index.internal_names("  return acmeRender(props);", "web/page.js") == ["acmeRender"]


def test_names_that_most_files_define_are_too_common_to_count() -> None:
    index = DefinitionIndex()
    for number in range(12):
        index.add(
            f"pkg/mod{number}.py", f"shared_logger_name = 1\n\ndef special_{number}_thing():\n    pass\n", "python"
        )
    assert "shared_logger_name" in index.common
    assert index.internal_names("    shared_logger_name.info('x')", "pkg/new.py") == []
    assert index.internal_names("    special_3_thing()", "pkg/new.py") == ["special_3_thing"]
