//! `scorer keys`: make, list and revoke the API keys kept (hashed) in Postgres.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use scorer_jobs::keys::ApiKey;
use scorer_jobs::{AuditStore, PostgresAuditStore, PostgresKeyStore};
use uuid::Uuid;

#[derive(Args)]
pub struct KeysArgs {
    /// PostgreSQL holding the keys (the service's database).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Subcommand)]
pub enum KeysAction {
    /// Make a key for a tenant and print it (the only time it is shown).
    Create {
        /// The tenant the key acts for: it sees only this tenant's jobs and batches.
        #[arg(long)]
        tenant: String,
        /// A note to tell keys apart (e.g. who holds it).
        #[arg(long)]
        name: Option<String>,
        /// Requests per minute this key may make, per API process (unset: unlimited).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate_limit: Option<u32>,
    },
    /// List keys (never the keys themselves: id, tenant, name, prefix, limits, dates).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key by id; API processes stop accepting it within their key cache time (10 s).
    Revoke { id: Uuid },
}

fn describe(k: &ApiKey) -> serde_json::Value {
    serde_json::json!({
        "id": k.id,
        "tenant": k.tenant,
        "name": k.name,
        "prefix": k.prefix,
        "rate_limit_per_minute": k.rate_limit_per_minute,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
    })
}

/// Runs one `scorer keys` command; prints JSON (one object, or one per line for `list`).
pub async fn main(args: KeysArgs) -> Result<()> {
    let audit = PostgresAuditStore::connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    audit.migrate().await.context("applying migrations")?;
    let keys = PostgresKeyStore::new(audit.pool().clone());
    match args.action {
        KeysAction::Create {
            tenant,
            name,
            rate_limit,
        } => {
            anyhow::ensure!(!tenant.trim().is_empty(), "--tenant must not be empty");
            let (key, secret) = keys
                .create(&tenant, name.as_deref(), rate_limit)
                .await
                .context("creating the key")?;
            let mut shown = describe(&key);
            shown["key"] = serde_json::Value::String(secret);
            println!("{shown}");
            eprintln!("store the key now: it is not kept and cannot be shown again");
        }
        KeysAction::List { tenant, all } => {
            for key in keys
                .list(tenant.as_deref(), all)
                .await
                .context("listing keys")?
            {
                println!("{}", describe(&key));
            }
        }
        KeysAction::Revoke { id } => match keys.revoke(id).await.context("revoking the key")? {
            Some(key) => println!("{}", describe(&key)),
            None => anyhow::bail!("no live key {id} (unknown, or revoked already)"),
        },
    }
    Ok(())
}
