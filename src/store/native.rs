//! A sparse exponential latency histogram in Prometheus's native-histogram
//! schema: bucket `i` of schema `s` holds the values in
//! `(2^((i-1)/2^s), 2^(i/2^s)]` seconds, so at the default schema 3 each
//! bucket is 2^(1/8) ≈ 9% wider than the last and a quantile read from it
//! is off by a few percent at most, whatever its magnitude.
//!
//! Only populated buckets are kept, as `(index, count)` pairs of 8 bytes,
//! sorted by index. A tenant's latencies span a few decades, i.e. tens of
//! buckets; the count is capped at [`NATIVE_MAX_BUCKETS`]: past it the
//! histogram halves its resolution (schema − 1, pairs of buckets merged), as
//! client_golang does with `NativeHistogramMaxBucketNumber`. The counts are
//! cumulative since start and never reset (a reset would read as a counter
//! reset to `rate()`).
//!
//! The index arithmetic follows client_golang's `prometheus/histogram.go`
//! (written anew): `i = ceil(log2(v) · 2^s)`, corrected at the exact bucket
//! boundaries, and reduction maps `i` to `ceil(i / 2)`.

/// The schema a histogram starts at: growth factor 2^(1/8).
pub const NATIVE_SCHEMA: i8 = 3;
/// The coarsest schema reduction goes to (growth factor 2^16), as
/// Prometheus allows.
pub const NATIVE_MIN_SCHEMA: i8 = -4;
/// Populated buckets kept per histogram before its resolution is halved:
/// 160 at schema 3 cover 2^20 (six decades) — wider than any one tenant's
/// latencies — and cost at most 1,280 bytes.
pub const NATIVE_MAX_BUCKETS: usize = 160;
/// Values at or below this (in seconds) count in the zero bucket:
/// client_golang's default, 2^-128.
pub const NATIVE_ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// A native histogram of durations in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeHistogram {
    schema: i8,
    /// Observations at or below [`NATIVE_ZERO_THRESHOLD`].
    zero: u32,
    /// Populated buckets, ascending by index. An index fits `i16` at any
    /// schema ≤ 3: a finite `f64` above the zero threshold is within
    /// 2^±1024, i.e. |i| ≤ 8192.
    buckets: Vec<(i16, u32)>,
}

impl Default for NativeHistogram {
    fn default() -> Self {
        NativeHistogram {
            schema: NATIVE_SCHEMA,
            zero: 0,
            buckets: Vec::new(),
        }
    }
}

/// The bucket index of `seconds` (above the zero threshold) at `schema`.
pub fn bucket_index(seconds: f64, schema: i8) -> i32 {
    let scale = f64::powi(2.0, i32::from(schema));
    let mut index = (seconds.log2() * scale).ceil() as i32;
    // log2 is not exact: move to the bucket whose bounds hold the value.
    if upper_bound(index, schema) < seconds {
        index += 1;
    } else if upper_bound(index - 1, schema) >= seconds {
        index -= 1;
    }
    index
}

/// The upper bound of bucket `index` at `schema`, in seconds.
pub fn upper_bound(index: i32, schema: i8) -> f64 {
    (f64::from(index) / f64::powi(2.0, i32::from(schema))).exp2()
}

impl NativeHistogram {
    pub fn schema(&self) -> i8 {
        self.schema
    }

    pub fn zero_count(&self) -> u32 {
        self.zero
    }

