//! Where keynet's log lines go: to stderr through a filter that can change while running
//! (`KEYNET_LOG` at load, [`set_stderr_filter`] later), and to each proxy's own receiver (the JS
//! `logger` option).
//!
//! A proxy with a receiver runs its calls and its tasks inside its route span ([`LogRoute`]);
//! [`Tasks`](crate::task::Tasks) carry the span spawning them into every task, so every event
//! a proxy causes has that span in its scope, and [`RouteLayer`] hands the event to the
//! receiver registered for it. A proxy without a receiver has no span and pays nothing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tracing::level_filters::LevelFilter;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer};

/// One log line for a receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// The module it came from (e.g. `keynet_core::forward_proxy`).
    pub target: String,
    /// The message, then its fields as `key=value`.
    pub message: String,
}

/// What receives a proxy's log lines. Called on keynet's threads: it must not block.
pub type LogReceiver = Arc<dyn Fn(LogLine) + Send + Sync>;

/// The span name (and target) that marks a proxy's route.
const ROUTE_SPAN: &str = "keynet_log_route";

struct Route {
    level: LevelFilter,
    receiver: LogReceiver,
}

/// Receivers by route id, and the most verbose level any of them wants.
struct Routes {
    by_id: RwLock<HashMap<u64, Route>>,
    max: RwLock<LevelFilter>,
}

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| Routes {
        by_id: RwLock::default(),
        max: RwLock::new(LevelFilter::OFF),
    })
}

impl Routes {
    /// Recomputes the level the layer passes on and makes every call site ask again.
    fn update_max(&self) {
        let max = self
            .by_id
            .read()
            .expect("routes lock")
            .values()
            .map(|r| r.level)
            .max()
            .unwrap_or(LevelFilter::OFF);
        *self.max.write().expect("routes lock") = max;
        tracing::callsite::rebuild_interest_cache();
    }

    fn max(&self) -> LevelFilter {
        *self.max.read().expect("routes lock")
    }
}

/// A proxy's log route: registered while it lives. Its [`span`](Self::span) is entered by
/// everything the proxy does.
pub struct LogRoute {
    id: u64,
    span: tracing::Span,
}

impl std::fmt::Debug for LogRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRoute").field("id", &self.id).finish()
    }
}

impl LogRoute {
    /// Registers `receiver` for the lines at `level` and more severe. Without [`install`] (or
    /// with another global subscriber) nothing arrives.
    pub fn new(level: LevelFilter, receiver: LogReceiver) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let r = routes();
        r.by_id
            .write()
            .expect("routes lock")
            .insert(id, Route { level, receiver });
        r.update_max();
        let span = tracing::span!(target: ROUTE_SPAN, Level::ERROR, ROUTE_SPAN, route = id);
        Self { id, span }
    }

    /// As [`LogRoute::new`], the level by name: `error`, `warn`, `info`, `debug` or `trace`.
    pub fn at(level: &str, receiver: LogReceiver) -> Result<Self, String> {
        match level.parse::<LevelFilter>() {
            Ok(l) if l != LevelFilter::OFF => Ok(Self::new(l, receiver)),
            _ => Err(format!(
                "{level:?} is not one of 'error', 'warn', 'info', 'debug', 'trace'"
            )),
        }
    }

    /// The span to run the proxy's work in.
    pub fn span(&self) -> tracing::Span {
        self.span.clone()
    }
}

impl Drop for LogRoute {
    fn drop(&mut self) {
        let r = routes();
        r.by_id.write().expect("routes lock").remove(&self.id);
        r.update_max();
    }
}

/// The route id a route span carries (in its extensions).
struct RouteId(u64);

/// Hands events inside a route span to that route's receiver.
struct RouteLayer;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for RouteLayer {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if attrs.metadata().name() != ROUTE_SPAN {
            return;
        }
        let mut found = RouteIdVisitor(None);
        attrs.record(&mut found);
        if let (Some(route), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().insert(RouteId(route));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let Some(route) = scope
            .into_iter()
            .find_map(|span| span.extensions().get::<RouteId>().map(|r| r.0))
        else {
            return;
        };
        let receiver = {
            let by_id = routes().by_id.read().expect("routes lock");
            match by_id.get(&route) {
                Some(r) if *event.metadata().level() <= r.level => r.receiver.clone(),
                _ => return,
            }
        };
        let mut text = MessageVisitor::default();
        event.record(&mut text);
        receiver(LogLine {
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            message: text.finish(),
        });
    }
}

