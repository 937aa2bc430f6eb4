//! `datamailer import-original --from URL`: moves the original Django datamailer's data into
//! this database, keeping every id, so API keys, tracking tokens, idempotency keys and the
//! client apps' stored ids all keep working.
//!
//! * Table by table in foreign-key order ([`tables::TABLES`]), in keyset batches read from one
//!   snapshot of the source and written one statement per batch.
//! * Idempotent by primary key: a re-run inserts what is new and updates rows whose
//!   `updated_at` moved on in the original (append-only tables only gain rows), so running it
//!   again just before the cut-over catches up.
//! * The first run refuses a database holding data of its own: ids would collide.
//! * `--dry-run` reads both sides, prints the counts and writes nothing.
//! * At the end, every table's rows are counted on both sides; a difference fails the run.

mod source;
mod tables;

use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::config::Config;
use source::{quote, redact, Source};
use tables::{Table, LEFT_BEHIND, TABLES};

pub struct Options {
    pub from: String,
    pub dry_run: bool,
    pub batch_size: i64,
}

/// One table's copy, worked out from both schemas before anything is written.
struct Plan {
    table: &'static Table,
    /// Carried columns (same name on both sides) and the type each is cast to here.
    columns: Vec<(String, String)>,
    /// Our primary key: the conflict target of the upsert.
    key: Vec<String>,
    /// The id column is an identity here: explicit ids need OVERRIDING SYSTEM VALUE and the
    /// sequence must move past them.
    identity: bool,
    source_rows: i64,
    source_max_id: i64,
}

impl Plan {
    fn by_id(&self) -> bool {
        self.key == ["id"]
    }

    fn carries(&self, column: &str) -> bool {
        self.columns.iter().any(|(c, _)| c == column)
    }
}

/// How far past the original's largest id each sequence moves: room for the rows the original
/// still makes between the first import and the cut-over.
const ID_HEADROOM: i64 = 1_000_000;

pub async fn import_original(config: Config, options: Options) -> anyhow::Result<()> {
    if options.batch_size < 1 {
        bail!("--batch-size: must be at least 1");
    }
    let mut source = Source::open(&options.from).await?;
    let mut target = PgConnection::connect(config.database_url())
        .await
        .context("connecting to datamailer's database")?;
    // The original's SQLite file stores UTC times without an offset.
    sqlx::raw_sql("SET TIME ZONE 'UTC'")
        .execute(&mut target)
        .await?;

    let plans = plan(&mut source, &mut target).await?;
    let first_run = refuse_own_data(&mut target, &plans).await?;
    print_plan(&mut source, &mut target, &plans).await?;
    if options.dry_run {
        println!("dry run: nothing written");
        return Ok(());
    }

    let from = redact(&options.from);
    let run: i64 =
        sqlx::query_scalar("INSERT INTO original_imports (source) VALUES ($1) RETURNING id")
            .bind(&from)
            .fetch_one(&mut target)
            .await?;
    println!(
        "{} from {from}",
        if first_run {
            "importing"
        } else {
            "catching up"
        }
    );
    let mut report = serde_json::Map::new();
    for plan in &plans {
        let started = Instant::now();
        let (inserted, updated) = copy(&mut source, &mut target, plan, options.batch_size).await?;
        println!(
            "{:<28} {:>9} rows: {inserted} new, {updated} updated ({:.1} s)",
            plan.table.name,
            plan.source_rows,
            started.elapsed().as_secs_f64()
        );
        report.insert(
            plan.table.name.into(),
            json!({"source": plan.source_rows, "inserted": inserted, "updated": updated}),
        );
    }

    let mismatches = verify(&mut target, &plans).await?;
    sqlx::query("UPDATE original_imports SET finished_at = now(), report = $2 WHERE id = $1")
        .bind(run)
        .bind(serde_json::Value::Object(report))
        .execute(&mut target)
        .await?;
    if !mismatches.is_empty() {
        for line in &mismatches {
            println!("count differs: {line}");
        }
        bail!(
            "{} table(s) hold a different number of rows than the original (rows deleted in \
             the original since an earlier run stay here)",
            mismatches.len()
        );
    }
    println!("counts match in all {} tables", plans.len());
    Ok(())
}