    /// Populated buckets, ascending by index.
    pub fn buckets(&self) -> impl Iterator<Item = (i32, u32)> + '_ {
        self.buckets.iter().map(|&(i, c)| (i32::from(i), c))
    }

    /// A histogram from its parts as [`Self::schema`], [`Self::zero_count`]
    /// and [`Self::buckets`] gave them (another replica's, read back from
    /// Redis): `None` unless the schema is one a histogram can have, the
    /// indexes ascend strictly within range, every count is positive and
    /// there are at most [`NATIVE_MAX_BUCKETS`].
    pub fn from_parts(schema: i8, zero: u32, buckets: Vec<(i16, u32)>) -> Option<NativeHistogram> {
        let ascending = buckets.windows(2).all(|pair| pair[0].0 < pair[1].0);
        let valid = (NATIVE_MIN_SCHEMA..=NATIVE_SCHEMA).contains(&schema)
            && buckets.len() <= NATIVE_MAX_BUCKETS
            && ascending
            && buckets
                .iter()
                .all(|&(index, count)| count > 0 && index.unsigned_abs() <= 8192);
        valid.then_some(NativeHistogram {
            schema,
            zero,
            buckets,
        })
    }

    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        u64::from(self.zero) + self.buckets.iter().map(|&(_, c)| u64::from(c)).sum::<u64>()
    }

    /// Heap bytes held (the histogram's own 32 bytes not counted).
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(i16, u32)>()
    }

    /// Adds `weight` observations of `seconds`. A sampled line's weight
    /// (`1/rate`) is rounded to a whole count; counts saturate at
    /// `u32::MAX` per bucket (years of a busy tenant's queries).
    pub fn observe(&mut self, seconds: f64, weight: f64) {
        let count = weight.round().clamp(1.0, f64::from(u32::MAX)) as u32;
        if seconds.is_nan() || seconds <= NATIVE_ZERO_THRESHOLD {
            // Zero, and anything that is not a positive number.
            self.zero = self.zero.saturating_add(count);
            return;
        }
        self.add(bucket_index(seconds, self.schema), count);
    }

    /// Adds `count` to bucket `index` (at this histogram's schema),
    /// halving the resolution while there are too many buckets.
    fn add(&mut self, index: i32, count: u32) {
        let key = index.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        match self.buckets.binary_search_by_key(&key, |&(i, _)| i) {
            Ok(at) => self.buckets[at].1 = self.buckets[at].1.saturating_add(count),
            Err(at) => {
                // Exactly one more: the vector is a tenant's resident
                // memory, and new buckets are rare once it has warmed up.
                self.buckets.reserve_exact(1);
                self.buckets.insert(at, (key, count));
                while self.buckets.len() > NATIVE_MAX_BUCKETS && self.schema > NATIVE_MIN_SCHEMA {
                    self.reduce_to(self.schema - 1);
                }
            }
        }
    }

    /// Lowers the resolution to `schema` (no-op unless coarser): bucket `i`
    /// becomes `ceil(i / 2^(s - schema))`.
    pub fn reduce_to(&mut self, schema: i8) {
        if schema >= self.schema {
            return;
        }
        let shift = u32::from(self.schema.abs_diff(schema));
        let mut merged: Vec<(i16, u32)> = Vec::with_capacity(self.buckets.len());
        for &(index, count) in &self.buckets {
            // ceil(i / 2^shift) for negative i as well.
            let key = -((-i32::from(index)) >> shift) as i16;
            match merged.last_mut() {
                Some((last, total)) if *last == key => *total = total.saturating_add(count),
                _ => merged.push((key, count)),
            }
        }
        merged.shrink_to_fit();
        self.buckets = merged;
        self.schema = schema;
    }

    /// Adds `other`'s observations, at the coarser of the two schemas.
    pub fn merge(&mut self, other: &NativeHistogram) {
        self.reduce_to(other.schema);
        let mut other = other.clone();
        other.reduce_to(self.schema);
        self.zero = self.zero.saturating_add(other.zero);
        for (index, count) in other.buckets() {
            self.add(index, count);
        }
    }

    /// What was observed since `older`, an earlier state of the same
    /// histogram (buckets that shrank, which only a restart explains,
    /// count as empty).
    pub fn since(&self, older: &NativeHistogram) -> NativeHistogram {
        let mut older = older.clone();
        older.reduce_to(self.schema);
        let mut now = self.clone();
        now.reduce_to(older.schema);
        let mut buckets = Vec::with_capacity(now.buckets.len());
        for &(index, count) in &now.buckets {
            let before = older
                .buckets
                .binary_search_by_key(&index, |&(i, _)| i)
                .map_or(0, |at| older.buckets[at].1);
            let delta = count.saturating_sub(before);
            if delta > 0 {
                buckets.push((index, delta));
            }
        }
        NativeHistogram {
            schema: now.schema,
            zero: now.zero.saturating_sub(older.zero),
            buckets,
        }
    }

    /// The `q` quantile, as Prometheus's `histogram_quantile` reads a
    /// native histogram: the bucket holding the rank, interpolated
    /// exponentially inside it (linearly in the zero bucket).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut cumulative = f64::from(self.zero);
        if cumulative >= rank && self.zero > 0 {
            return Some(NATIVE_ZERO_THRESHOLD * rank / cumulative);
        }
        for (index, count) in self.buckets() {
            let before = cumulative;
            cumulative += f64::from(count);
            if cumulative >= rank {
                let lower = upper_bound(index - 1, self.schema);
                let upper = upper_bound(index, self.schema);
                let fraction = (rank - before) / f64::from(count);
                return Some(lower * (upper / lower).powf(fraction));
            }
        }
        self.buckets
            .last()
            .map(|&(index, _)| upper_bound(i32::from(index), self.schema))
    }

    /// The positive buckets as Prometheus's protobuf wants them: spans of
    /// consecutive indexes (`(offset from the last span's end, length)`)
    /// and each count as the difference from the previous one. A
    /// histogram with no positive bucket gets one empty span, so that a
    /// scraper still reads it as native (client_golang does the same).
    pub fn spans_and_deltas(&self) -> (Vec<(i32, u32)>, Vec<i64>) {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::with_capacity(self.buckets.len());
        let (mut next, mut previous) = (None::<i32>, 0i64);
        for (index, count) in self.buckets() {
            match (next, spans.last_mut()) {
                (Some(expected), Some((_, length))) if expected == index => *length += 1,
                _ => spans.push((index - next.unwrap_or(0), 1)),
            }
            next = Some(index + 1);
            deltas.push(i64::from(count) - previous);
            previous = i64::from(count);
        }
        if spans.is_empty() {
            spans.push((0, 0));
        }
        (spans, deltas)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn indexes_follow_prometheus_bounds_exactly_at_the_edges() {
        // 1 s is the upper bound of bucket 0 at every schema.
        assert_eq!(bucket_index(1.0, 3), 0);
        assert_eq!(bucket_index(1.0 + 1e-12, 3), 1);
        assert_eq!(bucket_index(2.0, 3), 8);
        assert_eq!(bucket_index(0.5, 3), -8);
        assert_eq!(bucket_index(0.5, 0), -1);
        assert_eq!(bucket_index(0.75, 0), 0);
        for schema in [-4i8, -1, 0, 1, 3] {
            for i in -200..200 {
                let upper = upper_bound(i, schema);
                if upper.is_finite() && upper > NATIVE_ZERO_THRESHOLD {
                    assert_eq!(bucket_index(upper, schema), i, "{upper} at {schema}");
                    let inside = upper_bound(i - 1, schema) * 1.000_000_01;
                    assert_eq!(bucket_index(inside, schema), i, "{inside} at {schema}");
                }
            }
        }
    }

    #[test]
    fn reduction_merges_pairs_of_buckets_like_a_coarser_schema() {
        let mut h = NativeHistogram::default();
        let values: Vec<f64> = (0..400).map(|i| 1e-4 * 1.05f64.powi(i)).collect();
        for v in &values {
            h.observe(*v, 1.0);
        }
        assert!(h.buckets.len() <= NATIVE_MAX_BUCKETS);
        assert!(h.schema() < NATIVE_SCHEMA, "400 values over 8 decades");
        // Every value lands where a histogram born at that schema puts it.
        let mut direct = NativeHistogram {
            schema: h.schema(),
            ..NativeHistogram::default()
        };
        for v in &values {
            direct.observe(*v, 1.0);
        }
        assert_eq!(h, direct);
        assert_eq!(h.count(), 400);
    }

    #[test]
    fn merge_and_since_work_across_schemas() {
        let mut fine = NativeHistogram::default();
        let mut coarse = NativeHistogram {
            schema: 1,
            ..NativeHistogram::default()
        };
        for i in 1..50 {
            fine.observe(f64::from(i) * 0.01, 1.0);
            coarse.observe(f64::from(i) * 0.02, 2.0);
        }
        let before = fine.clone();
        fine.merge(&coarse);
        assert_eq!(fine.schema(), 1);
        assert_eq!(fine.count(), 49 + 98);
        let delta = fine.since(&before);
        assert_eq!(delta, coarse);
        assert_eq!(before.since(&before).count(), 0);
    }

    #[test]
    fn quantiles_of_a_log_normal_are_within_a_few_percent() {
        // Deterministic log-normal quantiles: p = (k + 0.5) / n.
        let n = 20_000;
        for median in [0.0005, 0.003, 0.04, 0.7, 4.0] {
            let mut h = NativeHistogram::default();
            for k in 0..n {
                let z = inverse_normal((f64::from(k) + 0.5) / f64::from(n));
                h.observe(median * (z * 0.8).exp(), 1.0);
            }
            let truth = median * (1.644_853_6f64 * 0.8).exp();
            let p95 = h.quantile(0.95).unwrap();
            assert!((p95 / truth - 1.0).abs() < 0.02, "{p95} vs {truth}");
        }
    }

    /// Acklam's rational approximation (|error| < 1.2e-9), for the test.
    fn inverse_normal(p: f64) -> f64 {
        let a = [
            -39.696_830_286_653_76,
            220.946_098_424_520_5,
            -275.928_510_446_968_7,
            138.357_751_867_269,
            -30.664_798_066_147_16,
            2.506_628_277_459_239,
        ];
        let b = [
            -54.476_098_798_224_06,
            161.585_836_858_040_9,
            -155.698_979_859_886_6,
            66.801_311_887_719_72,
            -13.280_681_552_885_72,
        ];
        let c = [
            -0.007_784_894_002_430_293,
            -0.322_396_458_041_136_4,
            -2.400_758_277_161_838,
            -2.549_732_539_343_734,
            4.374_664_141_464_968,
            2.938_163_982_698_783,
        ];
        let d = [
            0.007_784_695_709_041_462,
            0.322_467_129_070_039_8,
            2.445_134_137_142_996,
            3.754_408_661_907_416,
        ];
        let tail = |q: f64| {
            (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
                / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
        };
        if p < 0.02425 {
            tail((-2.0 * p.ln()).sqrt())
        } else if p > 1.0 - 0.02425 {
            -tail((-2.0 * (1.0 - p).ln()).sqrt())
        } else {
            let q = p - 0.5;
            let r = q * q;
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
                / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
        }
    }

    /// What a tenant's histogram costs (docs/metrics.md): 100,000
    /// log-normal latencies, sigma 0.5 and 1, and the cap whatever comes.
    #[test]
    fn a_tenants_histogram_stays_small() {
        let n = 100_000;
        for (sigma, most) in [(0.5, 52), (1.0, 104)] {
            let mut h = NativeHistogram::default();
            for k in 0..n {
                let z = inverse_normal((f64::from(k) + 0.5) / f64::from(n));
                h.observe(0.02 * (z * sigma).exp(), 1.0);
            }
            let buckets = h.buckets().count();
            assert_eq!(h.schema(), NATIVE_SCHEMA);
            assert!(buckets <= most, "sigma {sigma}: {buckets} buckets");
            assert_eq!(h.heap_bytes(), buckets * 8, "no spare capacity");
        }
        let mut wild = NativeHistogram::default();
        for i in 0..100_000 {
            wild.observe(1e-9 * 1.001f64.powi(i), 1.0);
        }
        assert!(wild.heap_bytes() <= NATIVE_MAX_BUCKETS * 8);
    }

    #[test]
    fn spans_and_deltas_encode_gaps_and_empty_histograms() {
        let mut h = NativeHistogram::default();
        for (v, w) in [(1.0, 2.0), (1.05, 1.0), (2.0, 5.0), (0.0, 1.0)] {
            h.observe(v, w);
        }
        // Buckets 0 (2), 1 (1), 8 (5); one in the zero bucket.
        assert_eq!(h.zero_count(), 1);
        let (spans, deltas) = h.spans_and_deltas();
        assert_eq!(spans, [(0, 2), (6, 1)]);
        assert_eq!(deltas, [2, -1, 4]);
        let (spans, deltas) = NativeHistogram::default().spans_and_deltas();
        assert_eq!((spans, deltas), (vec![(0, 0)], vec![]));
    }
}
