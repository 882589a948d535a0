//! `scorer keys` against the real Postgres: create prints the key once (only its hash is
//! stored), list never shows it, revoke marks it and refuses a second time.

use std::process::{Command, Output};

use scorer_testkit::database_url;
use serde_json::Value;

fn keys(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scorer"))
        .arg("keys")
        .args(args)
        .env("DATABASE_URL", database_url())
        .output()
        .expect("scorer runs")
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn create_list_revoke() {
    let tenant = format!("cli-{}", uuid::Uuid::new_v4().simple());
    let created = json_lines(&keys(&[
        "create",
        "--tenant",
        &tenant,
        "--name",
        "ci",
        "--rate-limit",
        "60",
    ]));
    let key = &created[0];
    let secret = key["key"].as_str().expect("the key is shown");
    assert!(secret.starts_with("sk-scorer-"), "{key}");
    assert!(secret.starts_with(key["prefix"].as_str().expect("prefix")));
    assert_eq!(key["tenant"], tenant.as_str());
    assert_eq!(key["rate_limit_per_minute"], 60);
    let id = key["id"].as_str().expect("id");

    let listed = json_lines(&keys(&["list", "--tenant", &tenant]));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id);
    assert!(listed[0].get("key").is_none(), "list never shows keys");
    assert!(
        !String::from_utf8_lossy(&keys(&["list"]).stdout).contains(secret),
        "no listing holds the key"
    );

    let revoked = json_lines(&keys(&["revoke", id]));
    assert!(revoked[0]["revoked_at"].is_string(), "{revoked:?}");
    assert!(json_lines(&keys(&["list", "--tenant", &tenant])).is_empty());
    assert_eq!(
        json_lines(&keys(&["list", "--tenant", &tenant, "--all"])).len(),
        1
    );
    let again = keys(&["revoke", id]);
    assert!(!again.status.success(), "revoking twice is an error");
    assert!(String::from_utf8_lossy(&again.stderr).contains("no live key"));

    let bad = keys(&["create", "--tenant", &tenant, "--rate-limit", "0"]);
    assert!(!bad.status.success(), "a zero rate limit is refused");
}
