//! `sqlx::migrate!` embeds the migration files at compile time; without this, adding a migration
//! file would not rebuild the crate and a binary could ship without it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
