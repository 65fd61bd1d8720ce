//! Where the active policy comes from: a pack file or an `https://` URL
//! ([`fetch`], over [`proxy::net`]), verified, cached and refreshed
//! ([`loader`]), falling back to the embedded pack. The pure model
//! (parsing, signatures, snapshots, the swap) is the `policy` crate.

pub mod fetch;
pub mod loader;

pub use fetch::{FetchConfig, FetchError};
pub use loader::{Loader, LoaderConfig, LoaderError, PackSource, RefreshOutcome, StartReport};