/// Works out every table's copy, failing on a source column this importer does not know.
async fn plan(source: &mut Source, target: &mut PgConnection) -> anyhow::Result<Vec<Plan>> {
    let mut plans = Vec::new();
    for table in TABLES {
        let Some(source_columns) = source.columns(table.name).await? else {
            println!(
                "{:<28} not in the original's database (an older version of it)",
                table.name
            );
            continue;
        };
        let ours: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT attname::text, format_type(atttypid, NULL), attidentity <> ''
               FROM pg_attribute
              WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
        )
        .bind(table.name)
        .fetch_all(&mut *target)
        .await?;
        let mut columns = Vec::new();
        for column in source_columns {
            if table.not_carried.iter().any(|(c, _)| *c == column) {
                continue;
            }
            let Some((_, cast, _)) = ours.iter().find(|(name, _, _)| *name == column) else {
                bail!(
                    "the original's {}.{column} has no place here: this importer knows an \
                     older version of the original (nothing was written)",
                    table.name
                );
            };
            columns.push((column, cast.clone()));
        }
        let key: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
              WHERE i.indrelid = $1::regclass AND i.indisprimary
              ORDER BY array_position(i.indkey::int2[], a.attnum)",
        )
        .bind(table.name)
        .fetch_all(&mut *target)
        .await?;
        let identity = ours
            .iter()
            .any(|(name, _, identity)| name == "id" && *identity);
        let (source_rows, source_max_id) = source.count(table.name).await?;
        plans.push(Plan {
            table,
            columns,
            key,
            identity,
            source_rows,
            source_max_id,
        });
    }
    if !plans.iter().any(|p| p.table.name == "organizations") {
        bail!(
            "--from: no organizations table there: this is not the original datamailer's database"
        );
    }
    Ok(plans)
}

/// The first run needs a target without data of its own; later runs are catch-ups.
async fn refuse_own_data(target: &mut PgConnection, plans: &[Plan]) -> anyhow::Result<bool> {
    let earlier: i64 = sqlx::query_scalar("SELECT count(*) FROM original_imports")
        .fetch_one(&mut *target)
        .await?;
    if earlier > 0 {
        return Ok(false);
    }
    let mut own = Vec::new();
    for plan in plans {
        let rows: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {}", quote(plan.table.name)))
                .fetch_one(&mut *target)
                .await?;
        if rows > 0 {
            own.push(format!("{}: {rows}", plan.table.name));
        }
    }
    if !own.is_empty() {
        bail!(
            "this database already holds data of its own ({}); import-original moves the \
             original into a freshly migrated datamailer database (nothing was written)",
            own.join(", ")
        );
    }
    Ok(true)
}

/// Counts per table, what stays behind and why.
async fn print_plan(
    source: &mut Source,
    target: &mut PgConnection,
    plans: &[Plan],
) -> anyhow::Result<()> {
    println!("{:<28} {:>12} {:>12}", "table", "original", "here");
    for plan in plans {
        let here = target_rows(target, plan).await?;
        println!(
            "{:<28} {:>12} {:>12}",
            plan.table.name, plan.source_rows, here
        );
    }
    for plan in plans {
        for (column, why) in plan.table.not_carried {
            if *column != "id" {
                println!("not carried: {}.{column}: {why}", plan.table.name);
            }
        }
    }
    for (table, why) in LEFT_BEHIND {
        if source.columns(table).await?.is_some() {
            let (rows, _) = source.count(table).await?;
            println!("left behind: {table} ({rows} rows): {why}");
        }
    }
    Ok(())
}

/// Rows here that came from (or collide with) the original's ids.
async fn target_rows(target: &mut PgConnection, plan: &Plan) -> anyhow::Result<i64> {
    let table = quote(plan.table.name);
    let rows = if plan.by_id() {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE id <= $1"))
            .bind(plan.source_max_id)
            .fetch_one(target)
            .await?
    } else {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(target)
            .await?
    };
    Ok(rows)
}

