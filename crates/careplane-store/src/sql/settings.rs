//! Settings the store keeps in its database (`store_settings`, migration 0007), shared by
//! every replica.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use careplane_fhir::search::index::DerivedRows;
use sqlx::Pool;

use super::{Backend, Sql};
use crate::Result;

/// How long a replica trusts the value it read: `careplane contract` reaches every running
/// replica within this time, without a restart, for one small read per interval.
const REREAD_AFTER: Duration = Duration::from_secs(30);

/// The `derived_index_rows` setting, read from the database at most every [`REREAD_AFTER`].
#[derive(Default)]
pub(crate) struct DerivedRowsSetting {
    cached: Mutex<Option<(Instant, DerivedRows)>>,
}

impl DerivedRowsSetting {
    pub(crate) async fn get<B: Backend>(&self, pool: &Pool<B>) -> DerivedRows {
        if let Ok(cached) = self.cached.lock() {
            if let Some((at, value)) = *cached {
                if at.elapsed() < REREAD_AFTER {
                    return value;
                }
            }
        }
        let value = match read::<B>(pool).await {
            Ok(value) => value,
            Err(e) => {
                // Writing the derived rows is always correct, only larger.
                tracing::warn!(error = %e, "store_settings unreadable; writing derived index rows");
                DerivedRows::Written
            }
        };
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((Instant::now(), value));
        }
        value
    }

    /// Drops the cached value, so the next write reads the database again.
    pub(crate) fn forget(&self) {
        if let Ok(mut cached) = self.cached.lock() {
            *cached = None;
        }
    }
}

async fn read<B: Backend>(pool: &Pool<B>) -> Result<DerivedRows> {
    let mut conn = pool.acquire().await?;
    let row = Sql::<B>::new("SELECT value FROM store_settings WHERE name = 'derived_index_rows'")
        .fetch_optional(&mut conn)
        .await?;
    Ok(match row {
        Some(row) if B::text(&row, "value")? == "omitted" => DerivedRows::Omitted,
        _ => DerivedRows::Written,
    })
}

/// Records that writes no longer store derived index rows (the contract step).
pub(crate) async fn omit_derived_rows<B: Backend>(conn: &mut B::Connection) -> Result<()> {
    Sql::<B>::new("UPDATE store_settings SET value = 'omitted' WHERE name = 'derived_index_rows'")
        .execute(conn)
        .await?;
    Ok(())
}
