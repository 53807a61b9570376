//! Encoding helpers shared by every collector: a family's descriptor, and
//! counters and gauges with typed label sets.

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Starts a metric family in a collector.
pub fn family<'a>(
    encoder: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    metric_type: MetricType,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, metric_type)
}

pub fn counter(
    encoder: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: f64,
) -> std::fmt::Result {
    let mut encoder = encoder.encode_family(labels)?;
    // Counts are whole numbers unless a sample rate made them fractional;
    // integers format several times faster.
    match super::text::whole(value) {
        Some(whole) => encoder.encode_counter::<NoLabelSet, _, u64>(&whole, None),
        None => encoder.encode_counter::<NoLabelSet, _, f64>(&value, None),
    }
}

pub fn gauge(
    encoder: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: f64,
) -> std::fmt::Result {
    encoder.encode_family(labels)?.encode_gauge(&value)
}

pub fn counter_u64(
    encoder: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: u64,
) -> std::fmt::Result {
    encoder
        .encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}
