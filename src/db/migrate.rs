//! Migrations (in progress).
/// Applies migrations.
pub fn run_cli(_config: &crate::config::Config) -> Result<String, String> {
    Err("migrations are not available in this build".into())
}
