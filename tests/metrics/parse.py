#!/usr/bin/env python3
"""Parses Prometheus text exposition with the reference parser
(python3-prometheus-client) and prints every sample as
`name{label="v",...} value`, labels sorted; exits 1 with the parser's
complaint when the text does not parse, 2 when a family has no HELP/TYPE."""
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser's own error, whatever its type
        print("parse error: %s" % e)
        return 1
    for fam in families:
        if not fam.documentation or fam.type == "unknown":
            print("family %s lacks HELP or TYPE" % fam.name)
            return 2
        for s in fam.samples:
            labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
            print("%s{%s} %g" % (s.name, labels, s.value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
