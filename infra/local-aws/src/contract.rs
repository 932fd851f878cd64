//! The deployment contract of template.yaml, checked on the real file: the rules a change to the
//! template must not break (SQS event sources, DLQs, FIFO settings, visibility timeouts, IAM,
//! log retention, alarms).

use super::*;

fn template() -> Template {
    Template::load_workspace().expect("template.yaml parses")
}

/// The logical id an intrinsic points at: `!Ref X`, `!GetAtt X.Attr`, and their long forms.
fn target(v: &Yaml) -> Option<String> {
    let (name, arg) = intrinsic(v)?;
    match (name.as_str(), arg) {
        ("Ref", Yaml::String(s)) => Some(s.clone()),
        ("GetAtt", Yaml::String(s)) => s.split_once('.').map(|(id, _)| id.to_owned()),
        ("GetAtt", Yaml::Sequence(parts)) => parts.first()?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn number(v: Option<&Yaml>) -> Option<u64> {
    v.and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
}

/// (function id, queue id, mapping properties) of every SQS event source mapping.
fn sqs_sources(t: &Template) -> Vec<(String, String, Yaml)> {
    let mut out = Vec::new();
    for (id, m) in t.resources_of("AWS::Lambda::EventSourceMapping") {
        let props = m.get("Properties").cloned().unwrap_or(Yaml::Null);
        let function = props
            .get("FunctionName")
            .and_then(target)
            .expect("mapping names its function");
        let queue = props
            .get("EventSourceArn")
            .and_then(target)
            .unwrap_or_else(|| panic!("{id}: source"));
        out.push((function, queue, props));
    }
    // SAM `Events` of type SQS would attach a managed policy with Resource "*".
    for (id, f) in t.resources_of("AWS::Serverless::Function") {
        let events = f
            .get("Properties")
            .and_then(|p| p.get("Events"))
            .and_then(Yaml::as_mapping);
        for (_, e) in events.into_iter().flatten() {
            assert_ne!(
                e.get("Type").and_then(Yaml::as_str),
                Some("SQS"),
                "{id}: use an EventSourceMapping"
            );
        }
    }
    out
}

/// The function's IAM statements.
fn statements<'a>(t: &'a Template, function: &str) -> Vec<&'a Yaml> {
    let f = t
        .resources_of("AWS::Serverless::Function")
        .find(|(id, _)| *id == function)
        .unwrap()
        .1;
    f.get("Properties")
        .and_then(|p| p.get("Policies"))
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("Statement").and_then(Yaml::as_sequence))
        .flatten()
        .collect()
}

#[test]
fn every_sqs_event_source_reports_batch_item_failures_in_batches_of_at_most_ten() {
    let t = template();
    let sources = sqs_sources(&t);
    assert!(sources.len() >= 3, "{sources:?}");
    for (function, queue, props) in sources {
        let types: Vec<&str> = props
            .get("FunctionResponseTypes")
            .and_then(Yaml::as_sequence)
            .map(|s| s.iter().filter_map(Yaml::as_str).collect())
            .unwrap_or_default();
        assert!(
            types.contains(&"ReportBatchItemFailures"),
            "{function} on {queue}"
        );
        let batch = number(props.get("BatchSize")).unwrap_or(10);
        assert!(batch <= 10, "{function}: BatchSize {batch}");
        assert!(
            props
                .get("ScalingConfig")
                .and_then(|s| s.get("MaximumConcurrency"))
                .is_some(),
            "{function}: MaximumConcurrency bounds the load on Postgres and the upstreams"
        );
        // The function may poll exactly that queue.
        let polls = statements(&t, &function).iter().any(|st| {
            let receives = st
                .get("Action")
                .and_then(Yaml::as_sequence)
                .is_some_and(|a| a.iter().any(|a| a.as_str() == Some("sqs:ReceiveMessage")));
            receives && st.get("Resource").and_then(target).as_deref() == Some(queue.as_str())
        });
        assert!(polls, "{function} has no sqs:ReceiveMessage on {queue}");
    }
}

