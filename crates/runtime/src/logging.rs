use std::fmt;

use clap::{Args, ValueEnum};
use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::Targets,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

use crate::otel::{OtelGuard, OtelSettings, tracer, tracer_provider};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format. Lines logged inside a traced operation end with its trace id.
    #[arg(long, env = "KAPPA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `kappa_registry=debug,info`.
    /// It filters log lines only: spans for OpenTelemetry are kept whatever it says.
    #[arg(long, env = "KAPPA_LOG", default_value = "info")]
    pub log: String,
}

/// What must live as long as the service: dropping it flushes the spans not yet exported.
pub struct Telemetry {
    _otel: Option<OtelGuard>,
}

/// Installs logging (to stderr, so stdout stays free for command output) and, unless
/// `OTEL_SDK_DISABLED=true`, OpenTelemetry tracing for `service`.
pub fn init_telemetry(service: &'static str, args: &LogArgs) -> anyhow::Result<Telemetry> {
    let settings = OtelSettings::from_env().map_err(anyhow::Error::msg)?;
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|e| {
        eprintln!("ignoring invalid --log filter {:?} ({e}); using 'info'", args.log);
        EnvFilter::new("info")
    });
    let log_layer = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(WithTraceId {
                inner: tracing_subscriber::fmt::format(),
                json: false,
            })
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .map_event_format(|inner| WithTraceId { inner, json: true })
            .with_filter(filter)
            .boxed(),
    };
    let (otel_layer, guard) = if settings.disabled {
        (None, None)
    } else {
        let guard = tracer_provider(service, &settings)?;
        // Kappa's own spans (INFO and above) and anything from dependencies at WARN.
        let spans = Targets::new()
            .with_target("kappa", Level::INFO)
            .with_default(Level::WARN);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer(&guard, service))
            .with_filter(spans);
        (Some(layer), Some(guard))
    };
    // A second initialisation (several servers in one test process) keeps the first one.
    let _ = tracing_subscriber::registry()
        .with(log_layer)
        .with(otel_layer)
        .try_init();
    if let Some(endpoint) = &settings.endpoint {
        tracing::info!(endpoint, "exporting spans over OTLP/gRPC");
    }
    Ok(Telemetry { _otel: guard })
}

/// Adds the trace id of the operation a line was logged in: ` trace_id=…` at the end of a text
/// line, a `"trace_id"` member in JSON, so a log line leads straight to its trace in Jaeger.
struct WithTraceId<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // The OpenTelemetry layer attaches a span's context to the thread while it is entered.
        let context = opentelemetry::Context::current();
        let span_context = context.span().span_context().clone();
        if !span_context.is_valid() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        let trace_id = span_context.trace_id();
        if self.json
            && let Some(rest) = body.strip_prefix('{')
        {
            let separator = if rest.starts_with('}') { "" } else { "," };
            writeln!(writer, "{{\"trace_id\":\"{trace_id}\"{separator}{rest}")
        } else {
            writeln!(writer, "{body} trace_id={trace_id}")
        }
    }
}
