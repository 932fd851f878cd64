//! Reads `template.yaml` and creates its queues and secrets on an AWS-compatible emulator
//! (moto) through the real SDK, so local names and attributes come from the one template that
//! is deployed and cannot drift from it.
//!
//! Supported: `AWS::SQS::Queue` (FIFO and standard attributes, redrive to a DLQ of the same
//! template) and `AWS::SecretsManager::Secret` (value from the caller, else generated like
//! CloudFormation's `GenerateSecretString`). Intrinsics: `Ref`, `Fn::GetAtt` (`Arn`), `Fn::Sub`,
//! in short (`!Ref`) and long (`{"Ref": …}`) form. Anything else in a property we read is an
//! error, not a silent guess.

use std::collections::BTreeMap;
use std::path::Path;

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read template {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("template is not valid YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("template: {0}")]
    Template(String),
    #[error("emulator call failed ({what}): {message}")]
    Aws { what: String, message: String },
}

/// An SDK error with its whole cause chain (the service's code and message included).
fn aws_err<E: std::error::Error>(what: impl Into<String>, e: E) -> Error {
    Error::Aws {
        what: what.into(),
        message: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
    }
}

/// The variable carrying a function's template `Timeout` in the local env file; the functions
/// read it through `shared::invocation_deadline` (shared's tests check both spell it alike).
pub fn local_timeout_var(binary: &str) -> String {
    format!(
        "LOCAL_FUNCTION_TIMEOUT_SECS_{}",
        binary.to_ascii_uppercase().replace('-', "_")
    )
}

/// A parsed template.
pub struct Template {
    root: Yaml,
}

impl Template {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, Error> {
        Ok(Self {
            root: serde_norway::from_str(text)?,
        })
    }

    /// The template next to the workspace root (for tests run from any crate).
    pub fn load_workspace() -> Result<Self, Error> {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        Self::load(&here.join("../../template.yaml"))
    }

    fn resources(&self) -> impl Iterator<Item = (&str, &Yaml)> {
        self.root
            .get("Resources")
            .and_then(Yaml::as_mapping)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter_map(|(k, v)| Some((k.as_str()?, v)))
    }

    fn resources_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Yaml)> + 'a {
        self.resources()
            .filter(move |(_, r)| r.get("Type").and_then(Yaml::as_str) == Some(kind))
    }

    fn parameter_default(&self, name: &str) -> Option<String> {
        let d = self.root.get("Parameters")?.get(name)?.get("Default")?;
        scalar(d)
    }

    /// Logical ids of the serverless functions.
    pub fn functions(&self) -> Vec<String> {
        self.resources_of("AWS::Serverless::Function")
            .map(|(id, _)| id.to_owned())
            .collect()
    }

    /// The cargo binary a function is built from (`Metadata.BuildProperties.Binary`), which is
    /// also its name under `cargo lambda watch`.
    pub fn function_binary(&self, function: &str) -> Option<String> {
        self.root
            .get("Resources")?
            .get(function)?
            .get("Metadata")?
            .get("BuildProperties")?
            .get("Binary")
            .and_then(scalar)
    }

    /// A function's `Timeout` in seconds (its own, else the Globals', else Lambda's 3).
    pub fn function_timeout(&self, function: &str) -> u32 {
        [
            self.root
                .get("Resources")
                .and_then(|r| r.get(function))
                .and_then(|f| f.get("Properties")),
            self.root.get("Globals").and_then(|g| g.get("Function")),
        ]
        .into_iter()
        .flatten()
        .find_map(|p| p.get("Timeout").and_then(scalar))
        .and_then(|t| t.parse().ok())
        .unwrap_or(3)
    }

    /// The template's SQS event source mappings, resolved to queue and function logical ids.
    /// Disabled mappings are left out; anything but an SQS queue of this template is an error.
    pub fn event_source_mappings(&self) -> Result<Vec<EventSourceMapping>, Error> {
        let mut out = Vec::new();
        for (id, res) in self.resources_of("AWS::Lambda::EventSourceMapping") {
            let props = res
                .get("Properties")
                .ok_or_else(|| Error::Template(format!("{id} has no Properties")))?;
            if props.get("Enabled").and_then(Yaml::as_bool) == Some(false) {
                continue;
            }
            let target = |key: &str, attr: Option<&str>| -> Result<String, Error> {
                let v = props
                    .get(key)
                    .ok_or_else(|| Error::Template(format!("{id}: {key} missing")))?;
                let (tag, inner) = intrinsic(v)
                    .ok_or_else(|| Error::Template(format!("{id}: {key} must be Ref/GetAtt")))?;
                let text = scalar(inner).unwrap_or_default();
                match (tag.as_str(), attr) {
                    ("Ref", None) => Ok(text),
                    ("GetAtt", Some(a)) => text
                        .strip_suffix(&format!(".{a}"))
                        .map(str::to_owned)
                        .ok_or_else(|| Error::Template(format!("{id}: {key} must be X.{a}"))),
                    _ => Err(Error::Template(format!("{id}: unsupported {key}"))),
                }
            };
            let queue = target("EventSourceArn", Some("Arn"))?;
            if self
                .resources_of("AWS::SQS::Queue")
                .all(|(q, _)| q != queue)
            {
                return Err(Error::Template(format!("{id}: {queue} is not a queue")));
            }
            let function = target("FunctionName", None)?;
            let binary = self.function_binary(&function).ok_or_else(|| {
                Error::Template(format!("{id}: {function} has no BuildProperties.Binary"))
            })?;
            let number = |key: &str, default: u32| -> u32 {
                props
                    .get(key)
                    .and_then(scalar)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default)
            };
            let timeout_secs = self.function_timeout(&function);
            // ScalingConfig.MaximumConcurrency: a number, or a Ref to a parameter's default.
            let max_concurrency = props
                .get("ScalingConfig")
                .and_then(|c| c.get("MaximumConcurrency"))
                .and_then(|v| match intrinsic(v) {
                    Some((tag, name)) if tag == "Ref" => self.parameter_default(&scalar(name)?),
                    Some(_) => None,
                    None => scalar(v),
                })
                .and_then(|v| v.parse().ok());
            out.push(EventSourceMapping {
                id: id.to_owned(),
                timeout_secs,
                queue,
                function,
                binary,
                batch_size: number("BatchSize", 10),
                batching_window_secs: number("MaximumBatchingWindowInSeconds", 0),
                report_batch_item_failures: props
                    .get("FunctionResponseTypes")
                    .and_then(Yaml::as_sequence)
                    .is_some_and(|s| {
                        s.iter()
                            .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
                    }),
                max_concurrency,
            });
        }
        Ok(out)
    }
}