/// Copies one table; returns (inserted, updated).
async fn copy(
    source: &mut Source,
    target: &mut PgConnection,
    plan: &Plan,
    batch_size: i64,
) -> anyhow::Result<(u64, u64)> {
    let name = plan.table.name;
    let upsert = upsert_sql(plan);
    let source_columns: Vec<String> = plan.columns.iter().map(|(c, _)| c.clone()).collect();
    let bar = ProgressBar::new(plan.source_rows as u64).with_prefix(name);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>28} {wide_bar} {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid template"),
    );
    let (mut inserted, mut updated) = (0u64, 0u64);
    let mut after = 0i64;
    while let Some(batch) = source
        .batch(name, &source_columns, after, batch_size)
        .await
        .with_context(|| format!("reading {name} after id {after}"))?
    {
        let mut tx = target.begin().await?;
        for trigger in plan.table.quiet_triggers {
            sqlx::raw_sql(&format!("ALTER TABLE {name} DISABLE TRIGGER {trigger}"))
                .execute(&mut *tx)
                .await?;
        }
        let (new, changed): (i64, i64) = sqlx::query_as(&upsert)
            .bind(&batch.json)
            .fetch_one(&mut *tx)
            .await
            .with_context(|| {
                format!(
                    "writing {name} ids {}..={} of the original",
                    after + 1,
                    batch.last_id
                )
            })?;
        for trigger in plan.table.quiet_triggers {
            sqlx::raw_sql(&format!("ALTER TABLE {name} ENABLE TRIGGER {trigger}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        inserted += new as u64;
        updated += changed as u64;
        after = batch.last_id;
        bar.inc(batch.rows as u64);
    }
    bar.finish_and_clear();
    if plan.identity {
        // Rows made here must not take an id the original hands out before the cut-over
        // (a catch-up would take its row for ours): the sequence jumps ID_HEADROOM past the
        // original's largest id, once (a re-run leaves a sequence already past that alone).
        sqlx::raw_sql(&format!(
            "SELECT setval(pg_get_serial_sequence('{name}', 'id'),
                           greatest(max(id), {} + {ID_HEADROOM}))
               FROM {name} HAVING max(id) IS NOT NULL",
            plan.source_max_id
        ))
        .execute(&mut *target)
        .await?;
    }
    if let Some(fixup) = plan.table.fixup {
        sqlx::raw_sql(fixup).execute(&mut *target).await?;
    }
    Ok((inserted, updated))
}

/// One statement per batch: the batch's JSON rows cast to our column types and upserted by
/// our key. Types are cast without their length so an over-long value fails loudly at the
/// column instead of being cut by the cast.
fn upsert_sql(plan: &Plan) -> String {
    let table = quote(plan.table.name);
    let names: Vec<String> = plan.columns.iter().map(|(c, _)| quote(c)).collect();
    let values: Vec<String> = plan
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, cast))| format!("(r ->> {i})::{cast}"))
        .collect();
    let key: Vec<String> = plan.key.iter().map(|c| quote(c)).collect();
    let on_conflict = if plan.carries("updated_at") {
        let set: Vec<String> = names
            .iter()
            .filter(|c| !key.contains(c))
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        format!(
            "DO UPDATE SET {} WHERE {table}.updated_at < EXCLUDED.updated_at",
            set.join(", ")
        )
    } else {
        "DO NOTHING".to_string()
    };
    format!(
        "WITH written AS (
             INSERT INTO {table} ({names}) {overriding}
             SELECT {values} FROM jsonb_array_elements($1::jsonb) AS r
             ON CONFLICT ({key}) {on_conflict}
             RETURNING xmax = 0 AS inserted)
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written",
        names = names.join(", "),
        overriding = if plan.identity { "OVERRIDING SYSTEM VALUE" } else { "" },
        values = values.join(", "),
        key = key.join(", "),
    )
}

/// Every table's rows against the original's; one line per difference.
async fn verify(target: &mut PgConnection, plans: &[Plan]) -> anyhow::Result<Vec<String>> {
    let mut mismatches = Vec::new();
    for plan in plans {
        let here = target_rows(target, plan).await?;
        if here != plan.source_rows {
            mismatches.push(format!(
                "{}: {} in the original, {here} here",
                plan.table.name, plan.source_rows
            ));
        }
    }
    Ok(mismatches)
}
