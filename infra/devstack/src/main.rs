//! `devstack stubs [--port P] [--sink FILE]`: the stub OpenAI + Graph API server.
//! `devstack seed [--model M]`: migrate `DATABASE_URL` and create the demo tenant if missing.

use std::process::ExitCode;

const USAGE: &str = "usage: devstack stubs [--port P] [--sink FILE] | devstack seed [--model M]";

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

async fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let command = args.next().ok_or(USAGE)?;
    let mut port = 0u16;
    let mut sink = None;
    let mut model = String::from("gpt-5-mini");
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--port" => port = value.parse().map_err(|_| format!("bad port {value}"))?,
            "--sink" => sink = Some(value.into()),
            "--model" => model = value,
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    match command.as_str() {
        "stubs" => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            println!(
                "stubs listening on http://{addr} (OpenAI: /v1, Graph: /graph, Instagram: /ig)"
            );
            devstack::stubs::serve(listener, devstack::stubs::Stubs::new(sink))
                .await
                .map_err(|e| e.to_string())
        }
        "seed" => {
            let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
            let db = shared::db::Db::new(shared::db::DbConfig::new(url));
            let seeded = devstack::seed::seed(&db, &model)
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
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}
