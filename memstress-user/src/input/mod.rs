//! Input adapters: what a user brings, lowered into the options the stages run on.
//!
//! Enters: the command line and the files it names (a Chaos Mesh StressChaos). Leaves: one
//! [`crate::stress::Options`] and the notes that say how the run differs from what its source
//! would do. Nothing past planning knows where a value came from.

pub mod stresschaos;