/// An `AWS::Lambda::EventSourceMapping` from an SQS queue of the template to a function.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSourceMapping {
    pub id: String,
    /// Queue logical id.
    pub queue: String,
    /// Function logical id.
    pub function: String,
    /// The function's cargo binary (its name under `cargo lambda watch`).
    pub binary: String,
    pub batch_size: u32,
    pub batching_window_secs: u32,
    pub report_batch_item_failures: bool,
    /// The function's `Timeout` (its own, else Globals', else Lambda's 3 s).
    pub timeout_secs: u32,
    /// `ScalingConfig.MaximumConcurrency`: the most batches Lambda runs at once for this
    /// mapping (a parameter's default when it names one).
    pub max_concurrency: Option<u32>,
}

/// What was created, by logical id.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    pub name: String,
    pub region: String,
    pub account: String,
    pub parameters: BTreeMap<String, String>,
    pub queues: BTreeMap<String, Queue>,
    pub secrets: BTreeMap<String, Secret>,
    /// DynamoDB table names by logical id.
    pub tables: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Queue {
    pub name: String,
    pub url: String,
    pub arn: String,
}

#[derive(Debug, Clone)]
pub struct Secret {
    pub name: String,
    pub arn: String,
}

/// Options for [`provision`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Parameter values overriding the template defaults.
    pub parameters: BTreeMap<String, String>,
    /// Secret values (the whole SecretString) by logical id.
    pub secret_values: BTreeMap<String, String>,
}

impl Stack {
    pub fn queue(&self, logical_id: &str) -> &Queue {
        self.queues
            .get(logical_id)
            .unwrap_or_else(|| panic!("template has no queue {logical_id}"))
    }

