//! The idempotency record on DynamoDB (emulator; table created from template.yaml).

use std::time::Duration;

use local_aws::testing::{emulator_sdk, fresh_stack};
use shared::idempotency::{Claim, IdempotencyStore};

async fn store() -> IdempotencyStore {
    let sdk = emulator_sdk().await;
    let (_, stack) = fresh_stack(&sdk).await;
    IdempotencyStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        stack.tables["IdempotencyTable"].clone(),
    )
}

#[tokio::test]
async fn a_message_is_claimed_once_then_reported_completed() {
    let s = store().await;
    let hold = Duration::from_secs(60);
    assert_eq!(s.claim("k1", hold).await.unwrap(), Claim::Acquired);
    assert_eq!(
        s.claim("k1", hold).await.unwrap(),
        Claim::InProgress,
        "a duplicate delivery while working"
    );
    s.complete("k1").await.unwrap();
    assert_eq!(
        s.claim("k1", hold).await.unwrap(),
        Claim::Completed,
        "a duplicate after completion"
    );
    s.release("k1").await.unwrap();
    assert_eq!(
        s.claim("k1", hold).await.unwrap(),
        Claim::Completed,
        "release never drops a completed record"
    );
    assert_eq!(
        s.claim("k2", hold).await.unwrap(),
        Claim::Acquired,
        "keys are independent"
    );
}

#[tokio::test]
async fn an_expired_or_released_claim_can_be_taken_again() {
    let s = store().await;
    // A crashed invocation's claim expires with its time.
    assert_eq!(s.claim("k", Duration::ZERO).await.unwrap(), Claim::Acquired);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        s.claim("k", Duration::from_secs(60)).await.unwrap(),
        Claim::Acquired
    );
    // A retryable failure releases its claim for the redelivery.
    s.release("k").await.unwrap();
    assert_eq!(
        s.claim("k", Duration::from_secs(60)).await.unwrap(),
        Claim::Acquired
    );
}
