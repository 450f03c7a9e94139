//! Command-line parsing: `mock-upstream [--port N] [--host ADDR] [--require-key KEY]`.

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to bind (default `127.0.0.1`).
    pub host: String,
    /// Port to bind; 0 lets the OS choose.
    pub port: u16,
    /// When set, every `/v1` request must present this key.
    pub require_key: Option<String>,
}

/// Usage text printed for `--help` and on bad arguments.
pub const USAGE: &str = "usage: mock-upstream [--port N] [--host 127.0.0.1] [--require-key KEY]";

/// The flags that take a value.
const FLAGS: [&str; 3] = ["--port", "--host", "--require-key"];

/// Result of parsing: run with a config, or print help and exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Config),
    Help,
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut config = Config {
        host: "127.0.0.1".to_owned(),
        port: 0,
        require_key: None,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let (flag, inline) = split_flag(&arg);
        if !FLAGS.contains(&flag) {
            return Err(format!("unknown argument: {flag}"));
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        apply(&mut config, flag, value)?;
    }
    Ok(Command::Run(config))
}

fn split_flag(arg: &str) -> (&str, Option<String>) {
    match arg.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
        _ => (arg, None),
    }
}

fn apply(config: &mut Config, flag: &str, value: String) -> Result<(), String> {
    match flag {
        "--port" => {
            config.port = value
                .parse()
                .map_err(|_| format!("--port: not a port number: {value}"))?;
        }
        "--host" => config.host = value,
        "--require-key" => config.require_key = Some(value),
        other => return Err(format!("unknown argument: {other}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_flags() {
        let cases: &[(&[&str], Result<Command, String>)] = &[
            (
                &[],
                Ok(Command::Run(Config {
                    host: "127.0.0.1".into(),
                    port: 0,
                    require_key: None,
                })),
            ),
            (
                &["--port", "9000", "--require-key=k1", "--host", "0.0.0.0"],
                Ok(Command::Run(Config {
                    host: "0.0.0.0".into(),
                    port: 9000,
                    require_key: Some("k1".into()),
                })),
            ),
            (&["--help"], Ok(Command::Help)),
            (&["--port"], Err("--port needs a value".into())),
            (&["--port", "x"], Err("--port: not a port number: x".into())),
            (&["--bogus", "1"], Err("unknown argument: --bogus".into())),
            (&["--bogus"], Err("unknown argument: --bogus".into())),
        ];
        for (input, want) in cases {
            assert_eq!(&parse(args(input)), want, "args {input:?}");
        }
    }
}