    /// The environment variables of a function as the template defines them (Globals merged
    /// with the function's own), with every intrinsic resolved to the local resources.
    pub fn function_env(
        &self,
        template: &Template,
        function: &str,
    ) -> Result<BTreeMap<String, String>, Error> {
        let mut env = BTreeMap::new();
        let globals = template
            .root
            .get("Globals")
            .and_then(|g| g.get("Function"))
            .and_then(|f| f.get("Environment"))
            .and_then(|e| e.get("Variables"));
        let own = template
            .root
            .get("Resources")
            .and_then(|r| r.get(function))
            .ok_or_else(|| Error::Template(format!("no resource {function}")))?
            .get("Properties")
            .and_then(|p| p.get("Environment"))
            .and_then(|e| e.get("Variables"));
        for vars in [globals, own].into_iter().flatten() {
            for (k, v) in vars.as_mapping().into_iter().flatten() {
                if let Some(k) = k.as_str() {
                    env.insert(k.to_owned(), self.resolve_string(template, v)?);
                }
            }
        }
        Ok(env)
    }

    fn reference(&self, template: &Template, name: &str) -> Result<String, Error> {
        match name {
            "AWS::StackName" => return Ok(self.name.clone()),
            "AWS::Region" => return Ok(self.region.clone()),
            "AWS::AccountId" => return Ok(self.account.clone()),
            "AWS::Partition" => return Ok("aws".to_owned()),
            "AWS::URLSuffix" => return Ok("amazonaws.com".to_owned()),
            _ => {}
        }
        if let Some(v) = self.parameters.get(name) {
            return Ok(v.clone());
        }
        if let Some(v) = template.parameter_default(name) {
            return Ok(v);
        }
        if let Some(q) = self.queues.get(name) {
            return Ok(q.url.clone());
        }
        if let Some(s) = self.secrets.get(name) {
            return Ok(s.arn.clone());
        }
        if let Some(t) = self.tables.get(name) {
            return Ok(t.clone());
        }
        Err(Error::Template(format!(
            "cannot resolve Ref {name} locally"
        )))
    }

    fn get_att(&self, logical: &str, attr: &str) -> Result<String, Error> {
        match (self.queues.get(logical), attr) {
            (Some(q), "Arn") => Ok(q.arn.clone()),
            (Some(q), "QueueName") => Ok(q.name.clone()),
            (Some(q), "QueueUrl") => Ok(q.url.clone()),
            _ => Err(Error::Template(format!(
                "cannot resolve GetAtt {logical}.{attr} locally"
            ))),
        }
    }

    fn sub(&self, template: &Template, text: &str) -> Result<String, Error> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| Error::Template(format!("unclosed ${{ in `{text}`")))?;
            let name = &after[..end];
            let value = match name.split_once('.') {
                Some((l, a)) if !name.starts_with("AWS::") => self.get_att(l, a)?,
                _ => self.reference(template, name)?,
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Resolves a property value to a string.
    pub fn resolve_string(&self, template: &Template, v: &Yaml) -> Result<String, Error> {
        if let Some(s) = scalar(v) {
            return Ok(s);
        }
        let (tag, inner) =
            intrinsic(v).ok_or_else(|| Error::Template(format!("unsupported value {v:?}")))?;
        match tag.as_str() {
            "Ref" => self.reference(template, inner.as_str().unwrap_or_default()),
            "Sub" => match inner {
                Yaml::String(s) => self.sub(template, s),
                _ => Err(Error::Template(
                    "only the string form of Fn::Sub is supported".into(),
                )),
            },
            "GetAtt" => {
                let (l, a) = match inner {
                    Yaml::String(s) => s
                        .split_once('.')
                        .map(|(l, a)| (l.to_owned(), a.to_owned()))
                        .ok_or_else(|| Error::Template(format!("bad GetAtt {s}")))?,
                    Yaml::Sequence(seq) if seq.len() == 2 => (
                        scalar(&seq[0]).unwrap_or_default(),
                        scalar(&seq[1]).unwrap_or_default(),
                    ),
                    _ => return Err(Error::Template("bad GetAtt".into())),
                };
                self.get_att(&l, &a)
            }
            other => Err(Error::Template(format!(
                "intrinsic {other} is not supported locally"
            ))),
        }
    }

    /// Resolves a value to JSON (for RedrivePolicy and the like).
    fn resolve_json(&self, template: &Template, v: &Yaml) -> Result<Json, Error> {
        if intrinsic(v).is_some() {
            return Ok(Json::String(self.resolve_string(template, v)?));
        }
        Ok(match v {
            Yaml::Mapping(m) => {
                let mut obj = serde_json::Map::new();
                for (k, v) in m {
                    let k = scalar(k).unwrap_or_default();
                    obj.insert(k, self.resolve_json(template, v)?);
                }
                Json::Object(obj)
            }
            Yaml::Sequence(s) => Json::Array(
                s.iter()
                    .map(|v| self.resolve_json(template, v))
                    .collect::<Result<_, _>>()?,
            ),
            Yaml::Bool(b) => Json::Bool(*b),
            Yaml::Number(n) => serde_json::from_str(&n.to_string()).unwrap_or(Json::Null),
            Yaml::String(s) => Json::String(s.clone()),
            _ => Json::Null,
        })
    }
}

fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `(name, argument)` of an intrinsic in short (`!Sub x`) or long (`{"Fn::Sub": x}`) form.
fn intrinsic(v: &Yaml) -> Option<(String, &Yaml)> {
    match v {
        Yaml::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_owned(),
            &t.value,
        )),
        Yaml::Mapping(m) if m.len() == 1 => {
            let (k, inner) = m.iter().next()?;
            let k = k.as_str()?;
            let name = k.strip_prefix("Fn::").unwrap_or(k);
            (k == "Ref" || k.starts_with("Fn::")).then(|| (name.to_owned(), inner))
        }
        _ => None,
    }
}

/// SQS attribute names for the queue properties we pass through.
const QUEUE_ATTRIBUTES: &[(&str, &str)] = &[
    ("FifoQueue", "FifoQueue"),
    ("ContentBasedDeduplication", "ContentBasedDeduplication"),
    ("DeduplicationScope", "DeduplicationScope"),
    ("FifoThroughputLimit", "FifoThroughputLimit"),
    ("VisibilityTimeout", "VisibilityTimeout"),
    ("MessageRetentionPeriod", "MessageRetentionPeriod"),
    ("DelaySeconds", "DelaySeconds"),
    ("MaximumMessageSize", "MaximumMessageSize"),
    (
        "ReceiveMessageWaitTimeSeconds",
        "ReceiveMessageWaitTimeSeconds",
    ),
];

/// Finds the queues of a stack [`provision`] created earlier (by name, through GetQueueUrl),
/// without creating or changing anything.
pub async fn locate_queues(
    template: &Template,
    stack_name: &str,
    sdk: &aws_config::SdkConfig,
    parameters: &BTreeMap<String, String>,
) -> Result<Stack, Error> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut stack = Stack {
        name: stack_name.to_owned(),
        region: region_of(sdk),
        account: "123456789012".to_owned(),
        parameters: parameters.clone(),
        ..Stack::default()
    };
    for (id, res) in template.resources_of("AWS::SQS::Queue") {
        let name = queue_name(template, &stack, id, res)?;
        let url = sqs
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
            .map_err(|e| {
                aws_err(
                    format!("GetQueueUrl {name} (run the provisioning first)"),
                    e,
                )
            })?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        let arn = queue_arn(&sqs, &name, &url).await?;
        stack.queues.insert(id.to_owned(), Queue { name, url, arn });
    }
    Ok(stack)
}

fn region_of(sdk: &aws_config::SdkConfig) -> String {
    sdk.region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "us-east-1".to_owned())
}

fn queue_name(template: &Template, stack: &Stack, id: &str, res: &Yaml) -> Result<String, Error> {
    Ok(
        match res.get("Properties").and_then(|p| p.get("QueueName")) {
            Some(v) => stack.resolve_string(template, v)?,
            None => format!("{}-{id}", stack.name),
        },
    )
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, name: &str, url: &str) -> Result<String, Error> {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| aws_err(format!("GetQueueAttributes {name}"), e))?;
    Ok(attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .unwrap_or_default())
}

