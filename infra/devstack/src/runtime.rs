//! A local Lambda runtime for the queue-driven functions: each invocation starts the function's
//! binary with `AWS_LAMBDA_RUNTIME_API` pointing at a Runtime API served here for that one
//! invocation (`GET …/invocation/next` hands out the event with the template timeout as its
//! deadline; `POST …/response` and `POST …/error` end it). Like Lambda:
//!
//! - the deadline is the function's own template `Timeout`, and a function still running at it
//!   is killed (`Task timed out`);
//! - a process that exits (or aborts) before answering fails the invocation at once
//!   (`Runtime.ExitError`);
//! - an init error (`POST …/init/error`) fails it too.
//!
//! `cargo lambda watch` plays this part for the HTTP functions; for the SQS consumers it was
//! not faithful enough under crashes (it loses invocations once instances die) and gives every
//! invocation a 30 s deadline. Every invocation is a cold start here: simple and crash-proof.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

/// How one function is run.
#[derive(Debug, Clone)]
pub struct LocalFunction {
    /// `target/debug/<binary>`.
    pub binary: PathBuf,
    pub name: String,
    /// The environment of the function (the local env file's variables).
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The function's response body.
    Response(String),
    /// `errorType` and message: the function's own error, a runtime exit, a timeout.
    Error { kind: String, message: String },
}

struct Call {
    request_id: String,
    event: String,
    deadline_ms: i64,
    arn: String,
    handed_out: Mutex<bool>,
    ended: Mutex<Option<tokio::sync::oneshot::Sender<Ended>>>,
}

impl Call {
    fn end(&self, how: Ended) {
        if let Some(tx) = self.ended.lock().expect("call lock").take() {
            let _ = tx.send(how);
        }
    }
}

async fn next(State(call): State<Arc<Call>>) -> Response {
    let first = {
        let mut handed = call.handed_out.lock().expect("call lock");
        !std::mem::replace(&mut *handed, true)
    };
    if !first {
        // One invocation per process: the next one never comes (the process is stopped).
        std::future::pending::<()>().await;
    }
    let mut headers = HeaderMap::new();
    let header = |v: &str| HeaderValue::from_str(v).expect("an ASCII header value");
    headers.insert("lambda-runtime-aws-request-id", header(&call.request_id));
    headers.insert(
        "lambda-runtime-deadline-ms",
        header(&call.deadline_ms.to_string()),
    );
    headers.insert("lambda-runtime-invoked-function-arn", header(&call.arn));
    headers.insert(
        "lambda-runtime-trace-id",
        header(&format!("Root=1-{}", call.request_id)),
    );
    (StatusCode::OK, headers, call.event.clone()).into_response()
}

async fn response(
    State(call): State<Arc<Call>>,
    Path(id): Path<String>,
    body: String,
) -> StatusCode {
    if id != call.request_id {
        return StatusCode::BAD_REQUEST;
    }
    call.end(Ended::Response(body));
    StatusCode::ACCEPTED
}

