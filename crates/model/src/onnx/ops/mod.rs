//! The operators Kappa registers with tract for what skl2onnx emits and tract lacks. They are
//! added through `Onnx::op_register`, not a fork: tract's own operators stay as they are.

mod attrs;
mod elementwise;
mod tree;

use std::sync::Arc;

use tract_onnx::{model::OnnxOpRegister, prelude::*};

/// Adds Kappa's operators to `register`.
pub fn register(register: &mut OnnxOpRegister) {
    tree::register(register);
    elementwise::register(register);
}

/// A tensor's values in memory, in order.
pub(crate) fn values<T: Datum>(tensor: &Tensor) -> TractResult<&[T]> {
    tensor.try_as_plain_ram()?.as_slice::<T>()
}

/// An operator's parsed, checked attributes, shared by the op's inference-time face (shape rules)
/// and its typed face (evaluation) and by every plan built from them: one allocation a node,
/// compared by identity first.
#[derive(Debug)]
pub(crate) struct Shared<K>(pub Arc<K>);

impl<K> Shared<K> {
    pub fn new(kernel: K) -> Self {
        Self(Arc::new(kernel))
    }
}

impl<K> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K: PartialEq> PartialEq for Shared<K> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl<K: PartialEq> Eq for Shared<K> {}
