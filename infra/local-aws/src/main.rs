//! `local-aws provision --template template.yaml --stack agent-local [--param K=V]...
//!  [--secret LogicalId=VALUE]... [--env-file PATH --function LogicalId]`
//!
//! Creates the template's queues and secrets on the emulator named by `AWS_ENDPOINT_URL` and,
//! with `--env-file`, writes the function's environment (resolved to the local resources) in the
//! KEY=VALUE form `cargo lambda watch --env-file` reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use local_aws::{provision, Options, Template};

const USAGE: &str = "usage: local-aws provision --template FILE --stack NAME [--param K=V]... [--secret ID=VALUE]... [--env-file PATH --function ID]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-aws: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("provision") {
        return Err(USAGE.into());
    }
    let mut template = PathBuf::from("template.yaml");
    let mut stack = String::from("agent-local");
    let mut options = Options::default();
    let mut env_file = None;
    let mut functions = Vec::new();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--template" => template = value()?.into(),
            "--stack" => stack = value()?,
            "--param" | "--secret" => {
                let v = value()?;
                let (k, val) = v
                    .split_once('=')
                    .ok_or_else(|| format!("{flag} takes KEY=VALUE"))?;
                let map: &mut BTreeMap<String, String> = if flag == "--param" {
                    &mut options.parameters
                } else {
                    &mut options.secret_values
                };
                map.insert(k.to_owned(), val.to_owned());
            }
            "--env-file" => env_file = Some(PathBuf::from(value()?)),
            "--function" => functions.push(value()?),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let tpl = Template::load(&template).map_err(|e| e.to_string())?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let created = provision(&tpl, &stack, &sdk, &options)
        .await
        .map_err(|e| e.to_string())?;
    for (id, q) in &created.queues {
        println!("queue  {id:<16} {}", q.url);
    }
    for (id, t) in &created.tables {
        println!("table  {id:<16} {t}");
    }
    for (id, s) in &created.secrets {
        println!("secret {id:<16} {}", s.name);
    }
    if let Some(path) = env_file {
        if functions.is_empty() {
            functions = tpl.functions();
        }
        let mut merged = BTreeMap::new();
        for f in &functions {
            merged.extend(created.function_env(&tpl, f).map_err(|e| e.to_string())?);
            // `cargo lambda watch` gives every invocation a 30 s deadline; each function reads
            // its template Timeout from here instead (shared::invocation_deadline).
            if let Some(binary) = tpl.function_binary(f) {
                merged.insert(
                    local_aws::local_timeout_var(&binary),
                    tpl.function_timeout(f).to_string(),
                );
            }
        }
        let text: String = merged.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("env    {}", path.display());
    }
    Ok(())
}
