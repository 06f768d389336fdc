//! Models users bring as ONNX graphs (exported from PyTorch, scikit-learn or anything else):
//! what the file holds ([`graph`]), the operators tract lacks ([`ops`]), and the runnable plan
//! that scores rows ([`engine`]).

pub mod engine;
pub mod graph;
mod ops;
#[cfg(test)]
mod tests;

pub use engine::{OnnxModel, OutputTensor, TensorData};
pub use graph::{GraphCheck, inspect};
