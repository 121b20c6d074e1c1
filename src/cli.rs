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
    let mut it = args.into_iter().flat_map(split_short);
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{name} needs a value"))
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
/// -t`, and `-cFILE` or `-c=FILE` is `-c FILE`. Everything else passes as it is.
fn split_short(arg: String) -> Vec<String> {
    let Some(rest) = arg.strip_prefix('-').filter(|r| r.len() > 1 && !r.starts_with('-')) else { return vec![arg] };
    if let Some(value) = rest.strip_prefix('c') {
        return vec!["-c".into(), value.strip_prefix('=').unwrap_or(value).into()];
    }
    if rest.chars().all(|c| "tdhV".contains(c)) {
        return rest.chars().map(|c| format!("-{c}")).collect();
    }
    vec![arg]
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
        for args in [&["-dt", "-cx.yaml"][..], &["-td", "-c=x.yaml"], &["--config=x.yaml", "-t", "-d"]] {
            let Command::Run(a) = p(args).unwrap() else { panic!() };
            assert_eq!((a.config, a.test_only, a.debug), (PathBuf::from("x.yaml"), true, true), "{args:?}");
        }
    }

    #[test]
    fn rejects_bad_flags() {
        assert!(p(&["--nope"]).is_err());
        assert!(p(&["-tx"]).unwrap_err().contains("\"-tx\""), "an unknown letter names the whole argument");
        assert!(p(&["-c"]).is_err());
        assert!(p(&["--shutdown-timeout", "0"]).unwrap_err().contains("range"));
        assert!(p(&["--shutdown-timeout", "121"]).is_err());
        assert!(p(&["--shutdown-timeout", "x"]).is_err());
    }
}
