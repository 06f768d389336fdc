//! The operators Kappa registers with tract for what skl2onnx emits and tract lacks. They are
//! added through `Onnx::op_register`, not a fork: tract's own operators stay as they are.

mod attrs;
mod elementwise;
mod tree;

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
