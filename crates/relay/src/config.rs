//! What `keynet reverse` and `keynet forward` are told: flags and a config file (TOML) saying
//! the same, flags winning. Every value keeps where it came from (`--server`, or
//! `keynet.toml:3 reverse.server`), so an error names the flag, or the file, line and key.
//!
//! ```toml
//! [reverse]
//! server = "127.0.0.1:50051"
//! relays = ["203.0.113.7:7000@vq2n..."]
//! identity-dir = "/var/lib/keynet/reverse"
//!
//! [forward]
//! listen = "127.0.0.1:8080"
//! token-file = "/etc/keynet/token"
//! ```
//!
//! Secrets never come from the command line (every user of the machine can read it) unless
//! `--insecure-token-arg` says so: the forward proxy's token comes from `token-file` or the
//! `KEYNET_TOKEN` environment variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// One value and where it came from (for errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub text: String,
    pub origin: String,
}

/// Which proxy a command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Reverse,
    Forward,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Self::Reverse => "reverse",
            Self::Forward => "forward",
        }
    }

    /// The keys (and flags, with `--`) this side takes.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Self::Reverse => &[
                "server",
                "listen",
                "relays",
                "discovery",
                "bootstrap",
                "allow",
                "identity-dir",
                "grace",
                "control",
            ],
            Self::Forward => &[
                "listen",
                "egress",
                "relays",
                "discovery",
                "bootstrap",
                "identity-dir",
                "token-file",
                "grace",
                "control",
            ],
        }
    }
}

/// Everything said about one proxy, not yet checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Raw {
    /// Single values by key (`server`, `listen`, `egress`, `identity-dir`, `token-file`, `grace`).
    pub one: BTreeMap<String, Value>,
    /// Lists by key (`relays`, `bootstrap`, `allow`).
    pub many: BTreeMap<String, Vec<Value>>,
    /// `discovery`.
    pub discovery: Option<bool>,
    /// `--token` (refused unless `insecure_token_arg`).
    pub token_arg: Option<Value>,
    pub insecure_token_arg: bool,
    /// `--config`.
    pub config: Option<PathBuf>,
}

const LISTS: [&str; 3] = ["relays", "bootstrap", "allow"];

impl Raw {
    /// Flags win over `other` (the config file): a flag's value, or a flag's whole list.
    pub fn over(mut self, other: Self) -> Self {
        for (k, v) in other.one {
            self.one.entry(k).or_insert(v);
        }
        for (k, v) in other.many {
            self.many.entry(k).or_insert(v);
        }
        self.discovery = self.discovery.or(other.discovery);
        self
    }
}

/// `--help` of `keynet reverse|forward`.
pub fn help(side: Side) -> String {
    let (what, usage) = match side {
        Side::Reverse => (
            "keynet reverse: carries arriving tunnels to a local server (any TCP or gRPC server)",
            "keynet reverse --server HOST:PORT [flags]",
        ),
        Side::Forward => (
            "keynet forward: an HTTP CONNECT proxy for gRPC clients (grpc_proxy=http://TOKEN@HOST:PORT)",
            "keynet forward [--listen HOST:PORT] (--token-file FILE | KEYNET_TOKEN=...) [flags]",
        ),
    };
    let mut out = format!("{what}\n\nUSAGE:\n    {usage}\n\nFLAGS (each also a key of the [{}] table of --config FILE):\n", side.name());
    for key in side.keys() {
        let doc = match *key {
            "server" => "HOST:PORT   the server tunnels are carried to (required)",
            "listen" if side == Side::Reverse => "HOST:PORT   UDP (QUIC) address (default 127.0.0.1:0; 0.0.0.0:PORT for callers on other machines)",
            "listen" => "HOST:PORT   HTTP CONNECT address (default 127.0.0.1:8080)",
            "egress" => "HOST:PORT   UDP (QUIC) address (default 127.0.0.1:0)",
            "relays" => "HOST:PORT@NODEID   register with this relay (repeatable; flag: --relay)",
            "discovery" => "            join the DHT (announce / look up node ids)",
            "bootstrap" => "HOST:PORT   DHT node to join through (repeatable; default: the public DHT)",
            "allow" => "NODEID      only this node may connect (repeatable; default: any)",
            "identity-dir" => "DIR         key.pem and cert.pem (made on first use; default: a fresh identity per run)",
            "token-file" => "FILE        the token CONNECT clients present (or KEYNET_TOKEN)",
            "grace" => "SECONDS     how long open tunnels drain on SIGINT/SIGTERM (default 1)",
            "control" => "PATH        the control socket `keynet status` asks (default $XDG_RUNTIME_DIR/keynet/SIDE.sock)",
            _ => "",
        };
        let flag = if *key == "relays" { "relay" } else { key };
        out.push_str(&format!("    --{flag:<14}{doc}\n"));
    }
    out.push_str("    --config FILE   read the flags from FILE's [");
    out.push_str(side.name());
    out.push_str("] table (TOML); flags win\n");
    if side == Side::Forward {
        out.push_str("    --token TOKEN --insecure-token-arg   the token on the command line (visible to every user: avoid)\n");
    }
    out.push_str("\nPrints one line when it listens; SIGINT or SIGTERM drain open tunnels (up to --grace), then exit 0.\nExit codes: 0 stopped cleanly, 1 could not start, 2 bad flags or config.\n");
    out
}

