//! OpenTelemetry set-up from the standard `OTEL_*` variables.
//!
//! Spans always get real trace and span ids (so logs carry trace ids and W3C context is passed
//! on to the next hop even when nothing is exported). They are exported over OTLP/gRPC only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and not at all
//! when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. The SDK itself reads the sampler
//! (`OTEL_TRACES_SAMPLER[_ARG]`), the batch settings (`OTEL_BSP_*`), `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES` and the exporter's headers, timeout and compression.

use std::{sync::Arc, time::Duration};

use opentelemetry::{
    KeyValue,
    trace::{Link, SpanKind, TraceId, TracerProvider as _},
};
use opentelemetry_otlp::{SpanExporter as OtlpExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{Sampler, SamplingResult, SdkTracerProvider, ShouldSample, SpanData, SpanExporter},
};

/// What the `OTEL_*` environment asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelSettings {
    pub disabled: bool,
    /// The OTLP/gRPC endpoint spans go to, when exporting.
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME` when set; the service's own name otherwise.
    pub service_name_override: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES` as given (the SDK parses it).
    pub resource_attributes: String,
    /// Kappa's sampling, unless `OTEL_TRACES_SAMPLER` takes over: the share of inference
    /// requests that arrive untraced and start a trace (`KAPPA_TRACE_REQUEST_RATIO`).
    pub request_ratio: Option<f64>,
}

impl OtelSettings {
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Reads the settings through `lookup`, so the rules are testable without the process env.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let disabled = lookup("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if let Some(exporter) = lookup("OTEL_TRACES_EXPORTER")
            && !matches!(exporter.as_str(), "otlp" | "none")
        {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={exporter} is not supported: Kappa exports spans with OTLP; set it to `otlp` or `none`"
            ));
        }
        let exporter_off = lookup("OTEL_TRACES_EXPORTER").as_deref() == Some("none");
        for variable in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = lookup(variable)
                && protocol != "grpc"
            {
                return Err(format!(
                    "{variable}={protocol} is not supported: Kappa exports OTLP over gRPC; set it to `grpc` and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's gRPC port (usually 4317)"
                ));
            }
        }
        let endpoint = lookup("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| lookup("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if let Some(endpoint) = &endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(format!(
                "the OTLP endpoint {endpoint:?} needs a scheme, e.g. http://127.0.0.1:4317 (from OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT)"
            ));
        }
        let request_ratio = match lookup("OTEL_TRACES_SAMPLER") {
            Some(_) => None,
            None => Some(match lookup("KAPPA_TRACE_REQUEST_RATIO") {
                Some(raw) => raw
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("KAPPA_TRACE_REQUEST_RATIO={raw} is not a share between 0 and 1"))?,
                None => DEFAULT_REQUEST_RATIO,
            }),
        };
        Ok(Self {
            request_ratio,
            disabled,
            endpoint: endpoint.filter(|_| !disabled && !exporter_off),
            service_name_override: lookup("OTEL_SERVICE_NAME"),
            resource_attributes: lookup("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default(),
        })
    }
}

/// Untraced inference requests that start a trace, by default: every request would cost the
/// predictor about half its throughput once exported (see the README's benchmarks), while model
/// journeys and administrative calls are rare and always traced.
pub const DEFAULT_REQUEST_RATIO: f64 = 0.01;

/// Kappa's default sampler: follow the parent's decision when there is one (a caller's sampled
/// `traceparent` is always honoured); otherwise trace every operation except inference requests,
/// of which `ratio` start a trace (chosen at the server's edge, or here for a client's requests).
#[derive(Debug, Clone)]
struct RequestRatio {
    ratio: Sampler,
}

impl ShouldSample for RequestRatio {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        // Servers sample untraced inference at their edge (see `sampling`), before any span
        // exists; what reaches here on the server side is already chosen. Clients (the CLI's
        // `kappa load`) sample their own root requests here.
        let client = *span_kind == SpanKind::Client;
        if client && crate::sampling::INFERENCE_PREFIXES.iter().any(|p| name.starts_with(p)) {
            self.ratio
                .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
        } else {
            Sampler::AlwaysOn.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
        }
    }
}

fn kappa_sampler(ratio: f64) -> Sampler {
    Sampler::ParentBased(Box::new(RequestRatio {
        ratio: Sampler::TraceIdRatioBased(ratio),
    }))
}

