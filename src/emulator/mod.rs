//! Emulators: the lossy stand-in of the full model that a data owner fine-tunes against.

pub mod bundle;
pub mod distill;
pub mod plan;
pub mod replace;

pub use bundle::{BundleSpec, Emulator, EmulatorManifest, FrozenDtype, write_bundle};
pub use distill::{DistillConfig, Distiller};
pub use plan::{AdapterSplit, LayerKind, uniform_drop};