/// Parses the flags of `keynet reverse|forward`; `Ok(None)` for `--help`.
pub fn parse_flags(
    side: Side,
    args: impl IntoIterator<Item = String>,
) -> Result<Option<Raw>, String> {
    let mut raw = Raw::default();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .map(|text| Value {
                    text,
                    origin: name.to_string(),
                })
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--config" => raw.config = Some(PathBuf::from(value("--config")?.text)),
            "--discovery" => raw.discovery = Some(true),
            "--token" if side == Side::Forward => raw.token_arg = Some(value("--token")?),
            "--insecure-token-arg" if side == Side::Forward => raw.insecure_token_arg = true,
            f => {
                let key = f.strip_prefix("--").unwrap_or("");
                let key = if key == "relay" { "relays" } else { key };
                if !side.keys().contains(&key) || key == "discovery" {
                    return Err(format!(
                        "unknown flag {f:?} for `keynet {}` (see --help)",
                        side.name()
                    ));
                }
                let v = value(f)?;
                if LISTS.contains(&key) {
                    raw.many.entry(key.to_string()).or_default().push(v);
                } else if raw.one.insert(key.to_string(), v).is_some() {
                    return Err(format!("{f} given twice"));
                }
            }
        }
    }
    Ok(Some(raw))
}

/// A table of the config file, as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Table {
    server: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    egress: Option<Spanned<String>>,
    relays: Option<Vec<Spanned<String>>>,
    discovery: Option<bool>,
    bootstrap: Option<Vec<Spanned<String>>>,
    allow: Option<Vec<Spanned<String>>>,
    identity_dir: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    grace: Option<Spanned<f64>>,
    control: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct File {
    reverse: Option<Spanned<Table>>,
    forward: Option<Spanned<Table>>,
}

/// Reads `side`'s table of the config file at `path`.
pub fn load(path: &Path, side: Side) -> Result<Raw, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    parse_config(&text, &path.display().to_string(), side)
}

