//! End to end through `make dev`'s own script: starts the whole local stack (moto, Postgres,
//! stub upstreams, the functions under `cargo lambda watch`, the event-source pump) on free
//! ports with its own state directory, waits for "ready" (the sample conversation played),
//! sends one more signed webhook over HTTP, checks the reply at the Graph sink, the rows in
//! Postgres and the extracted lead, runs the web chat browser test (infra/browser) on the demo
//! page, then stops it with Ctrl-C (SIGINT) and checks that everything it started is gone.
//! Then it starts the stack again the way a script would (`make dev | cat`, one process group),
//! stops it with SIGTERM to that group, and checks the same.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devstack::demo::{Customer, Observer};
use serde_json::Value;
use shared::db::{Db, DbConfig};

use devstack::free_port;

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The running script; killed with its whole process group if the test fails midway.
struct Stack {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    state: PathBuf,
}

#[derive(Clone, Copy)]
struct Ports {
    watch: u16,
    moto: u16,
    pg: u16,
    stubs: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            watch: free_port(),
            moto: free_port(),
            pg: free_port(),
            stubs: free_port(),
        }
    }

    fn named(&self) -> [(&'static str, u16); 4] {
        [
            ("watch", self.watch),
            ("moto", self.moto),
            ("postgres", self.pg),
            ("stubs", self.stubs),
        ]
    }
}

