"""Schemathesis hooks for the console API (loaded by tests/schema/run.sh).

Rules that JSON Schema cannot state (the OpenAPI document says them in words): `from` must be
earlier than `to` (GET /stats, /usage); and on GET /usage, `days` goes without `from`/`to`, and
`group_by`'s pair must be one the rollups keep (not a dimension twice, not day with hour, the
user with the key and the day only, the hour with one other dimension at most). A generated
request that breaks one is refused with 400 on purpose, naming the rule, so that refusal is not
reported as "schema-valid request rejected".
On GET /stats and /usage-trend, `source` cannot be combined with `key_id` either (refused with 400
on purpose).
"""

from datetime import datetime

import schemathesis


def _instant(value):
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


# The messages of GET /usage's refusals for the rules above.
USAGE_RULES = (
    "give days or from/to, not both",
    "group_by names the same dimension twice",
    "group_by takes day or hour, not both",
    "user can be grouped and filtered only with",
    "hour goes with one other dimension at most",
)


@schemathesis.hook
def filter_failure(context, failure, case, response):
    query = case.query or {}
    if response.status_code == 400 and case.path == "/api/console/usage":
        if any(rule in response.text for rule in USAGE_RULES):
            return False
    # Both present (what counts as blank differs: Python strips U+001E, Rust's trim does not).
    if (response.status_code == 400 and query.get("source") is not None
            and query.get("key_id") is not None and "cannot be combined" in response.text):
        return False
    start, end = _instant(query.get("from", "")), _instant(query.get("to", ""))
    if response.status_code != 400 or start is None or end is None:
        return True
    try:
        broken = start >= end
    except TypeError:  # one with an offset, one without
        return True
    return not (broken and "from must be earlier than to" in response.text)
