"""Parses an OpenMetrics exposition with the reference Python parser (prometheus_client) and
prints each metric family as `name type`. Exits non-zero, with the parser's message, when the text
is not valid OpenMetrics. Used by the e2e tests: a parser Kappa did not write."""
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

text = sys.stdin.read()
try:
    for family in text_string_to_metric_families(text):
        print(family.name, family.type)
except Exception as error:  # the parser raises ValueError and friends
    print(f"invalid OpenMetrics text: {error}", file=sys.stderr)
    sys.exit(1)