/// Passes route spans, and events at the most verbose level a receiver wants.
struct RouteFilter;

impl RouteFilter {
    fn wants(meta: &Metadata<'_>) -> bool {
        if meta.is_span() {
            return meta.name() == ROUTE_SPAN;
        }
        *meta.level() <= routes().max()
    }
}

impl<S> Filter<S> for RouteFilter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        Self::wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // Cached until a route comes or goes (`update_max` rebuilds the cache).
        if Self::wants(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // Route spans are at ERROR: whenever a route exists, the max is at least that.
        Some(routes().max())
    }
}

struct RouteIdVisitor(Option<u64>);

impl tracing::field::Visit for RouteIdVisitor {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "route" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _field: &tracing::field::Field, _value: &dyn std::fmt::Debug) {}
}

/// The message first, then `key=value` for each other field.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl MessageVisitor {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else if self.message.is_empty() {
            self.fields
        } else {
            format!("{} {}", self.message, self.fields)
        }
    }
}

impl tracing::field::Visit for MessageVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }
}

type StderrFilter = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

fn stderr_filter() -> &'static OnceLock<StderrFilter> {
    static HANDLE: OnceLock<StderrFilter> = OnceLock::new();
    &HANDLE
}

/// Whether log lines on stderr get colours: only when a person reads them on a terminal, and
/// `NO_COLOR` is not set. A journal, a container log or a file gets plain text, not escape codes.
pub fn stderr_wants_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Installs keynet's subscriber as the process's global one (once; later calls do nothing):
/// stderr through `stderr` (an `EnvFilter` directive such as `keynet_core=debug`; `None`:
/// nothing), and the proxies' routes. Returns false if another global subscriber was there
/// first (then neither works).
pub fn install(stderr: Option<&str>) -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let filter =
            EnvFilter::try_new(stderr.unwrap_or("off")).unwrap_or_else(|_| EnvFilter::new("off"));
        let (filter, handle) = reload::Layer::new(filter);
        let stderr_layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(stderr_wants_colour())
            .with_filter(filter);
        let ok = tracing_subscriber::registry()
            .with(stderr_layer)
            .with(RouteLayer.with_filter(RouteFilter))
            .try_init()
            .is_ok();
        if ok {
            let _ = stderr_filter().set(handle);
        }
        ok
    })
}

/// Changes what goes to stderr while running: an `EnvFilter` directive (`info`,
/// `keynet_core=debug,quinn=warn`), or `None` for nothing. Errors on a directive that does
/// not parse, or when [`install`] did not install keynet's subscriber.
pub fn set_stderr_filter(directive: Option<&str>) -> Result<(), String> {
    let filter = EnvFilter::try_new(directive.unwrap_or("off")).map_err(|e| e.to_string())?;
    let handle = stderr_filter()
        .get()
        .ok_or_else(|| "keynet's logging is not installed".to_string())?;
    handle.reload(filter).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn events_in_a_route_span_reach_its_receiver_only_at_its_level() {
        assert!(install(None));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let route = LogRoute::new(
            LevelFilter::INFO,
            Arc::new(move |l| sink.lock().unwrap().push(l)),
        );
        let other_got = Arc::new(Mutex::new(Vec::new()));
        let other_sink = other_got.clone();
        let other = LogRoute::new(
            LevelFilter::DEBUG,
            Arc::new(move |l| other_sink.lock().unwrap().push(l)),
        );
        route.span().in_scope(|| {
            tracing::info!(peer = 7, "hello");
            tracing::debug!("too verbose for this route");
        });
        other.span().in_scope(|| tracing::debug!("other's"));
        tracing::warn!("outside every route");
        let got = lines.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].level, Level::INFO);
        assert_eq!(got[0].message, "hello peer=7");
        assert!(got[0].target.starts_with("keynet_core::logging"));
        assert_eq!(other_got.lock().unwrap()[0].message, "other's");
        // A dropped route receives nothing more.
        let span = route.span();
        drop(route);
        span.in_scope(|| tracing::error!("after the drop"));
        assert_eq!(lines.lock().unwrap().len(), 1);
        assert_eq!(set_stderr_filter(Some("keynet_core=warn")), Ok(()));
        assert!(set_stderr_filter(Some("=[bad")).is_err());
        assert_eq!(set_stderr_filter(None), Ok(()));
    }
}
