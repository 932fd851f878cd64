//! The local stack's commands (`make dev` runs them; each prints what it does):
//!
//! - `devstack stubs [--port P] [--sink FILE] [--widget URL] [--status-webhook URL]
//!   [--faults SPEC]`: the stub OpenAI + Graph API server; with `--widget`, also the web chat
//!   demo page at `/demo`; with `--status-webhook`, WhatsApp status echoes signed with
//!   `--app-secret`; `--faults` as in `infra/devstack/src/stubs.rs`.
//! - `devstack seed [--model M] [--webchat-origin O] [--keys-file F]`: migrate `DATABASE_URL`,
//!   create the demo tenant if missing, let its web chat site run on origin O (the demo page),
//!   and with `--keys-file` write fresh admin API keys (platform, demo owner) to F.
//! - `devstack pump [--template F] [--stack S] [--invoke URL] [--concurrency N] [--run DIR
//!   --env-file F] [--journal F]`: poll the template's event source queues on
//!   `AWS_ENDPOINT_URL` (up to the mapping's template `MaximumConcurrency` batches at once per
//!   queue, or N for every queue, 4 where the template sets none) and invoke the functions
//!   under `cargo lambda watch`, or with `--run` start them from DIR with the env file, one
//!   process per invocation (`infra/devstack/src/runtime.rs`); with `--journal`, append a JSON
//!   line per FIFO batch received and per batch that handed records back (the harness's stalls).
//! - `devstack play [--conversation F]`: send the sample conversation as signed webhooks and
//!   print the transcript, the credits charged and the extracted lead.
//! - `devstack send --text T [--from WA_ID] [--name N]`: one more customer message, and its reply.
//! - `devstack follow`: one line per stored message, as they come.
//! - `devstack redrive [--template F] [--stack S] [--max N]`: move the parked inbound records
//!   (the inbound DLQ) back to the inbound queue, in order (`make redrive`).
//! - `devstack load [--conversations C] [--messages M] [--duplicates R] [--instagram R]
//!   [--gap-ms MS] [--webhook-concurrency N] [--faults SPEC] [--restart-postgres CMD] [--moto-log F] [--sqs-log F] [--functions-log F]
//!   [--journal F] [--drain-timeout-secs S] [--max-stall-secs S] [--report-dir D] [--stubs URL]`: the fault
//!   harness against a running stack (`make load`; see `infra/devstack/src/load.rs`); exits
//!   non-zero on any violation.
//! - `devstack coldstart --bins DIR [--against DIR] --env-file F [--runs N]`: each function's
//!   binary size and cold start (exec → its first poll of the Runtime API, median of N runs,
//!   default 15), the two builds' runs interleaved so a drifting machine moves both alike.
//!
//! `--webhook URL` (default `http://127.0.0.1:$WATCH_PORT/lambda-url/webhook/`) and
//! `--app-secret S` (default the local stack's) apply to play, send, load and the stubs' echoes.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use devstack::demo::{Conversation, Customer, DemoError, Observer};
use shared::db::{Db, DbConfig};

const USAGE: &str = "usage: devstack stubs|seed|pump|play|send|follow|redrive|load|coldstart [--flag value]... (see the header of infra/devstack/src/main.rs)";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devstack: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Flags(HashMap<String, String>);

impl Flags {
    fn get(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }
}

fn database() -> Result<Db, String> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (make dev writes it to .local/dev.env)")?;
    Ok(Db::new(DbConfig::new(url)))
}

fn default_webhook() -> String {
    let port = std::env::var("WATCH_PORT").unwrap_or_else(|_| "9000".to_owned());
    format!("http://127.0.0.1:{port}/lambda-url/webhook/")
}

async fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let command = args.next().ok_or(USAGE)?;
    let mut flags = HashMap::new();
    while let Some(flag) = args.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag}\n{USAGE}"))?;
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        flags.insert(name.to_owned(), value);
    }
    let flags = Flags(flags);
    let webhook = flags.get("webhook", &default_webhook());
    let secret = flags.get("app-secret", local_aws::DEV_APP_SECRET);
    match command.as_str() {
        "stubs" => {
            let port: u16 = flags
                .get("port", "0")
                .parse()
                .map_err(|_| "bad --port".to_owned())?;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            println!(
                "stubs listening on http://{addr} (OpenAI: /v1, Graph: /graph, Instagram: /ig)"
            );
            let sink = flags.0.get("sink").map(Into::into);
            let mut stubs = devstack::stubs::Stubs::new(sink);
            let own = std::sync::Arc::get_mut(&mut stubs).expect("not shared yet");
            if let Some(widget) = flags.0.get("widget") {
                own.set_demo(widget, devstack::seed::DEMO_WEBCHAT_SITE);
            }
            if let Some(webhook) = flags.0.get("status-webhook") {
                own.echo_statuses(webhook, &secret);
            }
            let faults = devstack::stubs::Faults::parse(&flags.get("faults", ""))?;
            if faults != Default::default() {
                println!("stub faults: {faults}");
            }
            stubs.set_faults(faults);
            devstack::stubs::serve(listener, stubs)
                .await
                .map_err(|e| e.to_string())
        }
        "seed" => {
            let db = database()?;
            let origins: Vec<String> = flags
                .0
                .get("webchat-origin")
                .map(|o| vec![o.clone()])
                .unwrap_or_default();
            let seeded = devstack::seed::seed(&db, &flags.get("model", "gpt-5-mini"), &origins)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "demo tenant {} {} (WhatsApp {}, Instagram {})",
                seeded.tenant.uuid(),
                if seeded.created {
                    "created"
                } else {
                    "already there"
                },
                devstack::seed::DEMO_WHATSAPP_NUMBER,
                devstack::seed::DEMO_INSTAGRAM_ACCOUNT
            );
            if let Some(path) = flags.0.get("keys-file") {
                let (platform, owner) = devstack::seed::dev_keys(&db, seeded.tenant)
                    .await
                    .map_err(|e| e.to_string())?;
                std::fs::write(
                    path,
                    format!("ADMIN_PLATFORM_KEY={platform}\nADMIN_OWNER_KEY={owner}\n"),
                )
                .map_err(|e| format!("writing {path}: {e}"))?;
                println!("admin API keys (platform, demo tenant owner) in {path}");
            }
            Ok(())
        }
        "pump" => pump(&flags).await,
        "play" => {
            let path = flags.get("conversation", "events/conversation.json");
            play(&webhook, &secret, &path)
                .await
                .map_err(|e| e.to_string())
        }
        "send" => {
            let text = flags.0.get("text").ok_or("send needs --text")?;
            let customer = Customer::new(
                &webhook,
                &secret,
                &flags.get("from", "5215500000001"),
                &flags.get("name", "Local customer"),
            );
            let wamid = customer.say(text).await.map_err(|e| e.to_string())?;
            println!("sent {wamid}");
            if std::env::var("DATABASE_URL").is_ok() {
                let observer = Observer::new(database()?);
                let handled = observer
                    .handled(&wamid, Duration::from_secs(120))
                    .await
                    .map_err(|e| e.to_string())?;
                for reply in &handled.replies {
                    println!("reply: {reply}");
                }
                println!("outcome: {}", handled.outcome);
            }
            Ok(())
        }
        "redrive" => redrive(&flags).await,
        "coldstart" => coldstart(&flags).await,
        "load" => load(&flags, &webhook, &secret).await,
        "follow" => {
            let observer = Observer::new(database()?);
            let mut last = observer.message_mark().await.map_err(|e| e.to_string())?;
            loop {
                match observer.lines_after(last).await {
                    Ok((lines, newest)) => {
                        for line in lines {
                            println!("{line}");
                        }
                        last = newest;
                    }
                    Err(e) => eprintln!("follow: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        _ => Err(USAGE.into()),
    }
}

/// The functions `coldstart` measures: every binary the template deploys.
const FUNCTIONS: [&str; 7] = [
    "webhook",
    "processor",
    "extraction",
    "status",
    "webchat",
    "admin",
    "migrate",
];

async fn coldstart(flags: &Flags) -> Result<(), String> {
    let env_file = flags
        .0
        .get("env-file")
        .ok_or("coldstart needs --env-file")?;
    let env = devstack::runtime::read_env_file(env_file.as_ref())?;
    let mut dirs = vec![flags.0.get("bins").ok_or("coldstart needs --bins")?.clone()];
    dirs.extend(flags.0.get("against").cloned());
    let runs: usize = flags
        .get("runs", "15")
        .parse()
        .map_err(|_| "--runs takes a number")?;
    let function = |dir: &str, name: &str| devstack::runtime::LocalFunction {
        binary: std::path::Path::new(dir).join(name),
        name: name.to_owned(),
        env: env.clone(),
        timeout: Duration::from_secs(30),
    };
    let mut times: HashMap<(usize, &str), Vec<u128>> = HashMap::new();
    for _ in 0..runs {
        for name in FUNCTIONS {
            for (d, dir) in dirs.iter().enumerate() {
                let took = devstack::runtime::cold_start(&function(dir, name))
                    .await
                    .map_err(|e| format!("{dir}/{name}: {e}"))?;
                times.entry((d, name)).or_default().push(took.as_micros());
            }
        }
    }
    let ms = |us: u128| us as f64 / 1000.0;
    println!(
        "{:<11} {:>7}  {:>22}{}",
        "function",
        "size",
        "cold start ms (median, min-max)",
        if dirs.len() > 1 { "   vs --bins" } else { "" }
    );
    for name in FUNCTIONS {
        for (d, dir) in dirs.iter().enumerate() {
            let size = std::fs::metadata(std::path::Path::new(dir).join(name))
                .map(|m| m.len())
                .unwrap_or(0);
            let mut t = times.remove(&(d, name)).unwrap_or_default();
            t.sort_unstable();
            let median = t.get(t.len() / 2).copied().unwrap_or(0);
            let base = (d > 0).then(|| {
                let b0 = std::fs::metadata(std::path::Path::new(&dirs[0]).join(name))
                    .map(|m| m.len())
                    .unwrap_or(1);
                format!("   size {:+.1} %", (size as f64 / b0 as f64 - 1.0) * 100.0)
            });
            println!(
                "{:<11} {:>6.1}M  {:>8.1} ({:.1}-{:.1})  {}{}",
                if d == 0 { name } else { "" },
                size as f64 / 1_048_576.0,
                ms(median),
                ms(t.first().copied().unwrap_or(0)),
                ms(t.last().copied().unwrap_or(0)),
                dir,
                base.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// The template, the emulator's SDK configuration (it must be local) and the stack's queues.
async fn local_queues(
    flags: &Flags,
) -> Result<(local_aws::Template, aws_config::SdkConfig, local_aws::Stack), String> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
    if !endpoint.starts_with("http://127.0.0.1:") && !endpoint.starts_with("http://localhost:") {
        return Err(format!(
            "AWS_ENDPOINT_URL must point at the local emulator (got `{endpoint}`)"
        ));
    }
    let template = local_aws::Template::load(flags.get("template", "template.yaml").as_ref())
        .map_err(|e| e.to_string())?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let stack = local_aws::locate_queues(
        &template,
        &flags.get("stack", "agent-local"),
        &sdk,
        &Default::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok((template, sdk, stack))
}

async fn redrive(flags: &Flags) -> Result<(), String> {
    let (_, sdk, stack) = local_queues(flags).await?;
    let max: usize = flags
        .get("max", "1000")
        .parse()
        .map_err(|_| "--max must be a number")?;
    let publisher = shared::queue::QueuePublisher::new(
        aws_sdk_sqs::Client::new(&sdk),
        shared::queue::RetryPolicy::default(),
    );
    let moved = publisher
        .redrive(
            &stack.queue("InboundDLQ").url,
            &stack.queue("InboundQueue").url,
            max,
        )
        .await
        .map_err(|e| e.to_string())?;
    println!("redrive: {moved} parked inbound record(s) moved back to the inbound queue");
    Ok(())
}

async fn pump(flags: &Flags) -> Result<(), String> {
    let (template, sdk, stack) = local_queues(flags).await?;
    let mut mappings =
        devstack::pump::Mapping::from_template(&template, &stack).map_err(|e| e.to_string())?;
    // --run DIR --env-file F: run the queue-driven functions from DIR here, not through watch.
    if let Some(dir) = flags.0.get("run") {
        let env = devstack::runtime::read_env_file(
            flags
                .0
                .get("env-file")
                .ok_or("--run needs --env-file")?
                .as_ref(),
        )?;
        for m in &mut mappings {
            m.local = Some(devstack::runtime::LocalFunction {
                binary: std::path::Path::new(dir).join(&m.function),
                name: m.function.clone(),
                env: env.clone(),
                timeout: m.timeout,
            });
        }
    }
    let mut pump = devstack::pump::Pump::new(&sdk, flags.get("invoke", "http://127.0.0.1:9000"));
    if let Some(n) = flags.0.get("concurrency") {
        let n = n.parse().map_err(|_| "--concurrency must be a number")?;
        pump.concurrency_override = Some(n);
    }
    if let Some(path) = flags.0.get("journal") {
        let journal = devstack::pump::Journal::open(path.as_ref())
            .map_err(|e| format!("--journal {path}: {e}"))?;
        pump.journal = Some(std::sync::Arc::new(journal));
    }
    let tasks: Vec<_> = mappings
        .into_iter()
        .map(|m| tokio::spawn(pump.clone().run(m)))
        .collect();
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

async fn play(webhook: &str, secret: &str, path: &str) -> Result<(), DemoError> {
    let conversation = Conversation::load(path.as_ref())?;
    let observer = Observer::new(database().map_err(DemoError::Input)?);
    let customer = Customer::new(webhook, secret, &conversation.wa_id, &conversation.name);
    let mark = observer.ledger_mark().await?;
    println!(
        "\n  sample conversation ({path}), as {} sees it on WhatsApp:\n",
        conversation.name
    );
    let mut last_inbound = 0;
    for text in &conversation.messages {
        println!("  {:>12}: {text}", conversation.name);
        let wamid = customer.say(text).await?;
        let handled = observer.handled(&wamid, Duration::from_secs(600)).await?;
        for reply in &handled.replies {
            println!("  {:>12}: {reply}", "Demo Realty");
        }
        if handled.replies.is_empty() {
            println!("  {:>12}  (no reply: {})", "", handled.outcome);
        }
        last_inbound = handled.inbound_id;
    }
    println!("\n  waiting for the lead extraction (queue delay + batching window)...");
    let lead = observer
        .lead_after(&conversation.wa_id, last_inbound, Duration::from_secs(120))
        .await?;
    let (charged, balance) = observer.charged_since(mark).await?;
    let total: i64 = charged.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = charged.iter().map(|(r, n)| format!("{r} {n}")).collect();
    println!(
        "\n  credits charged: {total} ({}); demo balance now {balance}",
        if parts.is_empty() {
            "nothing".to_owned()
        } else {
            parts.join(", ")
        }
    );
    match lead {
        Some(fields) if !fields.is_empty() => {
            println!("  extracted lead:");
            for (k, v) in fields {
                println!("    {k:<16} {v}");
            }
        }
        _ => println!("  extracted lead: nothing found yet"),
    }
    println!();
    Ok(())
}

async fn load(flags: &Flags, webhook: &str, secret: &str) -> Result<(), String> {
    let number = |name: &str, default: &str| -> Result<f64, String> {
        flags
            .get(name, default)
            .parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0)
            .ok_or_else(|| format!("--{name} must be a number >= 0"))
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let path = |name: &str| flags.0.get(name).map(std::path::PathBuf::from);
    let stub_port = env("STUB_PORT").unwrap_or_else(|| "9100".to_owned());
    let cfg = devstack::load::LoadConfig {
        conversations: number("conversations", "20")?.max(1.0) as usize,
        messages: number("messages", "10")?.max(1.0) as usize,
        duplicates: number("duplicates", "0.2")?.min(1.0),
        instagram: number("instagram", "0.2")?.min(1.0),
        gap: Duration::from_millis(number("gap-ms", "500")? as u64),
        webhook_concurrency: number("webhook-concurrency", "16")? as usize,
        webhook: webhook.to_owned(),
        app_secret: secret.to_owned(),
        stubs: flags.get("stubs", &format!("http://127.0.0.1:{stub_port}")),
        faults: flags.get("faults", ""),
        restart_postgres: flags.0.get("restart-postgres").cloned(),
        moto_log: path("moto-log"),
        sqs_log: path("sqs-log"),
        functions_log: path("functions-log"),
        journal: path("journal"),
        dlq_url: env("INBOUND_DLQ_URL"),
        ordering_scope: env("ORDERING_SCOPE").unwrap_or_else(|| "channel_account".to_owned()),
        drain_timeout: Duration::from_secs(number("drain-timeout-secs", "300")? as u64),
        max_stall: Duration::from_secs(number("max-stall-secs", "65")? as u64),
        report_dir: flags.get("report-dir", ".local").into(),
    };
    let db = database()?;
    let report = devstack::load::run(&cfg, &db)
        .await
        .map_err(|e| e.to_string())?;
    print!("{}", devstack::load::table(&report));
    println!(
        "  reports: {0}/load-report.json, {0}/load-report.html",
        cfg.report_dir.display()
    );
    if report.violations.total() > 0 {
        return Err(format!("{} violation(s)", report.violations.total()));
    }
    Ok(())
}
