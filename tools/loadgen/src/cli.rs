//! Command-line parsing: `loadgen <rate|stream|get> --url URL [options]`.

use std::time::Duration;

/// Usage text printed for `--help` and on bad arguments.
pub const USAGE: &str = "\
usage: loadgen rate   --url URL [--rate R] [--duration S] [--warmup S] [--connections N]
                      [--timeout S] [--drain S] [--body TEXT | --body-file PATH] [--header 'K: V']...
       loadgen stream --url URL --streams N [--ramp-ms MS] [--timeout S] [--body… --header…]
       loadgen get    --url URL [--reps N] [--warmup-reps N] [--timeout S] [--header…]

rate:   open-loop constant rate R req/s (latency measured from each request's intended send
        time, so a stalled server cannot hide queued requests); R = 0 is closed-loop saturation
        (every connection sends back to back). Requests go over N HTTP/1.1 keep-alive
        connections taken from one shared queue.
stream: N concurrent streamed requests, one connection each (opened before the clock starts),
        started over MS milliseconds; reports time to first token and the gap between chunks.
get:    sequential GETs over one keep-alive connection; reports per-call latency.
Every mode prints one JSON object on stdout.";

/// Which measurement to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Constant-rate (or saturation) load.
    Rate,
    /// Concurrent streams.
    Stream,
    /// Sequential timed GETs.
    Get,
}

/// Everything the command line asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The measurement.
    pub mode: Mode,
    /// Target URL (http only).
    pub url: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Request body (POST when present, GET otherwise).
    pub body: Option<Vec<u8>>,
    /// Requests per second; 0 = closed loop.
    pub rate: f64,
    /// Measured duration.
    pub duration: Duration,
    /// Unmeasured lead-in at the same rate.
    pub warmup: Duration,
    /// Keep-alive connections.
    pub connections: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How long queued requests may still be sent after the schedule ends.
    pub drain: Duration,
    /// Concurrent streams.
    pub streams: usize,
    /// Streams start spread over this long.
    pub ramp: Duration,
    /// Measured repetitions of `get`.
    pub reps: usize,
    /// Unmeasured repetitions of `get` first.
    pub warmup_reps: usize,
}

impl Options {
    fn defaults(mode: Mode) -> Self {
        Self {
            mode,
            url: String::new(),
            headers: Vec::new(),
            body: None,
            rate: 1000.0,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            connections: 64,
            timeout: Duration::from_secs(10),
            drain: Duration::from_secs(10),
            streams: 1000,
            ramp: Duration::from_millis(500),
            reps: 50,
            warmup_reps: 2,
        }
    }
}

/// Result of parsing: run, or print help.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Run with these options.
    Run(Box<Options>),
    /// Print the usage.
    Help,
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut args = args.into_iter();
    let mode = match args.next().as_deref() {
        Some("rate") => Mode::Rate,
        Some("stream") => Mode::Stream,
        Some("get") => Mode::Get,
        Some("-h" | "--help") | None => return Ok(Command::Help),
        Some(other) => return Err(format!("unknown mode {other:?}: use rate, stream or get")),
    };
    let mut o = Options::defaults(mode);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        apply(&mut o, &flag, value)?;
    }
    if o.url.is_empty() {
        return Err("--url is required".into());
    }
    Ok(Command::Run(Box::new(o)))
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: not a number: {value}"))
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    let s: f64 = number(flag, value)?;
    Duration::try_from_secs_f64(s).map_err(|_| format!("{flag}: not a duration: {value}"))
}

fn apply(o: &mut Options, flag: &str, value: String) -> Result<(), String> {
    match flag {
        "--url" => o.url = value,
        "--header" => {
            let (name, v) = value
                .split_once(':')
                .ok_or_else(|| format!("--header: expected 'Name: value', got {value:?}"))?;
            o.headers
                .push((name.trim().to_owned(), v.trim().to_owned()));
        }
        "--body" => o.body = Some(value.into_bytes()),
        "--body-file" => {
            o.body = Some(std::fs::read(&value).map_err(|e| format!("--body-file {value}: {e}"))?);
        }
        "--rate" => o.rate = number(flag, &value)?,
        "--duration" => o.duration = seconds(flag, &value)?,
        "--warmup" => o.warmup = seconds(flag, &value)?,
        "--connections" => o.connections = number::<usize>(flag, &value)?.max(1),
        "--timeout" => o.timeout = seconds(flag, &value)?,
        "--drain" => o.drain = seconds(flag, &value)?,
        "--streams" => o.streams = number::<usize>(flag, &value)?.max(1),
        "--ramp-ms" => o.ramp = Duration::from_millis(number(flag, &value)?),
        "--reps" => o.reps = number::<usize>(flag, &value)?.max(1),
        "--warmup-reps" => o.warmup_reps = number(flag, &value)?,
        other => return Err(format!("unknown flag {other}")),
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
    fn parses_modes_and_flags() {
        let Ok(Command::Run(o)) = parse(args(&[
            "rate",
            "--url",
            "http://127.0.0.1:1/v1/x",
            "--rate",
            "500",
            "--duration",
            "1.5",
            "--header",
            "Authorization: Bearer k",
            "--body",
            "{}",
        ])) else {
            panic!("should parse");
        };
        assert_eq!(o.mode, Mode::Rate);
        assert_eq!(o.rate, 500.0);
        assert_eq!(o.duration, Duration::from_millis(1500));
        assert_eq!(o.headers, vec![("Authorization".into(), "Bearer k".into())]);
        assert_eq!(o.body.as_deref(), Some(&b"{}"[..]));
        assert_eq!(parse(args(&[])), Ok(Command::Help));
        assert!(parse(args(&["rate"])).is_err());
        assert!(parse(args(&["walk", "--url", "x"])).is_err());
        assert!(parse(args(&["get", "--url", "x", "--reps"])).is_err());
        assert!(parse(args(&["get", "--url", "x", "--header", "nocolon"])).is_err());
    }
}
