#!/usr/bin/env python3
"""Parses Prometheus text exposition with the reference parser
(python3-prometheus-client) and prints every sample as
`name{label="v",...} value`, labels sorted; exits 1 with the parser's
complaint when the text does not parse, 2 when a family has no HELP/TYPE,
3 when a histogram's series (one per label set but le) has buckets that
go down, or a +Inf bucket that is not its _count."""
import sys

from prometheus_client.parser import text_string_to_metric_families


def histogram_error(fam):
    series = {}
    for s in fam.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        h = series.setdefault(key, {"buckets": [], "count": None})
        if s.name.endswith("_bucket"):
            h["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            h["count"] = s.value
    for key, h in series.items():
        b = sorted(h["buckets"])
        if not b or b[-1][0] != float("inf") or b[-1][1] != h["count"]:
            return "%s%s: +Inf bucket is not _count" % (fam.name, dict(key))
        if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
            return "%s%s: buckets go down" % (fam.name, dict(key))
    return None


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
        if fam.type == "histogram":
            err = histogram_error(fam)
            if err is not None:
                print(err)
                return 3
        for s in fam.samples:
            labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
            print("%s{%s} %g" % (s.name, labels, s.value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
