//! The schema: one set of migrations for both databases, applied in order and at most once, and
//! the day buckets rebuilt when the configured time zone changes.

use std::collections::HashMap;

use super::queries::{self, MS_PER_HOUR};
use super::sql::{Db, Lock, AGG_COLUMNS};
use super::{Aggregate, StoreError};

/// Versioned migrations, in [`super::sql::render`]'s spelling plus `{aggregates}`, the value
/// columns of the first schema's aggregate tables.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_instances.sql"),
    include_str!("migrations/0003_rollups.sql"),
    include_str!("migrations/0004_clients.sql"),
    include_str!("migrations/0005_budget_leases.sql"),
    include_str!("migrations/0006_fit_max_tokens.sql"),
    include_str!("migrations/0007_cost.sql"),
    include_str!("migrations/0008_dimensions.sql"),
    include_str!("migrations/0009_budget_periods.sql"),
    include_str!("migrations/0010_alerts.sql"),
    include_str!("migrations/0011_usage_rollups.sql"),
    include_str!("migrations/0012_sources.sql"),
    // Position 13 belongs to 0013 (columns of `calls`, another branch): until that branch is merged
    // here, 0014 is applied as version 13. The merge puts 0013 before it.
    include_str!("migrations/0014_user_total_day.sql"),
];

/// Aggregate columns added by later migrations: `count_tokens` (version 4), `cost_nanos` and
/// `unpriced_calls` (version 7).
const LATER_AGGREGATES: [&str; 3] = ["count_tokens", "cost_nanos", "unpriced_calls"];

/// `calls {int} NOT NULL, …, l16 {int} NOT NULL,` — the aggregate columns of version 1.
fn first_aggregates() -> String {
    AGG_COLUMNS
        .iter()
        .filter(|c| !LATER_AGGREGATES.contains(c))
        .map(|c| format!("{c} {{int}} NOT NULL,"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A migration with `{aggregates}` expanded, for [`Db::execute_batch`] to render.
fn expand(migration: &str) -> String {
    migration.replace("{aggregates}", &first_aggregates())
}

/// Migration `version` (1-based) in `dialect`'s SQL, for tests that build old databases.
#[cfg(test)]
pub fn rendered(dialect: super::sql::Dialect, version: usize) -> String {
    super::sql::render(dialect, &expand(MIGRATIONS[version - 1]))
}

/// Applies the pending migrations and re-buckets `agg_day` if the time zone changed, in the
/// caller's transaction. Several instances starting together on an empty PostgreSQL database
/// take turns (an advisory lock); all but the first find nothing left to do.
pub async fn prepare(db: &mut impl Db, tz: &jiff::tz::TimeZone) -> Result<(), StoreError> {
    db.lock(Lock::Migrations).await?;
    let applied = db.schema_version().await?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Task(format!(
            "the database has schema version {applied}, newer than this program knows ({}); upgrade token-console",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        db.execute_batch(&expand(sql)).await?;
        db.set_schema_version(i + 1).await?;
    }
    rebucket_days(db, tz).await
}

/// Rebuilds `agg_day` from `agg_hour` (and the usage rollups' days from their hours) when the
/// configured time zone changed since they were built.
async fn rebucket_days(db: &mut impl Db, tz: &jiff::tz::TimeZone) -> Result<(), StoreError> {
    let name = tz.iana_name().unwrap_or("fixed").to_owned();
    let stored = db
        .query_opt("SELECT value FROM meta WHERE name = 'timezone'", &[])
        .await?
        .map(|row| row.text(0))
        .transpose()?;
    if stored.as_deref() == Some(name.as_str()) {
        return Ok(());
    }
    if stored.is_some() {
        db.execute("DELETE FROM agg_day", &[]).await?;
        let sql = format!(
            "SELECT hour, key_id, model, {} FROM agg_hour",
            AGG_COLUMNS.join(", ")
        );
        let mut days: HashMap<queries::Dims, Aggregate> = HashMap::new();
        for row in db.query(&sql, &[]).await? {
            let day = queries::local_day(queries::from_ms(row.int(0)? * MS_PER_HOUR), tz);
            let agg = queries::read_aggregate(&row, 3)?;
            days.entry((day, row.int(1)?, row.text(2)?))
                .or_default()
                .add(&agg);
        }
        queries::add_day_rollups(&mut days);
        queries::upsert_aggregates(db, "agg_day", &["day", "key_id"], queries::with_dims(days))
            .await?;
        queries::rebucket_rollups(db, tz).await?;
    }
    db.execute(
        "INSERT INTO meta (name, value) VALUES ('timezone', $1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        &[name.into()],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::Dialect;

    /// The one text renders to what each backend's own migrations said before they were merged.
    #[test]
    fn migrations_render_each_dialects_types() {
        let pg = rendered(Dialect::Postgres, 1);
        assert!(pg.contains("id             BIGSERIAL PRIMARY KEY"));
        assert!(pg.contains("key_hash       BYTEA  NOT NULL UNIQUE"));
        assert!(pg.contains("enabled        BOOLEAN NOT NULL DEFAULT TRUE"));
        assert!(pg.contains("l16 BIGINT NOT NULL,"));
        assert!(!pg.contains("ROWID") && !pg.contains('{'));
        let lite = rendered(Dialect::Sqlite, 1);
        assert!(lite.contains("id             INTEGER PRIMARY KEY AUTOINCREMENT"));
        assert!(lite.contains("status                INTEGER NOT NULL"));
        assert!(lite.contains(") WITHOUT ROWID;"));
        assert!(!lite.contains("count_tokens") && !lite.contains('{'));
    }
}
