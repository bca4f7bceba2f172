//! Logs to stderr, as text or one JSON object per line (`--log-format json`, for log
//! collectors); `RUST_LOG` sets the filter (default `info`).

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("--log-format {s:?}: 'text' or 'json'")),
        }
    }
}

/// Takes `--log-format F` out of `args` (anywhere); the format it names.
pub fn take_format(args: &mut Vec<String>) -> Result<Format, String> {
    let Some(i) = args.iter().position(|a| a == "--log-format") else {
        return Ok(Format::Text);
    };
    let value = args
        .get(i + 1)
        .cloned()
        .ok_or("--log-format needs a value")?;
    args.drain(i..=i + 1);
    value.parse()
}

/// Installs the stderr subscriber as text (once).
pub fn init() {
    init_as(Format::Text)
}

/// Installs the stderr subscriber in `format` (once).
pub fn init_as(format: Format) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(keynet_core::logging::stderr_wants_colour());
    let _ = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_taken_out_wherever_it_is() {
        let mut a: Vec<String> = ["--server", "x", "--log-format", "json", "--grace", "1"]
            .map(String::from)
            .into();
        assert_eq!(take_format(&mut a), Ok(Format::Json));
        assert_eq!(a, ["--server", "x", "--grace", "1"]);
        let mut b: Vec<String> = vec!["--log-format".into(), "xml".into()];
        assert!(take_format(&mut b).is_err());
        let mut c: Vec<String> = vec![];
        assert_eq!(take_format(&mut c), Ok(Format::Text));
    }
}