fn error_of(headers: &HeaderMap, body: &str) -> Ended {
    let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    Ended::Error {
        kind: parsed["errorType"]
            .as_str()
            .or_else(|| {
                headers
                    .get("lambda-runtime-function-error-type")
                    .and_then(|v| v.to_str().ok())
            })
            .unwrap_or("Unhandled")
            .to_owned(),
        message: parsed["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect(),
    }
}

async fn error(
    State(call): State<Arc<Call>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    if id != call.request_id {
        return StatusCode::BAD_REQUEST;
    }
    call.end(error_of(&headers, &body));
    StatusCode::ACCEPTED
}

async fn init_error(State(call): State<Arc<Call>>, headers: HeaderMap, body: String) -> StatusCode {
    call.end(match error_of(&headers, &body) {
        Ended::Error { message, .. } => Ended::Error {
            kind: "Runtime.InitError".into(),
            message,
        },
        other => other,
    });
    StatusCode::ACCEPTED
}

/// The process of `f`, as Lambda starts it: its environment plus the runtime's variables,
/// with the Runtime API at `api`.
fn command(f: &LocalFunction, api: std::net::SocketAddr) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(&f.binary);
    c.envs(&f.env)
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", &f.name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs one invocation of `f` with `event` and says how it ended.
pub async fn invoke(f: &LocalFunction, event: String) -> Result<Ended, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("no port for the runtime API: {e}"))?;
    let api = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let request_id = uuid::Uuid::new_v4().to_string();
    let call = Arc::new(Call {
        request_id: request_id.clone(),
        event,
        deadline_ms: shared::now_ms() + f.timeout.as_millis() as i64,
        arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{}", f.name),
        handed_out: Mutex::new(false),
        ended: Mutex::new(Some(tx)),
    });
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(call.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut child = command(f, api)
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", f.name),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", &request_id)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", f.binary.display()))?;
    let mut rx = rx;
    let ended = tokio::select! {
        ended = &mut rx => ended.unwrap_or(Ended::Error {
            kind: "Runtime.ExitError".into(),
            message: "the runtime API went away".into(),
        }),
        status = child.wait() => {
            // It may have answered just before it exited.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            rx.try_recv().unwrap_or(Ended::Error {
                kind: "Runtime.ExitError".into(),
                message: format!("the runtime exited before answering ({status})"),
            })
        }
        () = tokio::time::sleep(f.timeout) => Ended::Error {
            kind: "Sandbox.Timedout".into(),
            message: format!("Task timed out after {} seconds", f.timeout.as_secs()),
        },
    };
    let _ = child.kill().await;
    server.abort();
    Ok(ended)
}

/// A cold start of `f`: from the exec to its first `GET …/invocation/next` (the runtime's
/// init done, ready for an event). The process is stopped there; it never gets an event. An
/// init error or an exit before the poll is an error, with what the function said.
pub async fn cold_start(f: &LocalFunction) -> Result<Duration, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("no port for the runtime API: {e}"))?;
    let api = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let polled = tx.clone();
    let failed = tx.clone();
    let app = Router::new()
        .route(
            "/2018-06-01/runtime/invocation/next",
            get(move || async move {
                if let Some(tx) = polled.lock().expect("poll lock").take() {
                    let _ = tx.send(Ok(()));
                }
                std::future::pending::<()>().await;
            }),
        )
        .route(
            "/2018-06-01/runtime/init/error",
            post(move |headers: HeaderMap, body: String| async move {
                let message = match error_of(&headers, &body) {
                    Ended::Error { message, .. } => message,
                    Ended::Response(_) => String::new(),
                };
                if let Some(tx) = failed.lock().expect("poll lock").take() {
                    let _ = tx.send(Err(format!("init error: {message}")));
                }
                StatusCode::ACCEPTED
            }),
        );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let started = std::time::Instant::now();
    let mut child = command(f, api)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", f.binary.display()))?;
    let result = tokio::select! {
        polled = rx => match polled {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the runtime API went away".to_owned()),
        },
        status = child.wait() => Err(format!(
            "exited before its first poll ({})",
            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
        )),
        () = tokio::time::sleep(Duration::from_secs(30)) => Err("no poll within 30 s".to_owned()),
    };
    let _ = child.kill().await;
    server.abort();
    drop(tx);
    result
}

/// Reads a `KEY=VALUE` env file (the one `local-aws provision` writes; values may be quoted).
pub fn read_env_file(path: &std::path::Path) -> Result<BTreeMap<String, String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_are_read_with_later_values_winning_and_quotes_dropped() {
        let dir = std::env::temp_dir().join(format!("envfile-{}", std::process::id()));
        std::fs::write(&dir, "A=1\n# note\nB=\"x=y\"\nA=2\n\n").unwrap();
        let env = read_env_file(&dir).unwrap();
        assert_eq!(env["A"], "2");
        assert_eq!(env["B"], "x=y");
        let _ = std::fs::remove_file(&dir);
    }
}
