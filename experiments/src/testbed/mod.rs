//! The testbed: a fine-grained VQA task where SD-RPN is trained from
//! nothing on a CPU and measured against ground truth (see TESTBED.md in
//! the shared docs and `sdrpn testbed --help`).

pub mod data;
pub mod figures;
pub mod font;
pub mod heads;
pub mod localise;
pub mod micro;
pub mod pretrain;
pub mod run;
pub mod scene;
pub mod spec;
pub mod task;
pub mod views;
pub mod vocab;