#[test]
fn every_consumed_queue_has_a_dead_letter_queue_and_fifo_settings_match() {
    let t = template();
    let consumed: Vec<String> = sqs_sources(&t).into_iter().map(|(_, q, _)| q).collect();
    let mut dlqs = Vec::new();
    for (id, q) in t.resources_of("AWS::SQS::Queue") {
        let props = q.get("Properties").expect("queue properties");
        if let Some(redrive) = props.get("RedrivePolicy") {
            let dlq = redrive
                .get("deadLetterTargetArn")
                .and_then(target)
                .expect("DLQ target");
            assert!(
                number(redrive.get("maxReceiveCount")).is_some_and(|n| n >= 3),
                "{id}"
            );
            dlqs.push(dlq);
        }
        let fifo = props
            .get("FifoQueue")
            .and_then(Yaml::as_bool)
            .unwrap_or(false);
        let name = props
            .get("QueueName")
            .and_then(intrinsic)
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        assert_eq!(
            fifo,
            name.ends_with(".fifo"),
            "{id}: FifoQueue and the .fifo name agree"
        );
        if fifo {
            assert_eq!(
                props
                    .get("ContentBasedDeduplication")
                    .and_then(Yaml::as_bool),
                Some(false),
                "{id}: we send our own dedup ids"
            );
        }
    }
    for q in &consumed {
        let has_redrive = t.resources_of("AWS::SQS::Queue").any(|(id, r)| {
            id == q
                && r.get("Properties")
                    .and_then(|p| p.get("RedrivePolicy"))
                    .is_some()
        });
        assert!(has_redrive, "{q} is consumed but has no DLQ");
    }
    assert!(dlqs.len() >= 3);
    // Every DLQ is alarmed.
    let alarmed: Vec<String> = t
        .resources_of("AWS::CloudWatch::Alarm")
        .filter_map(|(_, a)| {
            let dims = a.get("Properties")?.get("Dimensions")?.as_sequence()?;
            dims.iter().find_map(|d| d.get("Value").and_then(target))
        })
        .collect();
    for dlq in dlqs {
        assert!(alarmed.contains(&dlq), "{dlq} has no alarm");
    }
}

#[test]
fn visibility_timeouts_are_at_least_six_times_the_consumers_timeout() {
    let t = template();
    let global_timeout = number(
        t.root
            .get("Globals")
            .and_then(|g| g.get("Function"))
            .and_then(|f| f.get("Timeout")),
    );
    for (function, queue, _) in sqs_sources(&t) {
        let f = t
            .resources_of("AWS::Serverless::Function")
            .find(|(id, _)| *id == function)
            .unwrap()
            .1;
        let timeout = number(f.get("Properties").and_then(|p| p.get("Timeout")))
            .or(global_timeout)
            .unwrap_or(3);
        let q = t
            .resources_of("AWS::SQS::Queue")
            .find(|(id, _)| *id == queue)
            .unwrap()
            .1;
        let visibility =
            number(q.get("Properties").and_then(|p| p.get("VisibilityTimeout"))).unwrap_or(30);
        assert!(
            visibility >= 6 * timeout,
            "{queue}: visibility {visibility} s < 6 x {function}'s {timeout} s"
        );
    }
}

#[test]
fn iam_statements_name_their_actions_and_functions_keep_logs_for_a_while() {
    let t = template();
    for (id, f) in t.resources_of("AWS::Serverless::Function") {
        let props = f.get("Properties").unwrap();
        for policy in props
            .get("Policies")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            for st in policy
                .get("Statement")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                let actions: Vec<&str> = match st.get("Action") {
                    Some(Yaml::Sequence(a)) => a.iter().filter_map(Yaml::as_str).collect(),
                    Some(Yaml::String(a)) => vec![a.as_str()],
                    _ => vec![],
                };
                assert!(!actions.is_empty(), "{id}: a statement without actions");
                for a in actions {
                    assert!(!a.contains('*'), "{id}: wildcard action {a}");
                }
                let resources: Vec<&Yaml> = match st.get("Resource") {
                    Some(Yaml::Sequence(r)) => r.iter().collect(),
                    Some(r) => vec![r],
                    None => vec![],
                };
                for r in resources {
                    assert_ne!(r.as_str(), Some("*"), "{id}: wildcard resource");
                }
            }
        }
        // Its log group, with a retention, under the function's name.
        let name = props
            .get("FunctionName")
            .and_then(intrinsic)
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
            .expect("functions are named after the stack");
        let has_log_group = t.resources_of("AWS::Logs::LogGroup").any(|(_, g)| {
            let p = g.get("Properties").unwrap();
            let group = p
                .get("LogGroupName")
                .and_then(intrinsic)
                .and_then(|(_, v)| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            group == format!("/aws/lambda/{name}") && p.get("RetentionInDays").is_some()
        });
        assert!(has_log_group, "{id} has no log group with a retention");
        let alarmed = t.resources_of("AWS::CloudWatch::Alarm").any(|(_, a)| {
            let p = a.get("Properties").unwrap();
            p.get("MetricName").and_then(Yaml::as_str) == Some("Errors")
                && p.get("Dimensions")
                    .and_then(Yaml::as_sequence)
                    .is_some_and(|d| {
                        d.iter()
                            .any(|d| d.get("Value").and_then(target).as_deref() == Some(id))
                    })
        });
        assert!(alarmed, "{id} has no Errors alarm");
    }
}
