#!/usr/bin/env python3
"""How far Prometheus' histogram_quantile(0.95, ...) lands from the true p95
for a bucket set, for log-normal query latencies (the usual shape of
database latency) whose true p95 sweeps 1 ms to 10 s.

    scripts/bucket-error.py                      # the default and the full set
    scripts/bucket-error.py 0.001 0.01 0.1 1     # any set, in seconds

For each decade of the true p95 it prints the median and worst relative
error, and the share of the decade within 10%, for spreads sigma 0.5 and 1
(the p95 is 2.3x and 5.2x the median). histogram_quantile interpolates
linearly inside a bucket, so the error grows with the ratio between bounds;
at a bound itself the answer is exact, which is why the default set has one
at the slow-query alert's 1 s threshold.
"""
import math
import sys
from statistics import NormalDist, median

DEFAULT = [0.001, 0.005, 0.025, 0.1, 0.25, 1, 5]
STORE = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


def histogram_quantile(bounds, mu, sigma, q=0.95):
    dist = NormalDist(mu, sigma)
    prev_bound, prev_cdf = 0.0, 0.0
    for bound in bounds:
        cdf = dist.cdf(math.log(bound))
        if cdf >= q:
            return prev_bound + (bound - prev_bound) * (q - prev_cdf) / (cdf - prev_cdf)
        prev_bound, prev_cdf = bound, cdf
    return bounds[-1]  # the quantile is in +Inf: Prometheus answers the top bound


def report(name, bounds):
    print(f"{name}: {bounds}")
    print(f"  {'true p95':>16} {'sigma':>5} {'median err':>10} {'worst err':>9} {'within 10%':>10}")
    for sigma in (0.5, 1.0):
        for decade in range(-3, 1):
            errors = []
            for i in range(100):
                p95 = 10 ** (decade + i / 100)
                mu = math.log(p95) - 1.6449 * sigma
                errors.append(abs(histogram_quantile(bounds, mu, sigma) - p95) / p95)
            span = f"{10**decade:g}-{10**(decade+1):g} s"
            within = sum(e < 0.10 for e in errors) / len(errors)
            print(f"  {span:>16} {sigma:>5} {median(errors):>9.0%} {max(errors):>9.0%} {within:>10.0%}")


if len(sys.argv) > 1:
    report("given", sorted(float(a) for a in sys.argv[1:]))
else:
    report("default metrics.latency_buckets", DEFAULT)
    report("all 15 store bounds", STORE)
