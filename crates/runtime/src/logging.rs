use std::fmt;

use clap::{Args, ValueEnum};
use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Level, Metadata, Subscriber, level_filters::LevelFilter, subscriber::Interest};
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::Targets,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::{Filter, SubscriberExt as _},
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
    let mut max_level = Filter::<Registry>::max_level_hint(&filter);
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
        max_level = most_verbose(max_level, Filter::<Registry>::max_level_hint(&spans));
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer(&guard, service))
            .with_filter(spans);
        (Some(layer), Some(guard))
    };
    // A second initialisation (several servers in one test process) keeps the first one.
    let _ = tracing_subscriber::registry()
        .with(log_layer)
        .with(otel_layer)
        .with(FreshFilterDecisions { max_level })
        .try_init();
    if let Some(endpoint) = &settings.endpoint {
        tracing::info!(endpoint, "exporting spans over OTLP/gRPC");
    }
    Ok(Telemetry { _otel: guard })
}

/// Makes every log line and span ask the per-layer filters (`--log`'s, the spans' for
/// OpenTelemetry) each time, instead of once per call site.
///
/// tracing-subscriber hands a per-layer filter's decision from `enabled` to `on_event` /
/// `on_new_span` through a thread-local. A call site cached as always wanted skips `enabled`, so
/// it reads whatever the last `enabled` call on that thread left there: a `log` crate level check
/// (rdkafka makes one for every client it creates) leaves "not wanted", and the next line or span
/// on that thread vanished — a trusted-keys reload that never said so, a model swap missing from
/// its trace (tokio-rs/tracing#2519). Answering "sometimes" for every call site keeps that
/// decision fresh; levels above `max_level` are still cut before any of this runs.
struct FreshFilterDecisions {
    /// The most verbose level any filter lets through (`None`: not known).
    max_level: Option<LevelFilter>,
}

impl<S: Subscriber> Layer<S> for FreshFilterDecisions {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.max_level
    }
}

/// The more verbose of two filters' levels; not known if either is not.
fn most_verbose(a: Option<LevelFilter>, b: Option<LevelFilter>) -> Option<LevelFilter> {
    a.zip(b).map(|(a, b)| a.max(b))
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::Context;

    use super::*;

    /// What a layer was given: `line <message>` per event, `span <name>` per span.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            struct Message(String);
            impl Visit for Message {
                fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(format!("line {}", message.0));
        }

        fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, _: &tracing::span::Id, _: Context<'_, S>) {
            self.0.lock().unwrap().push(format!("span {}", attrs.metadata().name()));
        }
    }

    /// `log` crates ask whether a level is on (rdkafka asks for target `librdkafka` whenever it
    /// creates a client) with no record after it: the next line or span on that thread must still
    /// reach every layer that wants it.
    fn level_checks_do_not_swallow_what_comes_next(with_spans: bool) {
        let _ = tracing_log::LogTracer::init();
        let (lines, spans) = (Seen::default(), Seen::default());
        let kappa_spans = Targets::new()
            .with_target("kappa", Level::INFO)
            .with_default(Level::WARN);
        let subscriber = Registry::default()
            .with(lines.clone().with_filter(EnvFilter::new("info,librdkafka=warn")))
            .with(with_spans.then(|| spans.clone().with_filter(kappa_spans)))
            .with(FreshFilterDecisions {
                max_level: Some(LevelFilter::INFO),
            });
        tracing::subscriber::with_default(subscriber, || {
            for round in 0..3 {
                let _ = log::log_enabled!(target: "librdkafka", log::Level::Info);
                tracing::info!("reloaded {round}");
                let _ = log::log_enabled!(target: "h2", log::Level::Info);
                tracing::info_span!("swap").in_scope(|| ());
            }
        });
        let expected: Vec<String> = (0..3)
            .flat_map(|round| [format!("line reloaded {round}"), "span swap".to_owned()])
            .collect();
        assert_eq!(*lines.0.lock().unwrap(), expected, "what --log lets through");
        if with_spans {
            assert_eq!(*spans.0.lock().unwrap(), expected, "what the span filter lets through");
        }
    }

    #[test]
    fn a_level_check_does_not_swallow_the_next_line() {
        level_checks_do_not_swallow_what_comes_next(false);
    }

    #[test]
    fn a_level_check_does_not_swallow_the_next_line_or_span_when_spans_are_exported() {
        level_checks_do_not_swallow_what_comes_next(true);
    }

    #[test]
    fn the_level_hint_is_the_most_verbose_filters() {
        let spans = Targets::new()
            .with_target("kappa", Level::INFO)
            .with_default(Level::WARN);
        let hint = |log: &str| {
            most_verbose(
                Filter::<Registry>::max_level_hint(&EnvFilter::new(log)),
                Filter::<Registry>::max_level_hint(&spans),
            )
        };
        assert_eq!(hint("warn"), Some(LevelFilter::INFO), "the spans want INFO");
        assert_eq!(hint("kappa_registry=debug,info"), Some(LevelFilter::DEBUG));
        assert_eq!(most_verbose(None, Some(LevelFilter::INFO)), None);
    }
}
