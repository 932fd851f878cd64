//! The local network guard: keeps everything run on a developer's machine or in CI on
//! loopback.
//!
//! `make` (infra/scripts/env.sh) sets `NETWORK_GUARD=loopback` for every function and test it
//! starts. Then
//! - the AWS SDK configuration refuses to load unless every AWS endpoint it would use
//!   (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`) is a loopback address: a function that
//!   would talk to real AWS stops at start-up and says why;
//! - every HTTP client the product builds ([`http_client`]) sends a request for a
//!   non-loopback host to a dead end on loopback instead (the connection is refused at once) and
//!   logs the refused host, whatever its scheme, IP literal or redirect.
//!
//! `NETWORK_GUARD=loopback-aws` guards the AWS endpoints only (`make dev` with real OpenAI or
//! Graph credentials). Unset, as in a deployment, the guard does nothing.

use std::fmt;
use std::net::IpAddr;

use reqwest::Url;

pub const ENV: &str = "NETWORK_GUARD";

/// Where a refused request goes: loopback's discard port, where nothing listens.
pub const DEAD_END: &str = "http://127.0.0.1:9";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    Off,
    /// AWS endpoints and HTTP upstreams must be loopback.
    Loopback,
    /// Only the AWS endpoints must be loopback.
    LoopbackAws,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    #[error("{ENV}={0:?} is not a guard: use loopback or loopback-aws, or unset it")]
    UnknownMode(String),
    #[error(
        "{ENV} is set but AWS_ENDPOINT_URL is not: this would talk to real AWS; \
         point AWS_ENDPOINT_URL at the local emulator (make dev and make test do)"
    )]
    NoAwsEndpoint,
    #[error("{ENV} is set and {var} is not a loopback address ({host}): refusing to talk to it")]
    NotLoopback { var: String, host: String },
}

impl Guard {
    pub fn parse(value: Option<&str>) -> Result<Guard, GuardError> {
        match value.map(str::trim) {
            None | Some("") | Some("off") => Ok(Guard::Off),
            Some("loopback") => Ok(Guard::Loopback),
            Some("loopback-aws") => Ok(Guard::LoopbackAws),
            Some(other) => Err(GuardError::UnknownMode(other.to_owned())),
        }
    }

    /// The process's guard. A value that names no guard guards everything: a typo must not
    /// open the network.
    pub fn from_env() -> Guard {
        Guard::parse(std::env::var(ENV).ok().as_deref()).unwrap_or(Guard::Loopback)
    }

    pub fn guards_http(self) -> bool {
        self == Guard::Loopback
    }

    pub fn guards_aws(self) -> bool {
        self != Guard::Off
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guard::Off => "off",
            Guard::Loopback => "loopback",
            Guard::LoopbackAws => "loopback-aws",
        })
    }
}

/// `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub fn is_loopback_url(url: &Url) -> bool {
    url.host_str().is_some_and(is_loopback_host)
}

/// Checks the endpoints the AWS SDK will use, from the variables it reads
/// (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`).
pub fn check_aws_endpoints<'a>(
    guard: Guard,
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), GuardError> {
    if !guard.guards_aws() {
        return Ok(());
    }
    let mut general = false;
    for (name, value) in vars {
        if name != "AWS_ENDPOINT_URL" && !name.starts_with("AWS_ENDPOINT_URL_") {
            continue;
        }
        general |= name == "AWS_ENDPOINT_URL";
        let host = Url::parse(value)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        if !is_loopback_host(&host) {
            return Err(GuardError::NotLoopback {
                var: name.to_owned(),
                host: if host.is_empty() {
                    value.to_owned()
                } else {
                    host
                },
            });
        }
    }
    if general {
        Ok(())
    } else {
        Err(GuardError::NoAwsEndpoint)
    }
}

/// The guard's decision for one request: `Some(dead end)` when it must not leave loopback.
pub fn divert(guard: Guard, url: &Url) -> Option<&'static str> {
    (guard.guards_http() && !is_loopback_url(url)).then_some(DEAD_END)
}

