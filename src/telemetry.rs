//! OpenTelemetry GenAI export (the optional `otel:` section): one client span per gateway call,
//! named `"{gen_ai.operation.name} {gen_ai.request.model}"` with the GenAI semantic-convention
//! attributes, and the `gen_ai.client.token.usage` and `gen_ai.client.operation.duration`
//! histograms, sent in batches over OTLP/HTTP (JSON) by the SDK's background threads.
//!
//! Recording a call only queues its span and adds to in-memory histograms; the export itself runs
//! off the request path, and an unreachable or failing collector only loses telemetry (the SDK
//! drops what it cannot send), never a call or its record.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use crate::config::{OtelConfig, ProviderConfig, ProviderKind};
use crate::error::StartError;
use crate::gateway::{Endpoint, Gateway};
use crate::usage::CallRecord;

/// The instrumentation scope and `service.name` of everything exported.
const SERVICE_NAME: &str = "token-console";
/// Longest time one export request may take before the SDK gives up on it.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bucket boundaries of `gen_ai.client.token.usage` (the semantic conventions' advice).
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// Bucket boundaries of `gen_ai.client.operation.duration`, in seconds (the conventions' advice).
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// The exporters of a running gateway with `otel:` configured.
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    tracer: SdkTracer,
    token_usage: Histogram<u64>,
    duration: Histogram<f64>,
}

impl Telemetry {
    /// Starts the span and metric exporters for `config` (no connection is made until the first
    /// batch is due).
    pub fn start(config: &OtelConfig) -> Result<Self, StartError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            StartError::Io(format!(
                "cannot start the OpenTelemetry {what} exporter for otel.endpoint {}: {e}",
                config.endpoint
            ))
        };
        let headers: HashMap<String, String> = config
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.expose().to_owned()))
            .collect();
        let interval = Duration::from_millis(config.export_interval_ms);
        let resource = Resource::builder().with_service_name(SERVICE_NAME).build();

        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(format!("{}/v1/traces", config.endpoint))
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(headers.clone())
            .build()
            .map_err(|e| failed("span", &e))?;
        let batches = BatchSpanProcessor::builder(spans)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(interval)
                    .build(),
            )
            .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_resource(resource.clone())
            .build();

        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(format!("{}/v1/metrics", config.endpoint))
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(headers)
            .build()
            .map_err(|e| failed("metric", &e))?;
        let reader = PeriodicReader::builder(metrics)
            .with_interval(interval)
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();

        let meter = meter_provider.meter(SERVICE_NAME);
        let token_usage = meter
            .u64_histogram("gen_ai.client.token.usage")
            .with_unit("{token}")
            .with_description("Number of input and output tokens used")
            .with_boundaries(TOKEN_BUCKETS.to_vec())
            .build();
        let duration = meter
            .f64_histogram("gen_ai.client.operation.duration")
            .with_unit("s")
            .with_description("GenAI operation duration")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();
        let tracer = tracer_provider.tracer(SERVICE_NAME);
        Ok(Self {
            tracer_provider,
            meter_provider,
            tracer,
            token_usage,
            duration,
        })
    }

    /// Sends what is still queued and stops the exporters (at shutdown; it blocks until the
    /// collector answered or the export timed out).
    pub fn shutdown(&self) {
        if let Err(e) = self.tracer_provider.shutdown() {
            tracing::warn!("OpenTelemetry spans not all sent at shutdown: {e}");
        }
        if let Err(e) = self.meter_provider.shutdown() {
            tracing::warn!("OpenTelemetry metrics not all sent at shutdown: {e}");
        }
    }

    /// Queues the span of one finished call and adds it to the histograms.
    /// Exports one finished call; called where the meter completes the call's record.
    pub fn export(&self, gateway: &Gateway, endpoint: Endpoint, record: &CallRecord) {
        self.call(
            endpoint,
            record,
            gateway.provider_config(endpoint, &record.model),
        );
    }

    fn call(&self, endpoint: Endpoint, record: &CallRecord, provider: Option<&ProviderConfig>) {
        let operation = operation_name(endpoint);
        let common = common_attributes(operation, record, provider);
        let start = SystemTime::from(record.ts);
        let duration = Duration::from_millis(record.duration_ms);

        let mut attributes = common.clone();
        attributes.extend(span_attributes(record, provider));
        let name = if record.model.is_empty() {
            operation.to_owned()
        } else {
            format!("{operation} {}", record.model)
        };
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attributes)
            .start(&self.tracer);
        if let Some(kind) = error_type(record) {
            span.set_status(Status::error(
                record.error.clone().unwrap_or_else(|| kind.clone()),
            ));
        }
        span.end_with_timestamp(start + duration);

        let mut timed = common.clone();
        if let Some(kind) = error_type(record) {
            timed.push(KeyValue::new("error.type", kind));
        }
        self.duration.record(duration.as_secs_f64(), &timed);
        // Answered calls, and calls cut short with the tokens they had used (as the store counts).
        if endpoint.spends_tokens() && (record.is_success() || record.tokens.total > 0) {
            for (kind, count) in [
                ("input", record.tokens.prompt),
                ("output", record.tokens.completion),
            ] {
                let mut tagged = common.clone();
                tagged.push(KeyValue::new("gen_ai.token.type", kind));
                self.token_usage.record(count, &tagged);
            }
        }
    }
}