/// Keeps the tracer provider (and the exporter's runtime) alive; flushes spans when dropped.
pub struct OtelGuard {
    provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("some spans may not have been exported at shutdown: {e}");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Builds the tracer provider and installs the W3C trace-context propagator.
pub fn tracer_provider(service: &'static str, settings: &OtelSettings) -> anyhow::Result<OtelGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut resource = Resource::builder();
    if settings.service_name_override.is_none() {
        resource = resource.with_service_name(service);
    }
    // Replicas of one service must stay apart in a trace.
    if !settings.resource_attributes.contains("service.instance.id=") {
        resource = resource.with_attribute(KeyValue::new(
            "service.instance.id",
            format!("{}/{}", crate::hostname(), std::process::id()),
        ));
    }
    let resource = resource.build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(ratio) = settings.request_ratio {
        builder = builder.with_sampler(kappa_sampler(ratio));
    }
    // The server's edge skips spans the sampler would drop; with OTEL_TRACES_SAMPLER it keeps all.
    crate::sampling::set_request_ratio(settings.request_ratio.unwrap_or(1.0));
    let mut runtime = None;
    if let Some(endpoint) = &settings.endpoint {
        // The SDK's batch processor exports from its own OS thread, where the tonic transport
        // would find no Tokio reactor; the exporter runs on a small runtime of its own instead.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        let exporter = {
            let _entered = rt.enter();
            OtlpExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?
        };
        builder = builder.with_batch_exporter(OnRuntime {
            exporter: Arc::new(exporter),
            runtime: rt.handle().clone(),
        });
        runtime = Some(rt);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(OtelGuard { provider, runtime })
}

pub fn tracer(guard: &OtelGuard, service: &'static str) -> opentelemetry_sdk::trace::Tracer {
    guard.provider.tracer(service)
}

/// Runs each export on the exporter's own runtime.
#[derive(Debug)]
struct OnRuntime {
    exporter: Arc<OtlpExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let exporter = Arc::clone(&self.exporter);
        match self.runtime.spawn(async move { exporter.export(batch).await }).await {
            Ok(result) => result,
            Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(format!(
                "span export task failed: {e}"
            ))),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once while the provider is built, before any export holds a clone.
        if let Some(exporter) = Arc::get_mut(&mut self.exporter) {
            exporter.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::SamplingDecision;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<OtelSettings, String> {
        OtelSettings::from_lookup(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn exports_only_when_an_endpoint_is_set_and_the_sdk_is_on() {
        assert_eq!(settings(&[]).unwrap().endpoint, None);
        let on = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]).unwrap();
        assert_eq!(on.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        let specific = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
        ])
        .unwrap();
        assert_eq!(specific.endpoint.as_deref(), Some("http://b:4317"));
        for off in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")] {
            let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"), off]).unwrap();
            assert_eq!(s.endpoint, None, "{off:?}");
        }
    }

    #[test]
    fn kappa_samples_untraced_inference_by_ratio_and_everything_else_always() {
        assert_eq!(settings(&[]).unwrap().request_ratio, Some(DEFAULT_REQUEST_RATIO));
        assert_eq!(
            settings(&[("KAPPA_TRACE_REQUEST_RATIO", "0.5")]).unwrap().request_ratio,
            Some(0.5)
        );
        assert!(settings(&[("KAPPA_TRACE_REQUEST_RATIO", "2")]).is_err());
        let explicit = settings(&[("OTEL_TRACES_SAMPLER", "always_on")]).unwrap();
        assert_eq!(explicit.request_ratio, None, "OTEL_TRACES_SAMPLER takes over");

        let decide = |sampler: &Sampler, name: &str, parent: Option<&opentelemetry::Context>, id: u128| {
            sampler
                .should_sample(parent, TraceId::from(id), name, &SpanKind::Client, &[], &[])
                .decision
        };
        let none = kappa_sampler(0.0);
        let predict = "kappa.predictor.v1.Predictor/Predict";
        assert_eq!(decide(&none, predict, None, 7), SamplingDecision::Drop);
        assert_eq!(
            decide(&none, "inference.GRPCInferenceService/ModelInfer", None, 7),
            SamplingDecision::Drop
        );
        for name in ["model.load", "training_round", "kappa.registry.v1.Registry/Publish"] {
            assert_eq!(
                decide(&none, name, None, 7),
                SamplingDecision::RecordAndSample,
                "{name}"
            );
        }
        // A caller's sampled context is followed whatever the ratio.
        let parent = crate::propagation::extract(|k| {
            (k == "traceparent").then(|| "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned())
        });
        assert_eq!(
            decide(&none, predict, Some(&parent), 7),
            SamplingDecision::RecordAndSample
        );
        // A server's inference span exists only if its edge chose it: the SDK keeps it.
        let server = none
            .should_sample(None, TraceId::from(7), predict, &SpanKind::Server, &[], &[])
            .decision;
        assert_eq!(server, SamplingDecision::RecordAndSample);
        let all = kappa_sampler(1.0);
        assert_eq!(decide(&all, predict, None, 7), SamplingDecision::RecordAndSample);
    }

    #[test]
    fn unsupported_settings_are_refused_with_what_to_do() {
        let e = settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap_err();
        assert!(e.contains("set it to `grpc`"), "{e}");
        let e = settings(&[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(e.contains("otlp"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317")]).unwrap_err();
        assert!(e.contains("http://127.0.0.1:4317"), "{e}");
    }
}
