//! `scorer prune`: retention for the Postgres audit trail. Finished jobs and finished batches
//! (with their lines and rejected lines) older than `--older-than` are deleted, a bounded number
//! of rows per transaction (`--batch-size`), so that a large backlog never holds locks for long
//! and a prune can run beside live traffic; queued and running jobs are never deleted.
//!
//! Row deletes rather than time partitions: the `jobs` table is also the arbiter of idempotency
//! keys and the per-tenant bound (unique and partial indexes across all of it), which a
//! partitioned table could only keep per partition; and a batch's lines must go with their
//! batch, not with the month they finished in. docs/OPERATIONS.md ("Retention") has the numbers
//! that make this the right trade and when partitions would be.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use scorer_jobs::{AuditStore, BatchStore, PostgresAuditStore, PostgresBatchStore, Pruned};

/// Largest `--batch-size`: one transaction stays short whatever the flag says.
pub const MAX_BATCH_SIZE: usize = 100_000;

#[derive(Args)]
pub struct PruneArgs {
    /// PostgreSQL holding the audit trail (the service's database).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Retention: jobs and batches that finished longer ago than this are deleted, as a whole
    /// number and a unit: `30d`, `12h`, `90m` or `3600s`.
    #[arg(long, value_name = "DUR", value_parser = parse_age)]
    pub older_than: Duration,
    /// Rows deleted per transaction (1 to 100000).
    #[arg(long, default_value_t = 1_000,
        value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH_SIZE as u64))]
    pub batch_size: u64,
}

/// `30d`, `12h`, `90m`, `3600s`: a positive whole number of days, hours, minutes or seconds.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let bad = || format!("expected a whole number and a unit (d, h, m, s) such as 30d, got {s:?}");
    let split = s.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = s.split_at_checked(split).ok_or_else(bad)?;
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(format!("--older-than must be more than 0, got {s:?}"));
    }
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("--older-than is too large: {s:?}"))
}

/// Runs `scorer prune` and prints what went, as one JSON object.
pub async fn main(args: PruneArgs) -> Result<()> {
    let age = chrono::Duration::from_std(args.older_than)
        .with_context(|| format!("--older-than is too large: {:?}", args.older_than))?;
    let Some(cutoff) = chrono::Utc::now().checked_sub_signed(age) else {
        bail!("--older-than reaches before the calendar starts");
    };
    let limit = args.batch_size as usize;
    let audit = PostgresAuditStore::connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    // The retention index comes with the migrations; applying them is idempotent.
    audit.migrate().await.context("applying migrations")?;
    let batches = PostgresBatchStore::new(audit.pool().clone());
    let mut total = Pruned::default();
    loop {
        let step = batches.prune(cutoff, limit).await?;
        if step == Pruned::default() {
            break;
        }
        total.batches += step.batches;
        total.jobs += step.jobs;
    }
    let mut jobs = 0;
    loop {
        let step = audit.prune(cutoff, limit).await?;
        if step == 0 {
            break;
        }
        jobs += step;
    }
    tracing::info!(%cutoff, jobs, batches = total.batches, batch_jobs = total.jobs, "pruned");
    println!(
        "{}",
        serde_json::json!({
            "cutoff": cutoff,
            "jobs": jobs,
            "batches": total.batches,
            "batch_jobs": total.jobs,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_their_unit() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_age("3600s"), Ok(Duration::from_secs(3_600)));
        for bad in [
            "",
            "d",
            "30",
            "30w",
            "-1d",
            "0d",
            "1.5h",
            "30 d",
            "99999999999999999999d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad:?} is refused");
        }
    }
}