/// Parses config `text` (named `name` in errors).
pub fn parse_config(text: &str, name: &str, side: Side) -> Result<Raw, String> {
    let file: File =
        toml::from_str(text).map_err(|e| format!("{name}: {}", e.to_string().trim_end()))?;
    let line =
        |span: std::ops::Range<usize>| text[..span.start.min(text.len())].lines().count().max(1);
    let table = match side {
        Side::Reverse => file.reverse,
        Side::Forward => file.forward,
    };
    let mut raw = Raw::default();
    let Some(table) = table else { return Ok(raw) };
    let table_line = line(table.span());
    let table = table.into_inner();
    let origin = |key: &str, l: usize| format!("{name}:{l} {}.{key}", side.name());
    let mut one = |key: &str, v: Option<Spanned<String>>| -> Result<(), String> {
        if let Some(v) = v {
            if !side.keys().contains(&key) {
                return Err(format!(
                    "{name}:{} [{}] has no key {key:?}",
                    line(v.span()),
                    side.name()
                ));
            }
            let l = line(v.span());
            raw.one.insert(
                key.to_string(),
                Value {
                    text: v.into_inner(),
                    origin: origin(key, l),
                },
            );
        }
        Ok(())
    };
    one("server", table.server)?;
    one("listen", table.listen)?;
    one("egress", table.egress)?;
    one("identity-dir", table.identity_dir)?;
    one("token-file", table.token_file)?;
    one("control", table.control)?;
    if let Some(g) = table.grace {
        let l = line(g.span());
        raw.one.insert(
            "grace".into(),
            Value {
                text: g.into_inner().to_string(),
                origin: origin("grace", l),
            },
        );
    }
    for (key, list) in [
        ("relays", table.relays),
        ("bootstrap", table.bootstrap),
        ("allow", table.allow),
    ] {
        if let Some(list) = list {
            if !side.keys().contains(&key) {
                return Err(format!(
                    "{name}:{table_line} [{}] has no key {key:?}",
                    side.name()
                ));
            }
            let values = list
                .into_iter()
                .map(|v| {
                    let l = line(v.span());
                    Value {
                        text: v.into_inner(),
                        origin: origin(key, l),
                    }
                })
                .collect();
            raw.many.insert(key.to_string(), values);
        }
    }
    raw.discovery = table.discovery;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(side: Side, a: &[&str]) -> Result<Option<Raw>, String> {
        parse_flags(side, a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn a_config_file_says_what_flags_say_and_flags_win() {
        let text = "[reverse]\nserver = \"127.0.0.1:50051\"\nrelays = [\"127.0.0.1:7000@x\", \"127.0.0.1:7001@y\"]\ngrace = 2.5\ndiscovery = true\n";
        let file = parse_config(text, "k.toml", Side::Reverse).unwrap();
        assert_eq!(
            file.one["server"],
            Value {
                text: "127.0.0.1:50051".into(),
                origin: "k.toml:2 reverse.server".into()
            }
        );
        assert_eq!(file.many["relays"].len(), 2);
        assert_eq!(file.many["relays"][1].origin, "k.toml:3 reverse.relays");
        assert_eq!(file.one["grace"].text, "2.5");
        let cli = flags(
            Side::Reverse,
            &["--server", "127.0.0.1:1", "--relay", "127.0.0.1:9@z"],
        )
        .unwrap()
        .unwrap();
        let merged = cli.over(file);
        assert_eq!(merged.one["server"].text, "127.0.0.1:1");
        assert_eq!(merged.one["server"].origin, "--server");
        assert_eq!(
            merged.many["relays"].len(),
            1,
            "a flag's list replaces the file's"
        );
        assert_eq!(merged.discovery, Some(true));
        // A side's table only: the other one is not read.
        assert_eq!(
            parse_config(text, "k.toml", Side::Forward).unwrap(),
            Raw::default()
        );
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let e = parse_config(
            "[reverse]\nserver = \"x\"\nsevrer = \"y\"\n",
            "k.toml",
            Side::Reverse,
        )
        .unwrap_err();
        assert!(e.starts_with("k.toml: TOML parse error at line 3"), "{e}");
        assert!(e.contains("unknown field `sevrer`"), "{e}");
        let e = parse_config(
            "[forward]\nserver = \"127.0.0.1:1\"\n",
            "k.toml",
            Side::Forward,
        )
        .unwrap_err();
        assert_eq!(e, "k.toml:2 [forward] has no key \"server\"");
        let e = parse_config("[reverse]\ngrace = \"long\"\n", "k.toml", Side::Reverse).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn flags_are_checked_by_side() {
        assert!(flags(Side::Reverse, &["--help"]).unwrap().is_none());
        assert_eq!(
            flags(Side::Forward, &["--server", "x"]).unwrap_err(),
            "unknown flag \"--server\" for `keynet forward` (see --help)"
        );
        assert_eq!(
            flags(Side::Reverse, &["--token", "x"]).unwrap_err(),
            "unknown flag \"--token\" for `keynet reverse` (see --help)"
        );
        assert_eq!(
            flags(Side::Reverse, &["--server"]).unwrap_err(),
            "--server needs a value"
        );
        assert_eq!(
            flags(Side::Reverse, &["--server", "a", "--server", "b"]).unwrap_err(),
            "--server given twice"
        );
        let f = flags(
            Side::Forward,
            &["--token", "t", "--insecure-token-arg", "--relay", "r"],
        )
        .unwrap()
        .unwrap();
        assert!(f.insecure_token_arg && f.token_arg.is_some() && f.many["relays"].len() == 1);
    }
}