/// A reqwest client builder under the process's guard.
pub fn http_client() -> reqwest::ClientBuilder {
    http_client_with(Guard::from_env(), DEAD_END)
}

/// A reqwest client builder under `guard`, sending refused requests to `dead_end` (a test
/// passes a listener of its own to see what would have left the machine).
pub fn http_client_with(guard: Guard, dead_end: &str) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    if !guard.guards_http() {
        return builder;
    }
    let dead_end = dead_end.to_owned();
    // A custom proxy also turns off the environment's proxies, which is what we want: this
    // rule alone decides.
    builder.proxy(reqwest::Proxy::custom(move |url| {
        divert(guard, url).map(|_| {
            tracing::error!(
                host = url.host_str().unwrap_or(""),
                guard = %guard,
                "network guard: refused a request to a non-loopback host"
            );
            dead_end.clone()
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_typos_guard_everything() {
        assert_eq!(Guard::parse(None), Ok(Guard::Off));
        assert_eq!(Guard::parse(Some("")), Ok(Guard::Off));
        assert_eq!(Guard::parse(Some("loopback")), Ok(Guard::Loopback));
        assert_eq!(Guard::parse(Some("loopback-aws")), Ok(Guard::LoopbackAws));
        assert!(matches!(
            Guard::parse(Some("lopback")),
            Err(GuardError::UnknownMode(_))
        ));
        assert!(Guard::Loopback.guards_http() && Guard::Loopback.guards_aws());
        assert!(!Guard::LoopbackAws.guards_http() && Guard::LoopbackAws.guards_aws());
        assert!(!Guard::Off.guards_http() && !Guard::Off.guards_aws());
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "127.8.9.10",
            "localhost",
            "LOCALHOST",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "graph.facebook.com",
            "10.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "localhost.evil.com",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn aws_endpoints_must_all_be_loopback() {
        let ok = [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
            ("AWS_ENDPOINT_URL_SQS", "http://localhost:4567"),
            ("HOME", "/root"),
        ];
        assert_eq!(check_aws_endpoints(Guard::Loopback, ok), Ok(()));
        assert_eq!(check_aws_endpoints(Guard::LoopbackAws, ok), Ok(()));
        assert_eq!(
            check_aws_endpoints(Guard::Loopback, [("HOME", "/root")]),
            Err(GuardError::NoAwsEndpoint)
        );
        let real = [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
            (
                "AWS_ENDPOINT_URL_SQS",
                "https://sqs.us-east-1.amazonaws.com",
            ),
        ];
        assert_eq!(
            check_aws_endpoints(Guard::LoopbackAws, real),
            Err(GuardError::NotLoopback {
                var: "AWS_ENDPOINT_URL_SQS".into(),
                host: "sqs.us-east-1.amazonaws.com".into()
            })
        );
        assert!(check_aws_endpoints(Guard::Loopback, [("AWS_ENDPOINT_URL", "nonsense")]).is_err());
        // Off: a deployment uses the real endpoints.
        assert_eq!(check_aws_endpoints(Guard::Off, real), Ok(()));
        assert_eq!(check_aws_endpoints(Guard::Off, []), Ok(()));
    }

    #[test]
    fn only_non_loopback_requests_are_diverted() {
        let u = |s: &str| Url::parse(s).unwrap();
        for s in [
            "https://graph.facebook.com/v25.0/1/messages",
            "http://api.openai.com/v1",
            "https://157.240.1.35/",
            "http://[2a03:2880::1]/",
        ] {
            assert_eq!(divert(Guard::Loopback, &u(s)), Some(DEAD_END), "{s}");
            assert_eq!(divert(Guard::LoopbackAws, &u(s)), None, "{s}");
            assert_eq!(divert(Guard::Off, &u(s)), None, "{s}");
        }
        for s in [
            "http://127.0.0.1:9100/graph",
            "http://localhost:1/",
            "http://[::1]:80/",
        ] {
            assert_eq!(divert(Guard::Loopback, &u(s)), None, "{s}");
        }
    }
}
