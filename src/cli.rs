//! Command-line arguments. Hand-parsed: six flags do not justify an argument-parsing crate.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub config: PathBuf,
    pub test_only: bool,
    pub debug: bool,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Args),
    Help,
    Version,
}

pub const USAGE: &str = "\
llmproxyd — LLM API gateway (LLMProxy-compatible configuration)

Usage: llmproxyd [OPTIONS]

Options:
  -c, --config FILE              configuration file [default: config.yaml]
  -t, --test                     load and validate the configuration, print a summary, exit
  -d, --debug                    verbose logging
      --shutdown-timeout SECS    how long to let requests and streams finish on SIGTERM
                                 (1-120) [default: 30]
  -h, --help                     print this help
  -V, --version                  print the version

Environment:
  ${VAR} and ${VAR:-default} are expanded in every configuration value.
  LLMPROXY_A__B__0__C=value overrides the key a.b[0].c before validation.
  LLMPROXY_ADMIN_AUTH_TOKEN protects the admin API with a bearer token.
  SSL_CERT_FILE names a PEM bundle trusted for https upstreams besides the public roots.
";

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut out = Args {
        config: PathBuf::from("config.yaml"),
        test_only: false,
        debug: false,
        shutdown_timeout: Duration::from_secs(30),
    };
    let mut raw = args.into_iter();
    // The rest of a group of short options written together (`-dt`), still to be taken.
    let mut grouped: std::collections::VecDeque<String> = Default::default();
    loop {
        let arg = match grouped.pop_front() {
            Some(arg) => arg,
            None => match raw.next() {
                Some(arg) => {
                    let mut parts = split_short(arg).into_iter();
                    let first = parts.next().unwrap_or_default();
                    grouped.extend(parts);
                    first
                }
                None => break,
            },
        };
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        // A value is taken as written: `-c -dt.yaml` names the file `-dt.yaml`.
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| grouped.pop_front())
                .or_else(|| raw.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-c" | "--config" => out.config = PathBuf::from(value("--config")?),
            "-t" | "--test" => out.test_only = true,
            "-d" | "--debug" => out.debug = true,
            "--shutdown-timeout" => {
                let v = value("--shutdown-timeout")?;
                let secs: u64 = v.parse().map_err(|_| format!("--shutdown-timeout: {v:?} is not a whole number"))?;
                if !(1..=120).contains(&secs) {
                    return Err(format!("--shutdown-timeout: {secs} is out of range 1-120"));
                }
                out.shutdown_timeout = Duration::from_secs(secs);
            }
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Command::Run(out))
}

/// Short options written together, as LLMProxy's argument parser (clap) took them: `-dt` is `-d
/// -t`, and `-cFILE`, `-c=FILE` or `-tcFILE` end with `-c FILE`. Anything else (a long option,
/// a lone short one, an unknown letter) passes as it is, to be read or refused whole.
fn split_short(arg: String) -> Vec<String> {
    let Some(rest) = arg.strip_prefix('-').filter(|r| r.len() > 1 && !r.starts_with('-')) else { return vec![arg] };
    let mut parts = Vec::new();
    for (i, letter) in rest.char_indices() {
        match letter {
            'c' => {
                parts.push("-c".to_string());
                let value = &rest[i + 1..];
                if !value.is_empty() {
                    parts.push(value.strip_prefix('=').unwrap_or(value).to_string());
                }
                return parts;
            }
            't' | 'd' | 'h' | 'V' => parts.push(format!("-{letter}")),
            _ => return vec![arg],
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags() {
        let Command::Run(a) = p(&["-c", "x.yaml", "-t", "--debug", "--shutdown-timeout=5"]).unwrap() else { panic!() };
        assert_eq!(a.config, PathBuf::from("x.yaml"));
        assert!(a.test_only && a.debug);
        assert_eq!(a.shutdown_timeout, Duration::from_secs(5));
        let Command::Run(d) = p(&[]).unwrap() else { panic!() };
        assert_eq!(d.config, PathBuf::from("config.yaml"));
        assert_eq!(d.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(p(&["-V"]).unwrap(), Command::Version);
        assert_eq!(p(&["--help"]).unwrap(), Command::Help);
        // Short options together, as clap takes them.
        for args in [
            &["-dt", "-cx.yaml"][..],
            &["-td", "-c=x.yaml"],
            &["--config=x.yaml", "-t", "-d"],
            &["-dtc", "x.yaml"],
            &["-d", "-tcx.yaml"],
        ] {
            let Command::Run(a) = p(args).unwrap() else { panic!() };
            assert_eq!((a.config, a.test_only, a.debug), (PathBuf::from("x.yaml"), true, true), "{args:?}");
        }
    }

    #[test]
    fn rejects_bad_flags() {
        assert!(p(&["--nope"]).is_err());
        assert!(p(&["-tx"]).unwrap_err().contains("\"-tx\""), "an unknown letter names the whole argument");
        // A value is never taken apart: a file may be named like options.
        let Command::Run(a) = p(&["--config", "-dt.yaml"]).unwrap() else { panic!() };
        assert_eq!((a.config, a.debug), (PathBuf::from("-dt.yaml"), false));
        assert!(p(&["-c"]).is_err());
        assert!(p(&["--shutdown-timeout", "0"]).unwrap_err().contains("range"));
        assert!(p(&["--shutdown-timeout", "121"]).is_err());
        assert!(p(&["--shutdown-timeout", "x"]).is_err());
    }
}