/// Processes whose environment carries `DEV_STATE_DIR=<state>`: everything the stack started
/// inherits it, in whatever session or process group it runs.
fn processes_of(state: &std::path::Path) -> Vec<String> {
    let needle = format!("DEV_STATE_DIR={}", state.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    found
}

impl Stack {
    /// Starts `program` (dev.sh or make dev) in the repo root, in a process group of its own,
    /// on `ports` with `state` as its state directory.
    fn start(
        root: &std::path::Path,
        state: &std::path::Path,
        ports: Ports,
        program: &[&str],
    ) -> Stack {
        let mut child = Command::new(program[0])
            .args(&program[1..])
            .current_dir(root)
            .env("DEV_STATE_DIR", state)
            .env("STACK", format!("e2e{}", std::process::id()))
            .env("WATCH_PORT", ports.watch.to_string())
            .env("MOTO_PORT", ports.moto.to_string())
            .env("PG_PORT", ports.pg.to_string())
            .env("STUB_PORT", ports.stubs.to_string())
            // The stack starts its own emulator, database and stubs, as on a fresh machine.
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("DATABASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("GRAPH_ACCESS_TOKEN")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("the local stack starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("make dev | {line}");
                    output.lock().unwrap().push(line);
                }
            });
        }
        Stack {
            child,
            output,
            state: state.to_owned(),
        }
    }

    /// Sends `sig` to the stack's process group and checks that it stops, says so, closes
    /// every port and leaves no process behind.
    fn stop_with(&mut self, sig: &str, ports: Ports, goodbye: bool) {
        self.signal(sig);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "make dev did not stop on {sig}");
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !status.success(),
            "stopped by {sig}, not a clean exit: {status}"
        );
        if goodbye {
            assert!(
                self.output()
                    .contains("stopped everything make dev started"),
                "no goodbye after {sig}:\n{}",
                self.output()
            );
        }
        // When the script is the child it has cleaned up before it exits; behind a pipe the
        // child (the pipeline's shell) ends first and the script goes on stopping things on
        // its own. Either way everything must be gone within the script's stop budget (5 s
        // per service group, then SIGKILL, then Postgres).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let open: Vec<String> = ports
                .named()
                .iter()
                .filter(|(_, port)| listening(*port))
                .map(|(name, port)| format!("{name} on {port}"))
                .collect();
            let left = processes_of(&self.state);
            if open.is_empty() && left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after {sig}, still listening: {open:?}; processes left:\n{}",
                left.join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.child.id())])
            .status();
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Waits until a line satisfies `pred`; panics with the output if the script ends first.
    fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output.lock().unwrap().iter().any(|l| pred(l)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(300));
                panic!(
                    "make dev ended ({status}) before {what}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal("-INT");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            self.signal("-KILL");
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn make_dev_answers_a_signed_webhook_end_to_end_and_stops_cleanly() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let state = std::env::temp_dir().join(format!("devstack-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let ports = Ports::free();
    let Ports {
        watch, pg, stubs, ..
    } = ports;
    // Started the way a terminal starts `make dev`: SIGINT at its default disposition. (A
    // shell started in the background ignores SIGINT and could not trap Ctrl-C; python resets
    // it before handing over to bash, whatever this test process inherited.)
    let mut stack = Stack::start(
        &root,
        &state,
        ports,
        &[
            "python3",
            "-c",
            "import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); \
             os.execvp('bash', ['bash', 'infra/scripts/dev.sh'])",
        ],
    );

    // Cold builds of the functions happen inside; give them time.
    stack.wait_for("ready", Duration::from_secs(1500), |l| l == "ready.");
    let out = stack.output();
    assert!(
        out.contains("Ana Ruiz: Hola, busco un departamento"),
        "{out}"
    );
    assert!(
        out.contains("Demo Realty: [stub model]"),
        "the reply is in the transcript"
    );
    assert!(out.contains("credits charged: "), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("email") && l.contains("ana.ruiz@ejemplo.mx")),
        "the sample lead is printed"
    );

    // One more customer message, signed, over HTTP to the webhook under cargo lambda watch.
    let url = format!("postgres://postgres@127.0.0.1:{pg}/postgres");
    let db = Db::new(DbConfig::new(url.clone()));
    let observer = Observer::new(Db::new(DbConfig::new(url)));
    let mark = observer.ledger_mark().await.unwrap();
    let wa_id = "5215511122233";
    let customer = Customer::new(
        &format!("http://127.0.0.1:{watch}/lambda-url/webhook/"),
        local_aws::testing::DEV_APP_SECRET,
        wa_id,
        "E2E Customer",
    );
    let wamid = customer
        .say("Quiero agendar una visita, escríbanme a e2e.lead@example.com")
        .await
        .unwrap();
    let handled = observer
        .handled(&wamid, Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(handled.outcome, "replied");
    assert_eq!(handled.replies.len(), 1);
    assert!(
        handled.replies[0].contains("e2e.lead@example.com"),
        "{:?}",
        handled.replies
    );

    // The reply reached the Graph API (the sink), to this customer.
    let sent: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{stubs}/_sent"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ours: Vec<_> = sent.iter().filter(|s| s["to"] == wa_id).collect();
    assert_eq!(ours.len(), 1, "{sent:?}");
    assert_eq!(ours[0]["channel"], "whatsapp");
    assert_eq!(ours[0]["text"].as_str(), Some(handled.replies[0].as_str()));

    // Rows in Postgres: the outbound message carries the provider id the sink gave it, and
    // the reply was charged.
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT provider_message_id, status, cost FROM messages
             WHERE direction = 'out' AND id > $1 AND conversation_id =
               (SELECT conversation_id FROM messages WHERE provider_message_id = $2)",
            &[&handled.inbound_id, &wamid],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        ours[0]["id"].as_str()
    );
    assert!(
        row.get::<_, Option<i64>>(2).unwrap_or(0) > 0,
        "the reply has a cost"
    );

    // The lead, extracted through the extraction queue and function.
    let lead = observer
        .lead_after(wa_id, handled.inbound_id, Duration::from_secs(120))
        .await
        .unwrap()
        .expect("a lead row");
    assert!(
        lead.contains(&("email".to_owned(), "e2e.lead@example.com".to_owned())),
        "{lead:?}"
    );
    let (charged, _) = observer.charged_since(mark).await.unwrap();
    let reasons: Vec<&str> = charged.iter().map(|(r, _)| r.as_str()).collect();
    assert!(reasons.contains(&"extraction"), "{charged:?}");
    assert!(charged.iter().all(|(_, n)| *n > 0));

    // The admin API, with the curl example the banner prints (the demo owner's fresh key):
    // the sample conversation and this customer's are listed.
    let curl = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin API:"))
        .expect("the banner shows an admin API example")
        .trim()
        .to_owned();
    let listed = Command::new("bash")
        .args(["-c", &curl])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .expect("curl runs");
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap_or_else(|_| {
        panic!(
            "admin API answer: {}",
            String::from_utf8_lossy(&listed.stdout)
        )
    });
    let contacts: Vec<&str> = listed["data"]
        .as_array()
        .expect("a page of conversations")
        .iter()
        .filter_map(|c| c["contact"]["wa_id"].as_str())
        .collect();
    assert!(contacts.contains(&wa_id), "{listed}");

    // Nothing is parked: `make redrive` (the banner's command) finds the DLQ empty.
    let redrive = Command::new("make")
        .args(["--no-print-directory", "redrive"])
        .current_dir(&root)
        .env("DEV_STATE_DIR", &state)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .output()
        .expect("make redrive runs");
    assert!(
        String::from_utf8_lossy(&redrive.stdout).contains("0 parked inbound record(s) moved"),
        "make redrive: {}{}",
        String::from_utf8_lossy(&redrive.stdout),
        String::from_utf8_lossy(&redrive.stderr)
    );

    // The web chat widget in a real browser on the demo page the stack serves: a visitor's
    // message, the typing indicator, the reply, the history after a reload, a screenshot.
    let shot = root.join("target/webchat.png");
    let _ = std::fs::remove_file(&shot);
    let browser = Command::new("node")
        .arg("infra/browser/webchat.mjs")
        .arg(format!("http://127.0.0.1:{stubs}/demo"))
        .arg(&shot)
        .current_dir(&root)
        .output()
        .expect("node runs the browser test (make test installs it)");
    assert!(
        browser.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&browser.stdout),
        String::from_utf8_lossy(&browser.stderr)
    );
    assert!(
        shot.metadata().unwrap().len() > 1000,
        "a screenshot was saved"
    );
    let answered: i64 = client
        .query_one(
            "SELECT count(*) FROM messages m JOIN channel_accounts ca ON ca.id = m.channel_account_id
             WHERE ca.channel = 'webchat' AND m.direction = 'in' AND m.outcome = 'replied'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        answered, 1,
        "the visitor's message went through the processor once"
    );

    // `make dev` printed a line for the message as it came.
    stack.wait_for("the follow line", Duration::from_secs(10), |l| {
        l.contains("E2E Customer ->") && l.contains("[replied]")
    });

    // Ctrl-C stops everything it started.
    stack.stop_with("-INT", ports, true);
    drop(stack);

    // Again, as a script or supervisor runs it: `make dev` with its output through a pipe, all
    // in one process group, stopped by SIGTERM to that group. make, the script and the pipe's
    // reader all get it, and make passes one more to the script; the script must still stop
    // everything (its goodbye line has no reader left to go to).
    let state = std::env::temp_dir().join(format!("devstack-e2e-term-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let ports = Ports::free();
    let mut stack = Stack::start(
        &root,
        &state,
        ports,
        &["bash", "-c", "make --no-print-directory dev 2>&1 | cat"],
    );
    stack.wait_for("ready again", Duration::from_secs(600), |l| l == "ready.");
    assert!(
        !processes_of(&state).is_empty(),
        "the check sees the stack's processes"
    );
    stack.stop_with("-TERM", ports, false);
}
