//! The schema: one set of migrations for both databases, applied in order and at most once, and
//! the day buckets rebuilt when the configured time zone changes.

use std::collections::HashMap;

use super::queries::{self, MS_PER_HOUR};
use super::sql::{Db, Lock, AGG_COLUMNS};
use super::{Aggregate, StoreError};

/// Versioned migrations, in [`super::sql::render`]'s spelling plus what [`expand`] writes out:
/// `{aggregates}`, `{agg_names}`, `{agg_sums}` and `CREATE ROLLUP TABLE` lines.
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
    include_str!("migrations/0013_call_options.sql"),
    include_str!("migrations/0014_user_total_day.sql"),
];

/// Aggregate columns added by later migrations: `count_tokens` (version 4), `cost_nanos` and
/// `unpriced_calls` (version 7). A value column added after these is added to every aggregate
/// table by its own migration, so what the placeholders below write out never changes.
const LATER_AGGREGATES: [&str; 3] = ["count_tokens", "cost_nanos", "unpriced_calls"];

/// The aggregate columns of version 1, in [`AGG_COLUMNS`] order.
fn first_columns() -> impl Iterator<Item = &'static str> {
    AGG_COLUMNS
        .iter()
        .copied()
        .filter(|c| !LATER_AGGREGATES.contains(c))
}

/// The aggregate columns of version 7: version 1's and the [`LATER_AGGREGATES`].
fn priced_columns() -> impl Iterator<Item = &'static str> {
    first_columns().chain(LATER_AGGREGATES)
}

/// `calls {int} NOT NULL, …, l16 {int} NOT NULL,` — the aggregate columns of version 1.
fn first_aggregates() -> String {
    first_columns()
        .map(|c| format!("{c} {{int}} NOT NULL,"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `CREATE ROLLUP TABLE name (key columns; other columns);` written out: a table keyed by its
/// key columns, every column `NOT NULL`, with the aggregate columns of version 7.
fn rollup_table(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("CREATE ROLLUP TABLE ")?;
    let (name, columns) = rest.split_once(" (")?;
    let columns = columns.strip_suffix(");")?;
    let (keys, others) = columns.split_once("; ").unwrap_or((columns, ""));
    let keys: Vec<&str> = keys.split(", ").collect();
    let others: Vec<&str> = others.split(", ").filter(|c| !c.is_empty()).collect();
    let declared: String = keys
        .iter()
        .chain(&others)
        .map(|c| format!("    {c} NOT NULL,\n"))
        .collect();
    let key_names: Vec<&str> = keys.iter().filter_map(|c| c.split(' ').next()).collect();
    Some(format!(
        "CREATE TABLE {name} (\n{declared}    {{aggregates}}\n{later}    PRIMARY KEY ({})\n){{without_rowid}};",
        key_names.join(", "),
        later = LATER_AGGREGATES
            .iter()
            .map(|c| format!("    {c} {{int}} NOT NULL DEFAULT 0,\n"))
            .collect::<String>(),
    ))
}

/// A migration written out for [`Db::execute_batch`] to render: `CREATE ROLLUP TABLE` lines
/// (see [`rollup_table`]), `{aggregates}` (version 1's aggregate columns, declared),
/// `{agg_names}` and `{agg_sums}` (version 7's, named and summed).
fn expand(migration: &str) -> String {
    let tables = migration
        .lines()
        .map(|line| rollup_table(line).unwrap_or_else(|| line.to_owned()))
        .collect::<Vec<_>>()
        .join("\n");
    let sums = priced_columns()
        .map(|c| format!("SUM({c})"))
        .collect::<Vec<_>>()
        .join(", ");
    tables
        .replace("{aggregates}", &first_aggregates())
        .replace(
            "{agg_names}",
            &priced_columns().collect::<Vec<_>>().join(", "),
        )
        .replace("{agg_sums}", &sums)
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
    let stored: Option<(String,)> = db
        .fetch_opt("SELECT value FROM meta WHERE name = 'timezone'", &[])
        .await?;
    let stored = stored.map(|(name,)| name);
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
        let rows: Vec<(i64, i64, String, Aggregate)> = db.fetch(&sql, &[]).await?;
        for (hour, key_id, model, agg) in rows {
            let day = queries::local_day(queries::from_ms(hour * MS_PER_HOUR), tz);
            days.entry((day, key_id, model)).or_default().add(&agg);
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
