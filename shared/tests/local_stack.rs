//! The local stack's stand-in for Lambda's per-function deadline: `local-aws provision` writes
//! each function's template `Timeout` into the env file, and the functions read it.

use std::time::{Duration, Instant, SystemTime};

#[test]
fn the_env_file_and_the_functions_name_the_timeout_alike() {
    for f in ["processor", "extraction", "my-fn"] {
        assert_eq!(
            local_aws::local_timeout_var(f),
            shared::local_timeout_var(f)
        );
    }
}

#[test]
fn a_local_function_gets_its_template_timeout_not_the_watch_deadline() {
    // cargo lambda watch's deadline: 30 s from now.
    let watch = SystemTime::now() + Duration::from_secs(30);
    let margin = Duration::from_secs(2);
    let before = Instant::now();
    // Without the variable (AWS), Lambda's deadline counts.
    let d = shared::invocation_deadline(watch, margin);
    assert!(d <= before + Duration::from_secs(29), "{:?}", d - before);
    // The other test of this binary reads no variables.
    std::env::set_var("AWS_LAMBDA_FUNCTION_NAME", "processor");
    std::env::set_var(shared::local_timeout_var("processor"), "90");
    let d = shared::invocation_deadline(watch, margin);
    let left = d - before;
    assert!(
        left >= Duration::from_secs(87) && left <= Duration::from_millis(88_500),
        "{left:?}"
    );
}
