//! Emulators: the lossy stand-in of the full model that a data owner fine-tunes against, and
//! every step of making one. Reading order for the ScaleOT method:
//!
//! - [`plan`]: what each layer of the full model becomes (adapter, raw, low-rank, harmonizer,
//!   dropped) and Offsite-Tuning's uniform LayerDrop;
//! - [`corpus`]: the owner's public text, as token rows;
//! - [`replace`]: Dynamic LayerReplace — harmonizers and RL importance scores, learned together;
//! - [`importance`]: its result on disk (scores, ranking, harmonizers) and its checkpoints;
//! - [`rank`]: Selective Rank Compression (truncated SVD of attention projections);
//! - [`distill`]: Offsite-Tuning's distillation, the baseline;
//! - [`recipe`]: a typed recipe for each method and its assembly into a bundle;
//! - [`bundle`]: the bundle format the data owner receives, and loading it.

pub mod bundle;
pub mod corpus;
pub mod distill;
pub mod importance;
pub mod plan;
pub mod rank;
pub mod recipe;
pub mod replace;

pub use bundle::{BundleSpec, Emulator, EmulatorManifest, FrozenDtype, write_bundle};
pub use distill::{DistillConfig, Distiller};
pub use plan::{AdapterSplit, LayerKind, load_plan, uniform_drop};
pub use rank::SrcRule;
pub use recipe::{Method, Recipe, Select};
