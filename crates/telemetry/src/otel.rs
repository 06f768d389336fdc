//! OpenTelemetry set-up from the standard `OTEL_*` variables.
//!
//! Spans always get real trace and span ids (so logs carry trace ids and W3C context is passed
//! on to the next hop even when nothing is exported). They are exported over OTLP/gRPC only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and not at all
//! when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. The SDK itself reads the sampler
//! (`OTEL_TRACES_SAMPLER[_ARG]`), the batch settings (`OTEL_BSP_*`), `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES` and the exporter's headers, timeout and compression.

use std::{sync::Arc, time::Duration};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{SpanExporter as OtlpExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};

/// What the `OTEL_*` environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelSettings {
    pub disabled: bool,
    /// The OTLP/gRPC endpoint spans go to, when exporting.
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME` when set; the service's own name otherwise.
    pub service_name_override: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES` as given (the SDK parses it).
    pub resource_attributes: String,
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
        Ok(Self {
            disabled,
            endpoint: endpoint.filter(|_| !disabled && !exporter_off),
            service_name_override: lookup("OTEL_SERVICE_NAME"),
            resource_attributes: lookup("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default(),
        })
    }
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
    fn unsupported_settings_are_refused_with_what_to_do() {
        let e = settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap_err();
        assert!(e.contains("set it to `grpc`"), "{e}");
        let e = settings(&[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(e.contains("otlp"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317")]).unwrap_err();
        assert!(e.contains("http://127.0.0.1:4317"), "{e}");
    }
}
