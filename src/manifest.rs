//! The JSON manifests beside the project's files (emulator bundle, adapter, importance file):
//! each carries a format tag, checked before anything else is trusted.

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A manifest type: what it describes, the format tag it must carry, and what to do about
/// another one.
pub trait Manifest: DeserializeOwned {
    /// `"emulator"`, `"adapter"`, ...
    const WHAT: &'static str;
    const FORMAT: &'static str;
    /// Appended to the refusal of another format.
    const HINT: &'static str = "";
    fn format(&self) -> &str;
}

/// Parses a manifest and checks its format tag.
pub fn parse<T: Manifest>(json: &str) -> Result<T> {
    let manifest: T = serde_json::from_str(json).map_err(|error| Error::Json {
        what: format!("{} manifest", T::WHAT),
        error,
    })?;
    if manifest.format() != T::FORMAT {
        return Err(Error::Invalid(format!(
            "{} format `{}` is not supported (expected {}){}",
            T::WHAT,
            manifest.format(),
            T::FORMAT,
            T::HINT
        )));
    }
    Ok(manifest)
}
