//! The testbed: a fine-grained VQA task where SD-RPN is trained from
//! nothing on a CPU and measured against ground truth (see TESTBED.md in
//! the shared docs and `sdrpn testbed --help`).

pub mod data;
pub mod font;
pub mod micro;
pub mod pretrain;
pub mod scene;
pub mod task;
pub mod views;
pub mod vocab;