/// Creates every queue and secret of `template` under the stack name `stack` (which replaces
/// `${AWS::StackName}`), against whatever endpoint `sdk` points at. Re-running it is harmless.
pub async fn provision(
    template: &Template,
    stack_name: &str,
    sdk: &aws_config::SdkConfig,
    options: &Options,
) -> Result<Stack, Error> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let sm = aws_sdk_secretsmanager::Client::new(sdk);
    let mut stack = Stack {
        name: stack_name.to_owned(),
        region: region_of(sdk),
        account: "123456789012".to_owned(),
        parameters: options.parameters.clone(),
        ..Stack::default()
    };

    // Queues first without redrive (a DLQ must exist before a queue can point at it).
    for (id, res) in template.resources_of("AWS::SQS::Queue") {
        let props = res.get("Properties");
        let name = queue_name(template, &stack, id, res)?;
        let mut req = sqs.create_queue().queue_name(&name);
        for (prop, attr) in QUEUE_ATTRIBUTES {
            if let Some(v) = props.and_then(|p| p.get(*prop)) {
                req = req.attributes(
                    QueueAttributeName::from(*attr),
                    stack.resolve_string(template, v)?,
                );
            }
        }
        let url = req
            .send()
            .await
            .map_err(|e| aws_err(format!("CreateQueue {name}"), e))?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        let arn = queue_arn(&sqs, &name, &url).await?;
        if let Some(account) = arn.split(':').nth(4) {
            stack.account = account.to_owned();
        }
        stack.queues.insert(id.to_owned(), Queue { name, url, arn });
    }
    for (id, res) in template.resources_of("AWS::SQS::Queue") {
        let Some(policy) = res.get("Properties").and_then(|p| p.get("RedrivePolicy")) else {
            continue;
        };
        let policy = stack.resolve_json(template, policy)?;
        let url = stack.queue(id).url.clone();
        sqs.set_queue_attributes()
            .queue_url(&url)
            .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
            .send()
            .await
            .map_err(|e| aws_err(format!("SetQueueAttributes {id}"), e))?;
    }

    provision_tables(template, &mut stack, sdk).await?;

    for (id, res) in template.resources_of("AWS::SecretsManager::Secret") {
        let props = res.get("Properties");
        let name = match props.and_then(|p| p.get("Name")) {
            Some(v) => stack.resolve_string(template, v)?,
            None => format!("{stack_name}/{id}"),
        };
        let value = match options.secret_values.get(id) {
            Some(v) => v.clone(),
            None => generated_secret(props)?,
        };
        let arn = match sm
            .create_secret()
            .name(&name)
            .secret_string(&value)
            .send()
            .await
        {
            Ok(out) => out.arn().unwrap_or_default().to_owned(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_exists_exception()) =>
            {
                sm.put_secret_value()
                    .secret_id(&name)
                    .secret_string(&value)
                    .send()
                    .await
                    .map_err(|e| aws_err(format!("PutSecretValue {name}"), e))?
                    .arn()
                    .unwrap_or_default()
                    .to_owned()
            }
            Err(e) => return Err(aws_err(format!("CreateSecret {name}"), e)),
        };
        stack.secrets.insert(id.to_owned(), Secret { name, arn });
    }
    Ok(stack)
}

/// `AWS::DynamoDB::Table`: key schema, attribute definitions, on-demand billing and TTL.
async fn provision_tables(
    template: &Template,
    stack: &mut Stack,
    sdk: &aws_config::SdkConfig,
) -> Result<(), Error> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TimeToLiveSpecification,
    };
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    for (id, res) in template.resources_of("AWS::DynamoDB::Table") {
        let props = res
            .get("Properties")
            .ok_or_else(|| Error::Template(format!("{id} has no Properties")))?;
        let name = match props.get("TableName") {
            Some(v) => stack.resolve_string(template, v)?,
            None => format!("{}-{id}", stack.name),
        };
        let field = |item: &Yaml, key: &str| -> Result<String, Error> {
            item.get(key)
                .and_then(scalar)
                .ok_or_else(|| Error::Template(format!("{id}: {key} missing")))
        };
        let mut req = ddb
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest);
        for a in props
            .get("AttributeDefinitions")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            req = req.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(field(a, "AttributeName")?)
                    .attribute_type(ScalarAttributeType::from(
                        field(a, "AttributeType")?.as_str(),
                    ))
                    .build()
                    .map_err(|e| Error::Template(e.to_string()))?,
            );
        }
        for k in props
            .get("KeySchema")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            req = req.key_schema(
                KeySchemaElement::builder()
                    .attribute_name(field(k, "AttributeName")?)
                    .key_type(KeyType::from(field(k, "KeyType")?.as_str()))
                    .build()
                    .map_err(|e| Error::Template(e.to_string()))?,
            );
        }
        match req.send().await {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) => {}
            Err(e) => return Err(aws_err(format!("CreateTable {name}"), e)),
        }
        if let Some(ttl) = props.get("TimeToLiveSpecification") {
            let enabled = ttl.get("Enabled").and_then(Yaml::as_bool).unwrap_or(false);
            if enabled {
                ddb.update_time_to_live()
                    .table_name(&name)
                    .time_to_live_specification(
                        TimeToLiveSpecification::builder()
                            .attribute_name(field(ttl, "AttributeName")?)
                            .enabled(true)
                            .build()
                            .map_err(|e| Error::Template(e.to_string()))?,
                    )
                    .send()
                    .await
                    .map_err(|e| aws_err(format!("UpdateTimeToLive {name}"), e))?;
            }
        }
        stack.tables.insert(id.to_owned(), name);
    }
    Ok(())
}