/// `gen_ai.operation.name` of an endpoint, from the conventions' well-known values.
fn operation_name(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
        Endpoint::CountTokens => "count_tokens",
        Endpoint::Models => "list_models",
    }
}

/// `gen_ai.provider.name`: the conventions' name for the protocol the provider speaks.
fn provider_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Anthropic => "anthropic",
    }
}

/// The attributes shared by the span and the metrics.
fn common_attributes(
    operation: &'static str,
    record: &CallRecord,
    provider: Option<&ProviderConfig>,
) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("gen_ai.request.model", record.model.clone()),
    ];
    if let Some(provider) = provider {
        attributes.push(KeyValue::new(
            "gen_ai.provider.name",
            provider_name(provider.kind),
        ));
        if let Some((host, port)) = host_and_port(&provider.base_url) {
            attributes.push(KeyValue::new("server.address", host));
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    attributes
}

/// The span's own attributes: token usage, error, and token-console's facts of the call.
fn span_attributes(record: &CallRecord, provider: Option<&ProviderConfig>) -> Vec<KeyValue> {
    let tokens = record.tokens;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut attributes = vec![
        KeyValue::new("gen_ai.usage.input_tokens", count(tokens.prompt)),
        KeyValue::new("gen_ai.usage.output_tokens", count(tokens.completion)),
        KeyValue::new(
            "gen_ai.usage.cache_read.input_tokens",
            count(tokens.cache_read),
        ),
        KeyValue::new(
            "gen_ai.usage.cache_creation.input_tokens",
            count(tokens.cache_creation),
        ),
        KeyValue::new(
            "gen_ai.usage.reasoning.output_tokens",
            count(tokens.reasoning),
        ),
        KeyValue::new("http.request.method", record.method.clone()),
        KeyValue::new("http.response.status_code", i64::from(record.status)),
        KeyValue::new("token_console.endpoint", record.endpoint.clone()),
        KeyValue::new("token_console.tokens", count(tokens.total)),
        KeyValue::new("token_console.stream", record.stream),
        KeyValue::new("token_console.estimated", record.estimated),
    ];
    attributes.extend(response_attributes(record));
    if let Some(kind) = error_type(record) {
        attributes.push(KeyValue::new("error.type", kind));
    }
    if let Some(name) = &record.key_name {
        attributes.push(KeyValue::new("token_console.key.name", name.clone()));
    }
    if let Some(provider) = provider {
        attributes.push(KeyValue::new(
            "token_console.provider",
            provider.name.clone(),
        ));
    }
    if let Some(ttft) = record.ttft_ms {
        attributes.push(KeyValue::new(
            "token_console.time_to_first_byte_ms",
            count(ttft),
        ));
    }
    attributes
}

/// `gen_ai.response.model` and `gen_ai.response.finish_reasons` (a string array), when the
/// provider's answer reported them.
fn response_attributes(record: &CallRecord) -> Vec<KeyValue> {
    let mut attributes = Vec::new();
    if let Some(model) = &record.answer.model {
        attributes.push(KeyValue::new("gen_ai.response.model", model.clone()));
    }
    if !record.answer.finish_reasons.is_empty() {
        let reasons = record
            .answer
            .finish_reasons
            .iter()
            .map(|r| StringValue::from(r.clone()))
            .collect();
        attributes.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            Value::Array(Array::String(reasons)),
        ));
    }
    attributes
}

/// `error.type`: the HTTP status of a failed call (as the conventions advise for HTTP errors), or
/// `_OTHER` for a call that answered 2xx yet failed (a stream that broke off).
fn error_type(record: &CallRecord) -> Option<String> {
    if !record.is_success() {
        Some(record.status.to_string())
    } else {
        record.error.as_ref().map(|_| "_OTHER".to_owned())
    }
}

/// Host and port of a provider's base URL (port from the scheme when not written).
fn host_and_port(base_url: &str) -> Option<(String, u16)> {
    let uri: axum::http::Uri = base_url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().or_else(|| match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })?;
    Some((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_address_and_port_come_from_the_base_url() {
        let cases = [
            ("https://api.openai.com/v1", Some(("api.openai.com", 443))),
            ("http://127.0.0.1:9000/v1", Some(("127.0.0.1", 9000))),
            ("http://[::1]:8080", Some(("::1", 8080))),
            ("http://localhost", Some(("localhost", 80))),
            ("not a url", None),
        ];
        for (url, want) in cases {
            let got = host_and_port(url);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{url}");
        }
    }

    #[test]
    fn operation_names_are_the_conventions_values() {
        assert_eq!(operation_name(Endpoint::ChatCompletions), "chat");
        assert_eq!(operation_name(Endpoint::Messages), "chat");
        assert_eq!(operation_name(Endpoint::Responses), "chat");
        assert_eq!(operation_name(Endpoint::Completions), "text_completion");
        assert_eq!(operation_name(Endpoint::Embeddings), "embeddings");
    }
}
