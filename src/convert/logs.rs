//! A proxy's `logger` option: its log lines, as `{ level, target, message }` objects, to a JS
//! function (index.js calls the logger's method for the level).

use std::sync::Arc;

use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;

/// One log line.
#[napi(object)]
pub struct NativeLogLine {
    /// 'error', 'warn', 'info', 'debug' or 'trace'.
    pub level: String,
    pub target: String,
    pub message: String,
}

/// Log lines waiting for the JS thread at most; more are dropped (a logger that cannot keep up
/// must not hold the network up, nor grow memory without bound).
pub(crate) const LOG_QUEUE: usize = 4096;

/// The JS function receiving log lines (weak: it does not keep Node alive).
pub(crate) type LogListener =
    ThreadsafeFunction<NativeLogLine, (), NativeLogLine, Status, false, true, LOG_QUEUE>;

/// A log route for `listener` at `level` ('error' ... 'trace').
pub(crate) fn route(
    listener: LogListener,
    level: &str,
) -> napi::Result<keynet_core::logging::LogRoute> {
    let listener = Arc::new(listener);
    keynet_core::logging::LogRoute::at(
        level,
        Arc::new(move |line: keynet_core::logging::LogLine| {
            let line = NativeLogLine {
                level: line.level.as_str().to_ascii_lowercase(),
                target: line.target,
                message: line.message,
            };
            let _ = listener.call(line, ThreadsafeFunctionCallMode::NonBlocking);
        }),
    )
    .map_err(|e| crate::convert::arg_err(format!("logLevel: {e}")))
}