/// The template's `SecretString`, or a value shaped like `GenerateSecretString` would make it.
fn generated_secret(props: Option<&Yaml>) -> Result<String, Error> {
    let random = || uuid::Uuid::new_v4().simple().to_string();
    if let Some(fixed) = props
        .and_then(|p| p.get("SecretString"))
        .and_then(Yaml::as_str)
    {
        return Ok(fixed.to_owned());
    }
    let Some(gen) = props.and_then(|p| p.get("GenerateSecretString")) else {
        return Ok(random());
    };
    let template = gen.get("SecretStringTemplate").and_then(Yaml::as_str);
    let key = gen.get("GenerateStringKey").and_then(Yaml::as_str);
    match (template, key) {
        (Some(t), Some(k)) => {
            let mut obj: serde_json::Map<String, Json> = serde_json::from_str(t)
                .map_err(|e| Error::Template(format!("SecretStringTemplate is not JSON: {e}")))?;
            obj.insert(k.to_owned(), Json::String(random()));
            Ok(Json::Object(obj).to_string())
        }
        _ => Ok(random()),
    }
}

#[cfg(test)]
mod contract;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_sub_ref_and_getatt() {
        let t = Template::parse(
            r#"
Parameters:
  Scope: {Type: String, Default: conversation}
Resources:
  Q: {Type: AWS::SQS::Queue, Properties: {QueueName: !Sub "${AWS::StackName}-q.fifo"}}
"#,
        )
        .unwrap();
        let mut stack = Stack {
            name: "st".into(),
            region: "us-east-1".into(),
            account: "1".into(),
            ..Stack::default()
        };
        stack.queues.insert(
            "Q".into(),
            Queue {
                name: "st-q.fifo".into(),
                url: "http://x/1/st-q.fifo".into(),
                arn: "arn:aws:sqs:us-east-1:1:st-q.fifo".into(),
            },
        );
        let v: Yaml = serde_norway::from_str("!Sub '${AWS::StackName}-${Scope}-${Q.Arn}'").unwrap();
        assert_eq!(
            stack.resolve_string(&t, &v).unwrap(),
            "st-conversation-arn:aws:sqs:us-east-1:1:st-q.fifo"
        );
        let r: Yaml = serde_norway::from_str("{Ref: Q}").unwrap();
        assert_eq!(
            stack.resolve_string(&t, &r).unwrap(),
            "http://x/1/st-q.fifo"
        );
        let g: Yaml = serde_norway::from_str("!GetAtt Q.Arn").unwrap();
        assert!(stack.resolve_string(&t, &g).unwrap().ends_with("st-q.fifo"));
        let bad: Yaml = serde_norway::from_str("!Ref Nope").unwrap();
        assert!(stack.resolve_string(&t, &bad).is_err());
    }

    #[test]
    fn event_source_mappings_are_read_from_the_workspace_template() {
        let t = Template::load_workspace().unwrap();
        let mut m = t.event_source_mappings().unwrap();
        m.sort_by(|a, b| a.binary.cmp(&b.binary));
        let summary: Vec<_> = m
            .iter()
            .map(|m| {
                (
                    m.queue.as_str(),
                    m.binary.as_str(),
                    m.batch_size,
                    m.batching_window_secs,
                    m.report_batch_item_failures,
                    m.timeout_secs,
                    m.max_concurrency,
                )
            })
            .collect();
        // The processor's concurrency is the ProcessorMaxConcurrency parameter's default.
        assert_eq!(
            summary,
            vec![
                ("ExtractionQueue", "extraction", 10, 5, true, 60, Some(5)),
                ("InboundQueue", "processor", 10, 0, true, 90, Some(20)),
                ("StatusQueue", "status", 10, 2, true, 30, Some(5)),
            ]
        );
        assert_eq!(
            t.function_binary("WebhookFunction").as_deref(),
            Some("webhook")
        );
    }

    #[test]
    fn a_mapping_to_something_else_than_a_queue_is_refused() {
        let t = Template::parse(
            r#"
Resources:
  F: {Type: AWS::Serverless::Function, Metadata: {BuildProperties: {Binary: f}}}
  Off: {Type: AWS::Lambda::EventSourceMapping, Properties: {Enabled: false, EventSourceArn: !GetAtt S.Arn, FunctionName: !Ref F}}
  M: {Type: AWS::Lambda::EventSourceMapping, Properties: {EventSourceArn: !GetAtt S.Arn, FunctionName: !Ref F}}
  S: {Type: AWS::Kinesis::Stream}
"#,
        )
        .unwrap();
        let e = t.event_source_mappings().unwrap_err().to_string();
        assert!(e.contains("M: S is not a queue"), "{e}");
    }

    #[test]
    fn generated_secret_follows_the_template() {
        let props: Yaml = serde_norway::from_str(
            r#"{GenerateSecretString: {SecretStringTemplate: '{"a":""}', GenerateStringKey: b}}"#,
        )
        .unwrap();
        let v: Json = serde_json::from_str(&generated_secret(Some(&props)).unwrap()).unwrap();
        assert_eq!(v["a"], "");
        assert_eq!(v["b"].as_str().unwrap().len(), 32);
        let fixed: Yaml = serde_norway::from_str(r#"{SecretString: '{"url":""}'}"#).unwrap();
        assert_eq!(generated_secret(Some(&fixed)).unwrap(), r#"{"url":""}"#);
    }
}

/// The record Lambda's SQS event source hands a function for `msg`, received from the queue
/// `queue_arn` in `region`: body, receipt handle, system attributes (`ApproximateReceiveCount`,
/// `MessageGroupId`, …) and string message attributes.
pub fn lambda_record(
    msg: &aws_sdk_sqs::types::Message,
    queue_arn: &str,
    region: &str,
) -> aws_lambda_events::sqs::SqsMessage {
    use aws_lambda_events::sqs::{SqsMessage, SqsMessageAttribute};
    let mut r = SqsMessage::default();
    r.message_id = msg.message_id.clone();
    r.receipt_handle = msg.receipt_handle.clone();
    r.body = msg.body.clone();
    r.md5_of_body = msg.md5_of_body.clone();
    r.md5_of_message_attributes = msg.md5_of_message_attributes.clone();
    r.attributes = msg
        .attributes()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
        .collect();
    r.message_attributes = msg
        .message_attributes()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            // Binary attributes are not used by this project's messages.
            let s = v.string_value()?;
            let mut a = SqsMessageAttribute::default();
            a.string_value = Some(s.to_owned());
            a.data_type = Some(v.data_type().to_owned());
            Some((k.clone(), a))
        })
        .collect();
    r.event_source = Some("aws:sqs".to_owned());
    r.event_source_arn = Some(queue_arn.to_owned());
    r.aws_region = Some(region.to_owned());
    r
}

