//! `sqlx::migrate!` embeds the files of `migrations/` in the binary when the crate is
//! compiled, but cargo watches only the Rust sources: without this, a migration added
//! or changed would be left out of the next build until a source file changed too.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