/// One receive of up to ten messages (no wait) from `queue_url`, as the records Lambda would
/// hand a function (real receipt handles, every attribute). `visibility`: how long they stay
/// invisible, instead of the queue's own timeout.
pub async fn receive_records(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    visibility: Option<i32>,
) -> Result<Vec<aws_lambda_events::sqs::SqsMessage>, String> {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .set_visibility_timeout(visibility)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .wait_time_seconds(0)
        .send()
        .await
        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
    Ok(out
        .messages()
        .iter()
        .map(|m| lambda_record(m, "arn:aws:sqs:us-east-1:000000000000:test", "us-east-1"))
        .collect())
}

/// The app secret value tests and the local stack use.
pub const DEV_APP_SECRET: &str = "dev-app-secret";
/// The webhook verify token tests and the local stack use.
pub const DEV_VERIFY_TOKEN: &str = "dev-verify-token";

/// Helpers for integration tests that run against the emulator (feature `testing`, which
/// dev-dependencies turn on).
#[cfg(feature = "testing")]
pub mod testing {
    use super::*;
    use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};

    pub use super::{DEV_APP_SECRET, DEV_VERIFY_TOKEN};

    /// SDK configuration for the emulator. Refuses to run unless `AWS_ENDPOINT_URL` points at
    /// this machine, so a test can never reach a real AWS account.
    pub async fn emulator_sdk() -> aws_config::SdkConfig {
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
        sdk_at(&endpoint).await
    }

    /// SDK configuration for an emulator at `endpoint` (test credentials, us-east-1). Refuses
    /// any endpoint but this machine's.
    pub async fn sdk_at(endpoint: &str) -> aws_config::SdkConfig {
        assert!(
            endpoint.starts_with("http://127.0.0.1:") || endpoint.starts_with("http://localhost:"),
            "AWS_ENDPOINT_URL must point at the local emulator (got `{endpoint}`); run the tests with `make test`"
        );
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .endpoint_url(endpoint)
            .load()
            .await
    }

    /// Provisions the workspace template under a fresh, unique stack name.
    pub async fn fresh_stack(sdk: &aws_config::SdkConfig) -> (Template, Stack) {
        let template = Template::load_workspace().expect("template.yaml loads");
        let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut options = Options::default();
        // Tests read extraction jobs at once; the deployed default delays them 15 s.
        options
            .parameters
            .insert("ExtractionDelaySeconds".to_owned(), "0".to_owned());
        options.secret_values.insert(
            "AppSecret".to_owned(),
            serde_json::json!({"meta_app_secret": DEV_APP_SECRET, "meta_verify_token": DEV_VERIFY_TOKEN})
                .to_string(),
        );
        let stack = provision(&template, &name, sdk, &options)
            .await
            .expect("provisioning on the emulator");
        (template, stack)
    }

    /// A message taken off a queue, with what the tests look at.
    #[derive(Debug, Clone)]
    pub struct Received {
        pub body: String,
        pub group_id: Option<String>,
        pub dedup_id: Option<String>,
        pub sequence_number: Option<String>,
        pub attributes: BTreeMap<String, String>,
    }

    /// One receive of up to ten messages (no wait), as the records Lambda would hand a
    /// function: real receipt handles, so a test can return or delay them.
    pub async fn receive_records(
        sdk: &aws_config::SdkConfig,
        queue_url: &str,
    ) -> Vec<aws_lambda_events::sqs::SqsMessage> {
        super::receive_records(&aws_sdk_sqs::Client::new(sdk), queue_url, None)
            .await
            .expect("receive")
    }

    /// Receives and deletes every message on the queue (FIFO groups unblock as messages are
    /// deleted), in receive order.
    pub async fn drain(sdk: &aws_config::SdkConfig, queue_url: &str) -> Vec<Received> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let mut all = Vec::new();
        let mut empty_polls = 0;
        while empty_polls < 2 {
            let out = sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .wait_time_seconds(0)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await
                .expect("receive");
            let msgs = out.messages();
            if msgs.is_empty() {
                empty_polls += 1;
                continue;
            }
            empty_polls = 0;
            let mut deletes = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                let sys = m.attributes();
                let get = |k: MessageSystemAttributeName| sys.and_then(|a| a.get(&k)).cloned();
                all.push(Received {
                    body: m.body().unwrap_or_default().to_owned(),
                    group_id: get(MessageSystemAttributeName::MessageGroupId),
                    dedup_id: get(MessageSystemAttributeName::MessageDeduplicationId),
                    sequence_number: get(MessageSystemAttributeName::SequenceNumber),
                    attributes: m
                        .message_attributes()
                        .map(|a| {
                            a.iter()
                                .map(|(k, v)| {
                                    (k.clone(), v.string_value().unwrap_or_default().to_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
                deletes.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .build()
                        .expect("entry"),
                );
            }
            sqs.delete_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(deletes))
                .send()
                .await
                .expect("delete");
        }
        all
    }
}
